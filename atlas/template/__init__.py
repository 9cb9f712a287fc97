"""Stage 3: groupwise template construction by iterative mean-then-register (SyGN).

- :mod:`~atlas.template.methods`: averaging, shape update, sharpening, convergence measure
  (used for the population template and reusable for single-subject templates);
- :mod:`~atlas.template.plan`: which registration each iteration runs;
- :mod:`~atlas.template.jobs`: the job functions of ``workflow/rules/template.smk``.

Names are imported lazily, so ``atlas.template.plan`` is usable at parse time without
ANTs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "average_images": "methods",
    "mean_displacement": "methods",
    "shape_update": "methods",
    "sharpen": "methods",
    "template_change": "methods",
}

__all__ = ["average_images", "mean_displacement", "shape_update", "sharpen", "template_change"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'atlas.template' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
