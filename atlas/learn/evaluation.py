"""Measures comparing the learned atlas with the iterative template on the same cohort.

Both methods are measured by the same code from the same inputs: the affinely normalised
images on the reference grid, the template each image is registered to, the image warped
into template space, the displacement field resampling it (mm along the array axes, as
read by :func:`atlas.registration.transforms.read_warp`) and one brain mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from .. import metrics


def subject_measures(template, image, warped, displacement, zooms, mask) -> dict:
    """Registration measures of one subject, shared by both methods.

    Parameters
    ----------
    template, image, warped : arrays on the template grid: the template, the affinely
        normalised image (before deformable registration) and the image warped into
        template space.
    displacement : ``(X, Y, Z, 3)`` mm along the array axes, resampling the image into
        template space.
    zooms : voxel sizes (mm). ``mask`` : boolean brain mask on the template grid.

    Returns
    -------
    dict with ``ncc_unregistered``, ``ncc``, ``template_sharpness`` (mean gradient
    magnitude of the template in the subject's intensity units per mm: the raw one times
    :func:`intensity_slope` of the warped subject on the template, since an NCC-trained
    atlas's intensity scale is free), ``template_sharpness_raw`` (template units per mm),
    ``mean_displacement_mm`` and ``pct_nonpositive_jacobian``.
    """
    det = metrics.jacobian_determinant(displacement, zooms)
    sharp = sharpness(template, warped, zooms, mask)
    return {
        "ncc_unregistered": metrics.ncc(template, image, mask),
        "ncc": metrics.ncc(template, warped, mask),
        "template_sharpness": sharp["sharpness"],
        "template_sharpness_raw": sharp["sharpness_raw"],
        "mean_displacement_mm": float(np.linalg.norm(displacement, axis=-1)[mask].mean()),
        "pct_nonpositive_jacobian": metrics.jacobian_stats(det, mask)["pct_nonpositive"],
    }


def centrality(displacements: Iterable[np.ndarray], mask) -> float:
    """Mean over ``mask`` of the magnitude (mm) of the subjects' mean displacement.

    ``displacements`` yields ``(X, Y, Z, 3)`` mm fields (an iterator keeps one in memory).
    """
    total, n = None, 0
    for u in displacements:
        total = u if total is None else total + u
        n += 1
    return float(np.linalg.norm(total / n, axis=-1)[mask].mean())


def pairwise_dice(label_maps: Sequence[np.ndarray]) -> float:
    """Mean Dice (:func:`atlas.metrics.mean_dice`) over all pairs of label maps; NaN for < 2."""
    scores = [metrics.mean_dice(a, b) for a, b in combinations(label_maps, 2)]
    return float(np.mean(scores)) if scores else float("nan")


def method_summary(
    subjects: pd.DataFrame, method: str, template: str, centrality_mm: float
) -> dict:
    """One row of the evaluation table: the per-subject rows of ``method`` averaged.

    Columns: ``method``, ``template``, ``n_subjects``, ``sharpness`` (subject intensity
    units), ``sharpness_raw`` (template units), ``centrality_mm``, ``mean_displacement_mm``,
    ``pct_nonpositive_jacobian``, ``ncc_unregistered``, ``ncc``, ``seconds_per_subject``.
    """
    rows = subjects[subjects.method == method]
    return {
        "method": method,
        "template": template,
        "n_subjects": len(rows),
        "sharpness": rows.template_sharpness.mean(),
        "sharpness_raw": rows.template_sharpness_raw.mean(),
        "centrality_mm": centrality_mm,
        "mean_displacement_mm": rows.mean_displacement_mm.mean(),
        "pct_nonpositive_jacobian": rows.pct_nonpositive_jacobian.mean(),
        "ncc_unregistered": rows.ncc_unregistered.mean(),
        "ncc": rows.ncc.mean(),
        "seconds_per_subject": rows.seconds.mean(),
    }


EVALUATION_TISSUES = ("WM", "GM", "CSF")
"""Tissues scored by :func:`tissue_dice` (WM, cortical GM, CSF as in the anatomy-realistic
GAN atlas paper's table)."""


def tissue_dice(atlas_tissues, subject_tissues, tissue_names, tissues=EVALUATION_TISSUES) -> dict:
    """Dice per tissue of an atlas tissue map carried to a subject vs the subject's tissues.

    Parameters
    ----------
    atlas_tissues, subject_tissues : int maps on the subject grid, 0 = background and
        ``k`` = ``tissue_names[k - 1]`` (e.g. the argmax of the atlas tissue
        probabilities warped to the subject, and the subject's held-out segmentation).
    tissue_names : names of the map ids 1..K (:attr:`atlas.learn.Cohort.tissue_names`).
    tissues : names to score; ``GM`` is the cortical grey matter (``SGM`` is separate).

    Returns
    -------
    dict ``dice_<tissue>`` -> Dice in [0, 1] (:func:`atlas.metrics.dice`).

    Raises
    ------
    ValueError if a requested tissue is not in ``tissue_names``.
    """
    missing = [t for t in tissues if t not in tissue_names]
    if missing:
        raise ValueError(f"tissues {missing} not in the tissue maps {list(tissue_names)}")
    ids = [list(tissue_names).index(t) + 1 for t in tissues]
    scores = metrics.dice(atlas_tissues, subject_tissues, labels=ids)
    return {f"dice_{t}": scores[i] for t, i in zip(tissues, ids, strict=True)}


def sharpness(template, subject, spacing, mask) -> dict:
    """Sharpness of ``template`` (mean gradient magnitude over ``mask``, per mm;
    :func:`atlas.metrics.sharpness`) in the subject's intensity units.

    ``subject`` is on the template's grid (carried into template space); ``spacing`` the voxel
    sizes (mm). Returns ``sharpness`` (``sharpness_raw`` times ``intensity_slope``, subject
    units), ``sharpness_raw`` (template units) and ``intensity_slope``
    (:func:`intensity_slope` of the subject on the template).
    """
    raw = metrics.sharpness(template, spacing, mask)
    slope = intensity_slope(template, subject, mask)
    return {"sharpness": raw * slope, "sharpness_raw": raw, "intensity_slope": slope}


def intensity_slope(warped_atlas, subject, mask) -> float:
    """Least-squares slope ``a`` of ``subject ≈ a * warped_atlas + b`` over ``mask``.

    A similarity that is invariant to the atlas's intensity scale (local NCC) leaves that
    scale free: the atlas's contrast drifts during training (the gradient of a
    scale-invariant loss is orthogonal to the image, so each step lengthens it), while an
    adversarial term pins it to the subjects' intensities. Gradient magnitudes of atlases
    trained with and without it are in different units; ``a`` maps an atlas into the
    subjects' units. It does not reward blur: an atlas that is the subjects' local mean
    (a smoothed version ``E[S | smooth]``) has ``cov(T, S) = var(T)``, slope 1.

    Parameters
    ----------
    warped_atlas, subject : arrays on one grid (the atlas and the subject carried into atlas
        space, or the atlas warped to the subject and the subject). ``mask`` : boolean
        array on that grid (e.g. the brain mask the sharpness is measured in).

    Returns
    -------
    The slope (subject intensity units per atlas intensity unit); NaN if the atlas is
    constant over the mask.
    """
    mask = np.asarray(mask, dtype=bool)
    x = np.asarray(warped_atlas, dtype=np.float64)[mask]
    y = np.asarray(subject, dtype=np.float64)[mask]
    var = x.var()
    return float(((x - x.mean()) * (y - y.mean())).mean() / var) if var > 0 else float("nan")
