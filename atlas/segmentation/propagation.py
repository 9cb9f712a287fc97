"""Label propagation: carry atlas T1w and labels onto a target grid, with a registration QC gate.

:func:`propagate` applies a :class:`atlas.registration.TransformChain` (nearest-neighbour or
``genericLabel`` for label maps, linear for intensities); :func:`propagate_atlases` does it
for every atlas, registering each to the target first in the direct route, and excludes the
atlases whose warped T1w correlates poorly with the target (NCC inside the target mask below
``min_ncc``); a target left with too few atlases raises :class:`RegistrationQCError` instead
of being fused silently. :func:`segment_target` propagates and fuses in one call.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # ANTs (~2.5 s to import) is loaded by the functions that call it
    import ants

from ..metrics import ncc
from ..registration import TransformChain, register_preset
from .fusion import fuse

LABEL_INTERPOLATIONS = ("nearestNeighbor", "genericLabel")
"""ANTs interpolators accepted for label maps by :func:`propagate`."""


def propagate(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    chain: TransformChain,
    *,
    labels: bool,
    label_interpolation: str = "nearestNeighbor",
) -> ants.ANTsImage:
    """Resample ``moving`` onto the grid of ``fixed`` through ``chain``.

    Label maps (``labels=True``) use ``label_interpolation``: ``"nearestNeighbor"`` or ANTs
    ``"genericLabel"`` (each label linearly interpolated as an indicator, the largest wins:
    smoother edges, about 2.5x slower with the ~135 MICCAI 2012 labels and the same mean Dice
    after fusion within 0.003 on one 4 mm scan); intensities use linear interpolation. Voxels
    mapped outside ``moving`` get 0.

    Raises
    ------
    ValueError for a ``label_interpolation`` not in :data:`LABEL_INTERPOLATIONS`.
    """
    if label_interpolation not in LABEL_INTERPOLATIONS:
        raise ValueError(
            f"label_interpolation {label_interpolation!r} not in {LABEL_INTERPOLATIONS}"
        )
    import ants

    return ants.apply_transforms(
        fixed,
        moving,
        transformlist=list(chain.paths),
        whichtoinvert=list(chain.invert),
        interpolator=label_interpolation if labels else "linear",
    )


def radius_voxels(radius_mm: float, spacing: Sequence[float]) -> int:
    """Radius in voxels of a neighbourhood ``radius_mm`` wide on a grid of ``spacing`` (mm).

    ``max(1, round(radius_mm / min(spacing)))``: patch and search radii given in mm keep
    their physical size across resolutions (JLF's defaults of 2 and 3 voxels were chosen
    for 1 mm images; at 4 mm they span 8 and 12 mm).

    Raises
    ------
    ValueError for a negative radius or a non-positive spacing.
    """
    if radius_mm < 0 or min(spacing) <= 0:
        raise ValueError(f"need radius_mm >= 0 and spacing > 0, got {radius_mm}, {spacing}")
    return max(1, round(radius_mm / min(spacing)))


@dataclass(frozen=True)
class Atlas:
    """A labelled atlas: subject id, T1w and dseg on the same grid."""

    subject: str
    image: ants.ANTsImage
    dseg: ants.ANTsImage


@dataclass(frozen=True)
class SegmentationResult:
    """Output of :func:`segment_target`.

    Attributes
    ----------
    dseg : fused label map on the target grid.
    probseg : per-label fractions (see :func:`fuse`) or None.
    qc : DataFrame with one row per atlas: ``atlas``, ``ncc`` (warped atlas T1w vs target
        inside the target mask) and ``passed`` (ncc >= min_ncc; only these were fused).
    """

    dseg: ants.ANTsImage
    probseg: dict[int, np.ndarray] | None
    qc: pd.DataFrame


class RegistrationQCError(RuntimeError):
    """Raised when too few atlas registrations to a target pass the NCC QC gate.

    ``qc`` holds the per-atlas table so that callers can write it out as the target's report.
    """

    def __init__(self, message: str, qc: pd.DataFrame):
        super().__init__(message)
        self.qc = qc


@dataclass(frozen=True)
class PropagatedAtlases:
    """Output of :func:`propagate_atlases`: the atlases that passed QC, on the target grid.

    Attributes
    ----------
    target : float array (*spatial) target intensities.
    mask : bool array (*spatial) fusion mask.
    images : float array (n_passed, *spatial) warped atlas T1w.
    labels : int64 array (n_passed, *spatial) propagated atlas labels.
    qc : DataFrame, one row per atlas: ``atlas``, ``ncc``, ``passed``.
    spacing : voxel size of the target grid in mm per axis.
    """

    target: np.ndarray
    mask: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    qc: pd.DataFrame
    spacing: tuple[float, ...]

    def fuse(
        self,
        method: str,
        probseg: bool = False,
        *,
        patch_radius_mm: float = 2.0,
        search_radius_mm: float = 3.0,
        **options,
    ):
        """:func:`fuse` of these atlases with ``method``; returns ``(dseg, probseg)``.

        ``patch_radius_mm`` (JLF patch, weighted-voting NCC window) and ``search_radius_mm``
        (JLF search) are converted to voxels of this grid with :func:`radius_voxels`; the
        defaults give JLF's own 2 and 3 voxels at 1 mm. On the MICCAI 2012 test scans at
        4 mm, 1-voxel radii (the mm defaults) scored a higher mean Dice than 2/3 voxels
        (0.671 vs 0.636 on one scan) and fused 17x faster. Other ``options`` go to
        :func:`fuse`.
        """
        if method == "jlf":
            options.setdefault("radius", radius_voxels(patch_radius_mm, self.spacing))
            options.setdefault("search_radius", radius_voxels(search_radius_mm, self.spacing))
        elif method == "weighted":
            options.setdefault("radius", radius_voxels(patch_radius_mm, self.spacing))
        return fuse(
            method,
            self.target,
            self.images,
            self.labels,
            mask=self.mask,
            probseg=probseg,
            **options,
        )


def propagate_atlases(
    target: ants.ANTsImage,
    atlases: Sequence[Atlas],
    *,
    mask: ants.ANTsImage | None = None,
    transforms: Sequence[TransformChain] | None = None,
    registration: Mapping | None = None,
    min_ncc: float = 0.5,
    min_atlases: int = 1,
    label_interpolation: str = "nearestNeighbor",
) -> PropagatedAtlases:
    """Propagate every atlas onto the target and apply the registration QC gate.

    Parameters
    ----------
    target : target T1w (skull-stripped when ``mask`` is None).
    atlases : labelled atlases.
    mask : target brain mask; default ``target != 0`` (a skull-stripped target).
    transforms : optional atlas->target chains, one per atlas (the template route, e.g.
        ``atlas_to_template.then(template_to_subject)``); by default each atlas is registered
        directly to the target with :func:`atlas.registration.register_preset`, its
        transform files in a private temporary folder removed once the atlas is propagated.
    registration : keywords for ``register_preset`` in the direct route
        (``type_of_transform``, ``reg_iterations``, ``fixed_mask``).
    min_ncc : QC threshold on the NCC, inside the target mask, between the target and the
        warped atlas T1w. On 4 mm OASIS brains we measured about 0.66 after SyN, 0.58 after
        affine, 0.51 with centre-of-mass alignment only and 0.32 for a flipped (failed)
        registration.
    min_atlases : fewest passing atlases needed to fuse.
    label_interpolation : interpolator for the label maps (see :func:`propagate`).

    Returns
    -------
    :class:`PropagatedAtlases`; failed atlases are listed in ``qc`` and warned about.

    Raises
    ------
    RegistrationQCError if fewer than ``min_atlases`` atlases pass QC.
    ValueError if ``transforms`` does not match ``atlases`` in length.
    """
    if transforms is not None and len(transforms) != len(atlases):
        raise ValueError(f"{len(transforms)} transforms given for {len(atlases)} atlases")
    mask_arr = target.numpy() != 0 if mask is None else mask.numpy() != 0
    carried = []
    for i, atlas in enumerate(atlases):
        if transforms is not None:
            chain = transforms[i]
            carried.append(_carry(target, atlas, chain, mask_arr, min_ncc, label_interpolation))
            continue
        # antspyx writes the transform files under outprefix: a private folder, removed here
        with tempfile.TemporaryDirectory(prefix="atlas-") as tmp:
            prefix = str(Path(tmp) / "reg_")
            chain = register_preset(target, atlas.image, prefix, **(registration or {})).forward
            carried.append(_carry(target, atlas, chain, mask_arr, min_ncc, label_interpolation))
    qc = pd.DataFrame([row for row, _, _ in carried], columns=["atlas", "ncc", "passed"])
    passed = [(image, labels) for _, image, labels in carried if labels is not None]
    _qc_gate(qc, len(passed), min_ncc, min_atlases)
    return PropagatedAtlases(
        target.numpy(),
        mask_arr,
        np.stack([image for image, _ in passed]),
        np.stack([labels for _, labels in passed]).round().astype(np.int64),
        qc,
        tuple(float(x) for x in target.spacing),
    )


def _carry(target, atlas, chain, mask_arr, min_ncc, label_interpolation):
    """One atlas onto the target: ``(qc row, warped T1w, labels)``; labels are propagated
    only when the warped T1w passes the NCC gate (None otherwise)."""
    warped = propagate(target, atlas.image, chain, labels=False).numpy()
    score = ncc(target.numpy(), warped, mask_arr)
    row = {"atlas": atlas.subject, "ncc": score, "passed": score >= min_ncc}
    if score < min_ncc:
        return row, warped, None
    labels = propagate(
        target, atlas.dseg, chain, labels=True, label_interpolation=label_interpolation
    ).numpy()
    return row, warped, labels


def _qc_gate(qc: pd.DataFrame, n_passed: int, min_ncc: float, min_atlases: int) -> None:
    """Raise :class:`RegistrationQCError` below ``min_atlases`` passing atlases; warn about
    the failed ones otherwise."""
    if n_passed < min_atlases:
        raise RegistrationQCError(
            f"only {n_passed} of {len(qc)} atlas registrations passed QC "
            f"(NCC >= {min_ncc}); need {min_atlases}:\n{qc.to_string(index=False)}",
            qc,
        )
    failed = qc.loc[~qc["passed"], "atlas"].tolist()
    if failed:
        warnings.warn(
            f"atlases {failed} failed registration QC (NCC < {min_ncc}) and were not fused",
            stacklevel=3,
        )


def segment_target(
    target: ants.ANTsImage,
    atlases: Sequence[Atlas],
    *,
    method: str = "jlf",
    mask: ants.ANTsImage | None = None,
    transforms: Sequence[TransformChain] | None = None,
    registration: Mapping | None = None,
    min_ncc: float = 0.5,
    min_atlases: int = 1,
    probseg: bool = False,
    label_interpolation: str = "nearestNeighbor",
    **fusion_options,
) -> SegmentationResult:
    """Multi-atlas segmentation of one target: propagate every atlas, QC, fuse.

    :func:`propagate_atlases` (see it for ``mask``, ``transforms``, ``registration``,
    ``min_ncc``, ``min_atlases``, ``label_interpolation`` and the errors raised) followed by
    :meth:`PropagatedAtlases.fuse` with ``method``, ``probseg`` and ``**fusion_options``
    (``patch_radius_mm``, ``search_radius_mm`` or keywords of :func:`fuse`).

    Returns
    -------
    :class:`SegmentationResult` on the target grid.
    """
    propagated = propagate_atlases(
        target,
        atlases,
        mask=mask,
        transforms=transforms,
        registration=registration,
        min_ncc=min_ncc,
        min_atlases=min_atlases,
        label_interpolation=label_interpolation,
    )
    dseg, probs = propagated.fuse(method, probseg=probseg, **fusion_options)
    return SegmentationResult(target.new_image_like(dseg.astype(np.float32)), probs, propagated.qc)
