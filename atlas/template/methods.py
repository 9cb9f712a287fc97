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

Images are SimpleITK images (ITK/LPS headers, as the ANTs files the registrations write),
so the join jobs of the iterations never load ANTs (~2.5 CPU s a job); every step is the
ANTs operation it replaces (resampling, ``AverageAffineTransformNoRigid``, ``ImageMath
Sharpen``), checked against ANTs in ``tests/unit/test_template_methods.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import SimpleITK as sitk

from ..metrics import ncc


def voxels(image: sitk.Image) -> np.ndarray:
    """Voxel array in ITK index order ``(x, y[, z][, component])`` (as ``ants`` ``.numpy()``)."""
    arr = sitk.GetArrayFromImage(image)
    n = image.GetDimension()
    return np.moveaxis(arr, list(range(n)), list(range(n))[::-1])


def _image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """A float32 image on the grid of ``like`` from an ``(x, y[, z][, c])`` array (vector
    pixels when it has one axis more than ``like`` has dimensions)."""
    arr = np.asarray(array, dtype=np.float32)
    n = like.GetDimension()
    data = np.moveaxis(arr, list(range(n)), list(range(n))[::-1])
    out = sitk.GetImageFromArray(np.ascontiguousarray(data), isVector=arr.ndim > n)
    out.CopyInformation(like)
    return out


def average_images(images: Iterable[sitk.Image], method: str = "mean") -> sitk.Image:
    """Voxel-wise average of images on one grid.

    ``mean``; ``median``; ``normalized_mean``: each image divided by its mean
    intensity over non-zero voxels before the mean (ANTs ``AverageImages`` normalize=1),
    then rescaled by the average of those means so intensities stay comparable. The means
    are accumulated one image at a time (a generator keeps one image in memory); the median
    needs them all.

    Raises
    ------
    ValueError for no images, grids that differ, or an unknown method.
    """
    if method not in ("mean", "median", "normalized_mean"):
        raise ValueError(f"unknown averaging method {method!r}")
    like, total, n, means, stack = None, 0.0, 0, [], []
    for im in images:
        arr = voxels(im).astype(np.float64)
        if like is None:
            like = im
        elif im.GetSize() != like.GetSize():
            raise ValueError("images to average are on different grids")
        if method == "median":
            stack.append(arr)
            continue
        if method == "normalized_mean":
            means.append(arr[arr != 0].mean() if np.any(arr != 0) else 1.0)
            arr = arr / means[-1]
        total, n = total + arr, n + 1
    if like is None:
        raise ValueError("no images to average")
    if method == "median":
        avg = np.median(np.stack(stack), 0)
    else:
        avg = total / n * (np.mean(means) if means else 1.0)
    return _image(avg, like)


