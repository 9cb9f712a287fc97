"""Stage 3: groupwise template construction by iterative mean-then-register (SyGN).

- :mod:`~atlas.template.methods`: averaging, shape update, sharpening, convergence measure
  (used for the population template and reusable for single-subject templates);
- :mod:`~atlas.template.plan`: which registration each iteration runs;
- :mod:`~atlas.template.jobs`: the job functions of ``workflow/rules/template.smk``.
"""

from .methods import average_images, mean_displacement, shape_update, sharpen, template_change

__all__ = ["average_images", "mean_displacement", "shape_update", "sharpen", "template_change"]
