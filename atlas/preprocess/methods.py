"""Preprocessing of one T1-weighted image: reorientation, N4, brain extraction,
intensity normalisation, resampling and cropping to a common field of view.

Everything works in physical (world) space through antspyx, so inputs may have any
voxel order, voxel size or data type.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import ants
import numpy as np

from ..metrics import foreground
from ..registration import register_preset

log = logging.getLogger(__name__)

#: Orientation all images are brought to (ITK/ANTs code; ``LPI`` in ANTs is RAS+ in
#: nibabel terms, the orientation of the MNI152 templates).
STANDARD_ORIENTATION = "LPI"


def reorient(image: ants.ANTsImage) -> ants.ANTsImage:
    """Reorient to :data:`STANDARD_ORIENTATION` without resampling (voxel permutation/flip)."""
    return ants.reorient_image2(image, STANDARD_ORIENTATION)


def foreground_mask(image: ants.ANTsImage, fraction: float = 0.05) -> ants.ANTsImage:
    """:func:`atlas.metrics.foreground` of ``image`` as an image on its grid (values 0/1)."""
    return image.new_image_like(foreground(image.numpy(), fraction).astype("float32"))


def is_brain_only(image: ants.ANTsImage, max_brain_ml: float = 2500.0, mask=None) -> bool:
    """Guess whether ``image`` is already skull-stripped.

    A brain-only image has a foreground (``mask``, else :func:`foreground_mask`) no
    larger than a brain: adult brains including CSF are about 1.1-1.9 L, a head with
    skull and scalp is above 3 L. Returns True when the foreground volume in mL is
    <= ``max_brain_ml``.
    """
    mask = foreground_mask(image) if mask is None else mask
    volume_ml = float(mask.numpy().sum() * np.prod(image.spacing) / 1000.0)
    log.info("foreground volume %.0f mL (brain-only threshold %.0f mL)", volume_ml, max_brain_ml)
    return volume_ml <= max_brain_ml


def n4(image: ants.ANTsImage, mask: ants.ANTsImage | None = None) -> ants.ANTsImage:
    """N4 bias-field correction (Tustison et al. 2010).

    The shrink factor keeps N4's working grid near 8 mm whatever the input voxel size
    (the bias field is smooth at that scale and N4's cost grows steeply with grid
    size: 10 s at 8 mm vs 200 s at 4 mm for a 2 mm brain on one core); convergence
    50x50x30 iterations, tolerance 1e-6.
    """
    shrink = int(max(1, round(8.0 / float(min(image.spacing)))))
    clipped = ants.threshold_image(image, 0, None, 1, 0) * image  # N4 needs non-negative
    return ants.n4_bias_field_correction(
        clipped,
        mask=mask,
        shrink_factor=shrink,
        convergence={"iters": [50, 50, 30], "tol": 1e-6},
    )


def template_brain_mask(
    image: ants.ANTsImage,
    head_template: ants.ANTsImage,
    head_mask: ants.ANTsImage,
    seed: int = 1,
) -> ants.ANTsImage:
    """Brain mask of a whole-head image by registration of a head template.

    The head template (e.g. Colin27 with skull) is registered to ``image`` at 3 mm
    (affine, then a coarse SyN refinement), its brain mask carried back with linear
    interpolation and thresholded at 0.5, then closed (1 voxel), hole-filled and
    reduced to the largest component. Grid of ``image``; values 0/1.
    """
    fixed = ants.resample_image(image, (3.0, 3.0, 3.0), use_voxels=False, interp_type=0)
    moving = ants.resample_image(head_template, (3.0, 3.0, 3.0), use_voxels=False, interp_type=0)
    with tempfile.TemporaryDirectory(prefix="atlas-strip-") as tmp:
        reg = register_preset(fixed, moving, Path(tmp) / "head_", random_seed=seed)
        mask = ants.apply_transforms(
            image, head_mask.astype("float32"), list(reg.forward.paths), interpolator="linear"
        )
    mask = ants.threshold_image(mask, 0.5, None, 1, 0)
    mask = ants.iMath(mask, "MC", 1)
    mask = ants.iMath(mask, "FillHoles")
    return ants.iMath(mask, "GetLargestComponent").astype("float32")


def normalise_intensity(
    image: ants.ANTsImage,
    mask: ants.ANTsImage,
    method: str = "percentile",
    percentiles=(1.0, 99.0),
    reference: ants.ANTsImage | None = None,
) -> ants.ANTsImage:
    """Intensity normalisation inside ``mask``; voxels outside are set to 0.

    ``percentile``: robust linear rescale mapping the given percentiles of the brain
    intensities to 0 and 1, clipped to [0, 1]. ``histogram``: histogram matching to
    ``reference`` (Nyul & Udupa 1999 via ITK), then the same rescale.

    Raises
    ------
    ValueError for an unknown method, a missing reference, or an empty mask.
    """
    if method == "histogram":
        if reference is None:
            raise ValueError("histogram matching needs a reference image")
        image = ants.histogram_match_image(image, reference)
    elif method != "percentile":
        raise ValueError(f"unknown intensity normalisation {method!r}")
    arr = image.numpy()
    m = mask.numpy() > 0
    if not m.any():
        raise ValueError("brain mask is empty")
    lo, hi = np.percentile(arr[m], percentiles)
    out = np.clip((arr - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * m
    return image.new_image_like(out.astype("float32"))


def crop_to_mask(
    image: ants.ANTsImage, mask: ants.ANTsImage, margin_mm: float = 10.0
) -> ants.ANTsImage:
    """Crop ``image`` to the bounding box of ``mask`` grown by ``margin_mm`` on each side."""
    arr = mask.numpy() > 0
    idx = np.argwhere(arr)
    pad = np.ceil(margin_mm / np.asarray(image.spacing)).astype(int)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, np.asarray(arr.shape))  # crop_indices: end excluded
    return ants.crop_indices(image, lo.tolist(), hi.tolist())


def preprocess_t1w(
    image: ants.ANTsImage,
    resolution: float,
    skull_strip: str = "auto",
    head_template: ants.ANTsImage | None = None,
    head_mask: ants.ANTsImage | None = None,
    intensity: str = "percentile",
    reference: ants.ANTsImage | None = None,
    max_brain_ml: float = 2500.0,
    margin_mm: float = 10.0,
    seed: int = 1,
) -> tuple[ants.ANTsImage, ants.ANTsImage, dict]:
    """Full preprocessing of one T1w image.

    Steps: reorient (:func:`reorient`); foreground mask (computed once); brain extraction
    by ``skull_strip`` (``auto``: brain-only inputs detected by :func:`is_brain_only` are
    masked by their foreground, others use the head template;
    ``template``: always the head template, registered to the image after an N4 of the
    whole image; ``skip``: the foreground mask, no stripping); N4 inside the brain mask;
    intensity normalisation; resampling to ``resolution`` mm isotropic (linear for
    the image, nearest neighbour for the mask); crop to the brain + ``margin_mm``.
    A brain-only image gets one N4, inside its foreground: the whole-image N4 that heads
    need before the template registration only changed its 5 % foreground threshold
    (identical masks and intensity correlation >= 0.9993 inside them on MICCAI 2012 and
    the infant scans, 3-4x faster; ``benchmarks/preprocess_steps.py``).

    Returns
    -------
    (preprocessed image in [0, 1], brain mask 0/1 on the same grid, provenance dict)

    Raises
    ------
    ValueError when the head template is needed but not given, or the mask is empty.
    """
    info = {}
    image = reorient(image.astype("float32"))
    foreground = foreground_mask(image)
    if skull_strip == "auto":
        brain_only = is_brain_only(image, max_brain_ml, foreground)
        skull_strip = "skip" if brain_only else "template"
        info["brain_only_detected"] = brain_only
    if skull_strip == "template":
        if head_template is None or head_mask is None:
            raise ValueError(
                "skull stripping needs config keys skull_strip_template.head and .mask"
            )
        image = n4(image)  # the head template registration needs the whole head corrected
        mask = template_brain_mask(image, head_template, head_mask, seed=seed)
    elif skull_strip == "skip":
        mask = foreground
    else:
        raise ValueError(f"config key skull_strip: unknown value {skull_strip!r}")
    info["skull_strip"] = skull_strip
    if mask.numpy().sum() == 0:
        raise ValueError("brain mask is empty")
    image = n4(image, mask)
    image = normalise_intensity(image, mask, intensity, reference=reference)
    spacing = (float(resolution),) * 3
    image = ants.resample_image(image, spacing, use_voxels=False, interp_type=0)
    mask = ants.resample_image(mask, spacing, use_voxels=False, interp_type=1)
    image = crop_to_mask(image, mask, margin_mm)
    mask = crop_to_mask(mask, mask, margin_mm)
    info["brain_volume_ml"] = float(mask.numpy().sum() * np.prod(mask.spacing) / 1000.0)
    return image * mask, mask, info
