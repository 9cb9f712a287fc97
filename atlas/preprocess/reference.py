"""The affine-normalisation reference: which template, its ``space-`` label and its grid.

The default reference is the MNI ICBM152 2009a template shipped inside the nilearn wheel
(offline). The reference defines the template grid (``resolution`` mm, cropped to its
brain plus a margin) and is intensity-normalised like the subjects.
"""

from __future__ import annotations

from pathlib import Path

#: TemplateFlow identifier of the reference inside nilearn.
MNI_ID = "MNI152NLin2009aSym"


def mni152_path(kind: str = "T1w") -> Path:
    """Path of the MNI ICBM152 2009a (symmetric) image shipped inside the nilearn wheel.

    ``kind``: ``T1w`` (brain-only T1w), ``GM`` or ``WM`` (probability maps). 1 mm, RAS.

    Raises
    ------
    KeyError for another ``kind``.
    """
    import nilearn.datasets

    names = {
        "T1w": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "GM": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "WM": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    }
    return Path(nilearn.datasets.__file__).parent / "data" / names[kind]


def reference_path(reference: str) -> Path:
    """File of the config key ``reference``: nilearn's MNI152 for ``MNI152NLin2009aSym``
    and ``cohort`` (rigid to it), else the given path."""
    return mni152_path() if reference in (MNI_ID, "cohort") else Path(reference)


def check_reference(reference: str, reference_mask=None) -> None:
    """Validate the config keys ``reference`` and ``reference_mask`` before any job.

    Raises
    ------
    atlas.io.InputError naming the key and the file when a given path is not a usable 3D
    NIfTI image (see :func:`atlas.io.check_nifti`).
    """
    from ..io import InputError, check_nifti

    for key, value in (("reference", reference), ("reference_mask", reference_mask)):
        if value is None or (key == "reference" and value in (MNI_ID, "cohort")):
            continue
        try:
            check_nifti(value, read_data=False)
        except InputError as exc:
            raise InputError(f"config key {key}: {exc}") from exc


def reference_space(reference: str) -> str:
    """BIDS ``space-`` label of the affine normalisation reference (config key ``reference``).

    ``MNI152NLin2009aSym`` and ``cohort`` (rigid to it) give ``MNI152NLin2009aSym``; a path
    gives its TemplateFlow ``tpl-<label>`` entity and ``cohort-<label>`` if present (e.g.
    ``tpl-UNCBCP4DInfant_cohort-12_T1w.nii.gz`` -> ``UNCBCP4DInfantcohort12``), otherwise the
    letters and digits of the file name without extensions (e.g. ``my_ref.nii.gz`` ->
    ``myref``).

    Raises
    ------
    ValueError if the path's name has no letter or digit.
    """
    if reference in (MNI_ID, "cohort"):
        return MNI_ID
    name = Path(reference).name.split(".")[0]
    entities = dict(e.split("-", 1) for e in name.split("_") if "-" in e)
    if "tpl" in entities:
        label = entities["tpl"] + ("cohort" + entities["cohort"] if "cohort" in entities else "")
    else:
        label = name
    label = "".join(c for c in label if c.isalnum())
    if not label:
        raise ValueError(f"config key reference: no space label in the file name {reference!r}")
    return label


def reference_grid(reference, resolution: float, mask=None, margin_mm: float = 10.0):
    """Reference image on the template grid: reoriented, resampled to ``resolution`` mm,
    cropped to its brain + ``margin_mm`` and intensity-normalised like the subjects.

    Parameters
    ----------
    reference : ``ants.ANTsImage`` (any grid).
    resolution : isotropic voxel size of the grid, mm.
    mask : brain mask of ``reference``; None takes its non-zero voxels (brain-only
        templates such as the nilearn MNI152).
    margin_mm : margin around the brain's bounding box, mm.

    Returns
    -------
    (reference image, brain mask) on the grid, ``ants.ANTsImage``.
    """
    import ants

    from .methods import crop_to_mask, normalise_intensity, reorient

    reference = reorient(reference.astype("float32"))
    if mask is None:
        mask = ants.threshold_image(reference, 1e-6, None, 1, 0)
    mask = reorient(mask.astype("float32"))
    spacing = (float(resolution),) * 3
    reference = ants.resample_image(reference, spacing, use_voxels=False, interp_type=0)
    mask = ants.resample_image_to_target(mask, reference, interp_type="nearestNeighbor")
    reference = normalise_intensity(reference, mask)
    return crop_to_mask(reference, mask, margin_mm), crop_to_mask(mask, mask, margin_mm)
