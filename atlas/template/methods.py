"""Groupwise template construction by iterative mean-then-register (SyGN).

Avants et al. 2010, "The optimal template effect in hippocampus studies of diseased
populations", NeuroImage 49; the algorithm of ANTs ``antsMultivariateTemplateConstruction2.sh``
(``shapeupdatetotemplate``) and ``ants.build_template``. One iteration k:

1. register every subject to template_k (one job each; :func:`atlas.registration.register`);
2. average the warped subjects (:func:`average_images`);
3. shape update (:func:`shape_update`): the mean of the forward warps, scaled by
   ``-gradient_step``, is carried through the inverse mean affine and applied, with
   that inverse mean affine, to the average, so the template moves to the population
   centre instead of towards any one subject;
4. optional Laplacian sharpening.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ants
import numpy as np

from ..metrics import ncc


def average_images(images: list[ants.ANTsImage], method: str = "mean") -> ants.ANTsImage:
    """Voxel-wise average of images on one grid.

    ``mean``; ``median``; ``normalized_mean``: each image divided by its mean
    intensity over non-zero voxels before the mean (ANTs ``AverageImages`` normalize=1),
    then rescaled by the average of those means so intensities stay comparable.

    Raises
    ------
    ValueError for an empty list, grids that differ, or an unknown method.
    """
    if not images:
        raise ValueError("no images to average")
    stack = np.stack([im.numpy() for im in images])
    if method == "mean":
        avg = stack.mean(0)
    elif method == "median":
        avg = np.median(stack, 0)
    elif method == "normalized_mean":
        means = np.array([s[s != 0].mean() if np.any(s != 0) else 1.0 for s in stack])
        avg = (stack / means[:, None, None, None]).mean(0) * means.mean()
    else:
        raise ValueError(f"unknown averaging method {method!r}")
    return images[0].new_image_like(avg.astype("float32"))


def mean_displacement(warps) -> ants.ANTsImage:
    """Voxel-wise mean of displacement-field files or images (mm, LPS components)."""
    acc = None
    for w in warps:
        arr = (ants.image_read(str(w)) if not isinstance(w, ants.ANTsImage) else w).numpy()
        acc = arr.astype(np.float64) if acc is None else acc + arr
    ref = ants.image_read(str(warps[0])) if not isinstance(warps[0], ants.ANTsImage) else warps[0]
    return ants.from_numpy(
        (acc / len(warps)).astype("float32"),
        origin=ref.origin,
        spacing=ref.spacing,
        direction=ref.direction,
        has_components=True,
    )


def shape_update(
    average: ants.ANTsImage,
    affines,
    warps=None,
    gradient_step: float = 0.2,
) -> tuple[ants.ANTsImage, np.ndarray | None]:
    """SyGN shape update of an averaged image (``shapeupdatetotemplate`` in ANTs).

    Parameters
    ----------
    average : the mean of the subjects warped to the current template.
    affines : forward affine files of this iteration (template -> subject); their mean
        without the rigid part (ANTs ``AverageAffineTransformNoRigid``) is inverted.
    warps : forward displacement-field files (template -> subject), or None for an
        affine-only iteration.
    gradient_step : fraction of the mean warp applied (ANTs ``-g``; 0.2 in ants.build_template).

    Returns
    -------
    (updated template on the grid of ``average``, mean-warp magnitude array in mm on
    that grid or None for an affine iteration).
    """
    mean_affine = ants.average_affine_transform_no_rigid([str(a) for a in affines])
    with tempfile.TemporaryDirectory(prefix="atlas-shape-") as tmp:
        aff_file = str(Path(tmp) / "mean_affine.mat")
        ants.write_transform(mean_affine, aff_file)
        if not warps:
            return ants.apply_transforms(average, average, [aff_file], whichtoinvert=[True]), None
        wavg = mean_displacement(warps)
        magnitude = np.linalg.norm(wavg.numpy(), axis=-1)
        scaled = wavg * (-float(gradient_step))
        scaled = ants.apply_transforms(
            average, scaled, [aff_file], whichtoinvert=[True], imagetype=1
        )
        warp_file = str(Path(tmp) / "mean_warp.nii.gz")
        ants.image_write(scaled, warp_file)
        template = ants.apply_transforms(
            average, average, [warp_file, aff_file], whichtoinvert=[False, True]
        )
        return template, magnitude


def sharpen(template: ants.ANTsImage, weight: float = 0.25) -> ants.ANTsImage:
    """Laplacian sharpening (ANTs ``ImageMath Sharpen``) blended with the template:
    ``(1 - weight) * T + weight * Sharpen(T)``; weight 0.25 is ``ants.build_template``'s
    default (``blending_weight=0.75``), 1.0 the full sharpening of the ANTs script."""
    return template * (1.0 - weight) + ants.iMath(template, "Sharpen") * weight


def template_change(new: ants.ANTsImage, old: ants.ANTsImage, mask=None) -> float:
    """1 - NCC between consecutive templates; 0 means the template stopped changing."""
    m = None if mask is None else mask.numpy() > 0
    return 1.0 - ncc(new.numpy(), old.numpy(), m)
