"""Stage 1: preprocessing of each T1w image and its affine normalisation to a reference.

- :mod:`~atlas.preprocess.methods`: reorientation, N4, brain extraction, intensity
  normalisation, resampling and cropping (images in, images out);
- :mod:`~atlas.preprocess.reference`: the reference template, its ``space-`` label and grid;
- :mod:`~atlas.preprocess.plan`: the preprocessing settings from the config (one source);
- :mod:`~atlas.preprocess.jobs`: the job functions of ``workflow/rules/preprocess.smk``.

Names are imported lazily, so ``atlas.preprocess.plan`` and ``.reference`` are usable at
parse time without ANTs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "crop_to_mask": "methods",
    "foreground_mask": "methods",
    "is_brain_only": "methods",
    "n4": "methods",
    "normalise_intensity": "methods",
    "preprocess_t1w": "methods",
    "reorient": "methods",
    "template_brain_mask": "methods",
    "MNI_ID": "reference",
    "mni152_path": "reference",
    "reference_grid": "reference",
    "reference_space": "reference",
}

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


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'atlas.preprocess' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