def voxel_variance(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Voxel-wise population variance (ddof 0, as ``np.var``) of arrays of one shape,
    accumulated one array at a time by Welford's update (Welford 1962, Technometrics 4), so
    a generator keeps one subject in memory. Returns a float64 array of that shape (the
    input's intensity unit squared).

    Raises
    ------
    ValueError for no arrays or shapes that differ.
    """
    n, mean, m2 = 0, None, None
    for arr in arrays:
        arr = np.asarray(arr, dtype=np.float64)
        if mean is None:
            mean, m2 = np.zeros_like(arr), np.zeros_like(arr)
        elif arr.shape != mean.shape:
            raise ValueError(f"variance of arrays of shapes {mean.shape} and {arr.shape}")
        n += 1
        delta = arr - mean
        mean += delta / n
        m2 += delta * (arr - mean)
    if mean is None:
        raise ValueError("no arrays for the variance")
    return m2 / n


def average_affine_no_rigid(matrices: np.ndarray) -> np.ndarray:
    """Mean of affine matrices without their rotations (ANTs ``AverageAffineTransformNoRigid``).

    Each ``A = Q U`` (QR decomposition, ``Q`` orthogonal, ``U`` upper triangular with a
    positive diagonal) gives scales ``U_ii`` and shears ``U_ij / U_ii`` (``i < j``); their
    arithmetic means rebuild one upper-triangular matrix. Rotations and translations are
    left out: a template is defined up to a rigid motion.

    Parameters
    ----------
    matrices : ``(n, d, d)`` linear parts of ITK (LPS) affines, fixed -> moving (d = 2, 3).

    Returns
    -------
    ``(d, d)`` upper-triangular mean.
    """
    uppers = []
    for a in np.asarray(matrices, dtype=np.float64):
        u = np.linalg.qr(a)[1]
        uppers.append(np.sign(np.diag(u))[:, None] * u)  # positive diagonal
    scales = np.array([np.diag(u) for u in uppers])
    shears = np.array([u / np.diag(u)[:, None] for u in uppers])
    return np.triu(shears.mean(0), 1) * scales.mean(0)[:, None] + np.diag(scales.mean(0))


def _mean_affine(affines) -> sitk.AffineTransform:
    """The no-rigid mean (:func:`average_affine_no_rigid`) of ANTs ``.mat`` files, about
    the centre of the first (as ANTs takes it)."""
    txs = [sitk.AffineTransform(sitk.ReadTransform(str(p))) for p in affines]
    d = txs[0].GetDimension()
    mean = average_affine_no_rigid([np.reshape(t.GetMatrix(), (d, d)) for t in txs])
    out = sitk.AffineTransform(d)
    out.SetCenter(txs[0].GetCenter())
    out.SetMatrix(tuple(mean.ravel()))
    return out


def mean_displacement(warps: Iterable[sitk.Image]) -> sitk.Image:
    """Voxel-wise mean of displacement fields (mm, LPS components) on one grid: the ``mean``
    of :func:`average_images`, which sums them one at a time, so a generator that reads each
    from disk keeps one field in memory (a 2 mm MNI-grid field is 16 MB: a list of 1000
    would be 16 GB).

    Raises
    ------
    ValueError when ``warps`` is empty or the fields are on different grids.
    """
    return average_images(warps, "mean")


def _resample(image: sitk.Image, like: sitk.Image, transform) -> sitk.Image:
    """``image`` sampled at ``transform(x)`` for the voxels ``x`` of ``like`` (linear, 0
    outside: ``ants.apply_transforms``' defaults; vectors are not reoriented, as ANTs')."""
    return sitk.Resample(image, like, transform, sitk.sitkLinear, 0.0, image.GetPixelID())


def shape_update(
    average: sitk.Image,
    affines,
    warps: Iterable[sitk.Image] | None = None,
    gradient_step: float = 0.2,
) -> tuple[sitk.Image, np.ndarray | None]:
    """SyGN shape update of an averaged image (``shapeupdatetotemplate`` in ANTs).

    Parameters
    ----------
    average : the mean of the subjects warped to the current template.
    affines : forward affine files of this iteration (template -> subject); their mean
        without the rigid part (:func:`average_affine_no_rigid`) is inverted.
    warps : forward displacement fields (template -> subject, mm), any iterable (a generator
        reading them one at a time keeps one in memory: :func:`mean_displacement`), or None
        for an affine-only iteration.
    gradient_step : fraction of the mean warp applied (ANTs ``-g``; 0.2 in ants.build_template).

    Returns
    -------
    (updated template on the grid of ``average``, mean-warp magnitude ``(X, Y, Z)`` array
    in mm on that grid or None for an affine iteration).
    """
    inverse = _mean_affine(affines).GetInverse()
    if warps is None:
        return _resample(average, average, inverse), None
    mean = mean_displacement(warps)
    wavg = voxels(mean)
    magnitude = np.linalg.norm(wavg, axis=-1)
    scaled = sitk.Cast(_image(wavg * -float(gradient_step), mean), sitk.sitkVectorFloat64)
    warp = sitk.DisplacementFieldTransform(_resample(scaled, average, inverse))
    # SimpleITK's CompositeTransform([A, W]) maps x -> A(W(x)): ANTs' list [W, A]
    return _resample(average, average, sitk.CompositeTransform([inverse, warp])), magnitude


def sharpen(template: sitk.Image, weight: float = 0.25) -> sitk.Image:
    """Laplacian sharpening (ANTs ``ImageMath Sharpen``, ITK's
    ``LaplacianSharpeningImageFilter``) blended with the template:
    ``(1 - weight) * T + weight * Sharpen(T)``; weight 0.25 is ``ants.build_template``'s
    default (``blending_weight=0.75``), 1.0 the full sharpening of the ANTs script."""
    sharp = sitk.Cast(sitk.LaplacianSharpening(template), template.GetPixelID())
    return template * (1.0 - weight) + sharp * weight


def template_change(new: sitk.Image, old: sitk.Image, mask: np.ndarray | None = None) -> float:
    """1 - NCC between consecutive templates (``mask``: boolean ``(X, Y, Z)``); 0 means the
    template stopped changing."""
    return 1.0 - ncc(voxels(new), voxels(old), mask)
