"""Stage 1: preprocessing of each T1w image and its affine normalisation to a reference.

- :mod:`~atlas.preprocess.methods`: reorientation, N4, brain extraction, intensity
  normalisation, resampling and cropping (images in, images out);
- :mod:`~atlas.preprocess.reference`: the reference template, its ``space-`` label and grid;
- :mod:`~atlas.preprocess.plan`: the preprocessing settings from the config (one source);
- :mod:`~atlas.preprocess.jobs`: the job functions of ``workflow/rules/preprocess.smk``.
"""

from .methods import (
    crop_to_mask,
    foreground_mask,
    is_brain_only,
    n4,
    normalise_intensity,
    preprocess_t1w,
    reorient,
    template_brain_mask,
)
from .reference import MNI_ID, mni152_path, reference_grid, reference_space

__all__ = [
    "MNI_ID",
    "crop_to_mask",
    "foreground_mask",
    "is_brain_only",
    "mni152_path",
    "n4",
    "normalise_intensity",
    "preprocess_t1w",
    "reference_grid",
    "reference_space",
    "reorient",
    "template_brain_mask",
]
