"""Label fusion: numpy stacks of propagated atlases in, one label map (and fractions) out.

:func:`majority_vote`, :func:`weighted_vote` (local correlation weights),
:func:`joint_label_fusion` (ANTs JLF) and :func:`staple` (SimpleITK multi-label STAPLE), all
reachable through :func:`fuse` by name (:data:`FUSION_METHODS`).

Conventions: ``atlas_labels`` is an int array ``(n_atlases, *spatial)`` with 0 as background;
``atlas_images`` the warped atlas T1w on the same grid; ``target`` the target T1w
``(*spatial)``. Every method returns ``(dseg, probseg)``: an int32 label map and, on request,
a dict label id -> float32 fraction map (None for STAPLE).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .plan import FUSION_METHODS


def _fusion_mask(atlas_labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Voxels to fuse: ``mask`` or, by default, every voxel of the grid."""
    if mask is None:
        return np.ones(atlas_labels.shape[1:], dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != atlas_labels.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} differs from atlas grid {atlas_labels.shape}")
    return mask


def _check_stack(atlas_labels: np.ndarray, atlas_images: np.ndarray | None = None) -> np.ndarray:
    atlas_labels = np.asarray(atlas_labels)
    if atlas_labels.ndim < 2 or atlas_labels.shape[0] == 0:
        raise ValueError(f"atlas_labels must be (n_atlases, *spatial), got {atlas_labels.shape}")
    if atlas_images is not None and np.shape(atlas_images) != atlas_labels.shape:
        raise ValueError(
            f"atlas_images {np.shape(atlas_images)} and atlas_labels {atlas_labels.shape} differ"
        )
    return atlas_labels.astype(np.int64)


def _vote(
    atlas_labels: np.ndarray, weights: np.ndarray, mask: np.ndarray, probseg: bool
) -> tuple[np.ndarray, dict[int, np.ndarray] | None]:
    """Weighted vote: score_l(x) = sum_i w_i(x) [L_i(x) = l]; dseg = argmax_l score_l.

    Ties go to the smallest label id. probseg_l = score_l / sum_i w_i.
    """
    lab = atlas_labels[:, mask]
    w = weights[:, mask]
    total = w.sum(axis=0)
    best = np.full(lab.shape[1], -1.0)
    dseg = np.zeros(lab.shape[1], dtype=np.int64)
    probs = {} if probseg else None
    for label in np.unique(lab):
        score = np.where(lab == label, w, 0.0).sum(axis=0)
        better = score > best
        best[better] = score[better]
        dseg[better] = label
        if probs is not None:
            full = np.zeros(mask.shape, dtype=np.float32)
            full[mask] = score / total
            probs[int(label)] = full
    out = np.zeros(mask.shape, dtype=np.int32)
    out[mask] = dseg
    return out, probs


def majority_vote(
    atlas_labels: np.ndarray, *, mask: np.ndarray | None = None, probseg: bool = False
) -> tuple[np.ndarray, dict[int, np.ndarray] | None]:
    """Majority voting label fusion (Rohlfing et al. 2004; Heckemann et al. 2006).

    Parameters
    ----------
    atlas_labels : int array (n_atlases, *spatial) of propagated atlas label maps.
    mask : optional bool array (*spatial); voxels outside are set to 0.
    probseg : also return vote fractions.

    Returns
    -------
    dseg : int32 array (*spatial); ties go to the smallest label id.
    probseg : dict label id (0 included) -> float32 array (*spatial) of vote fractions, or None.

    Without ``probseg``, 2D/3D stacks of ids in [0, 65534] are voted by
    ``SimpleITK.LabelVoting``, which leaves tied voxels undecided; those take the smallest
    tied label here, so the result is the same as counting votes per label, and about 18x
    faster (0.12 s vs 2.3 s for 15 atlases, 135 labels, 60x72x60 voxels).
    """
    atlas_labels = _check_stack(atlas_labels)
    mask = _fusion_mask(atlas_labels, mask)
    ones = np.ones(atlas_labels.shape)
    if probseg or not _sitk_votable(atlas_labels):
        return _vote(atlas_labels, ones, mask, probseg)
    dseg = _label_voting(atlas_labels)
    tied = mask & (dseg == _UNDECIDED)
    if tied.any():
        dseg = np.where(tied, _vote(atlas_labels, ones, tied, False)[0], dseg)
    return np.where(mask, dseg, 0).astype(np.int32), None


_UNDECIDED = 65535
"""Label SimpleITK's voting filters give undecided voxels (ids must stay below it)."""


def _sitk_votable(atlas_labels: np.ndarray) -> bool:
    """Whether SimpleITK label filters take this stack: 2D/3D, ids in [0, 65534]."""
    return (
        atlas_labels.ndim in (3, 4) and atlas_labels.min() >= 0 and atlas_labels.max() < _UNDECIDED
    )


def _label_voting(atlas_labels: np.ndarray) -> np.ndarray:
    """``sitk.LabelVoting`` of the stack (int32; :data:`_UNDECIDED` where the vote ties)."""
    images = [sitk.GetImageFromArray(lab.astype(np.uint16)) for lab in atlas_labels]
    return sitk.GetArrayFromImage(sitk.LabelVoting(images, _UNDECIDED)).astype(np.int32)


def local_correlation(a: np.ndarray, b: np.ndarray, radius: int) -> np.ndarray:
    """Signed local correlation map: the Pearson correlation of ``a`` and ``b`` in a
    (2r+1)^d box window around every voxel (not the mean squared NCC loss of
    :func:`atlas.learn.losses.local_ncc`).

    Computed from box-filtered moments (``scipy.ndimage.uniform_filter``, reflecting border);
    0 where either image is locally constant. Returns a float64 array of ``a``'s shape in
    [-1, 1].
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    size = 2 * radius + 1
    ma, mb = ndimage.uniform_filter(a, size), ndimage.uniform_filter(b, size)
    cov = ndimage.uniform_filter(a * b, size) - ma * mb
    var_a = np.clip(ndimage.uniform_filter(a * a, size) - ma * ma, 0, None)
    var_b = np.clip(ndimage.uniform_filter(b * b, size) - mb * mb, 0, None)
    denom = np.sqrt(var_a * var_b)
    tiny = 1e-12 * max(float(np.abs(a).max() * np.abs(b).max()), 1e-30)
    return np.where(denom > tiny, cov / np.maximum(denom, tiny), 0.0)


def weighted_vote(
    target: np.ndarray,
    atlas_images: np.ndarray,
    atlas_labels: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    radius: int = 2,
    gain: float = 2.0,
    probseg: bool = False,
) -> tuple[np.ndarray, dict[int, np.ndarray] | None]:
    """Locally weighted voting with local correlation weights.

    Each atlas votes at voxel x with weight w_i(x) = max(NCC_i(x), 0)^gain + 1e-6, where
    NCC_i(x) is the correlation of the target and the warped atlas T1w in a (2*radius+1)^d
    box window (:func:`local_correlation`). This is the local weighted voting of
    Artaechevarria et al. 2009 (IEEE TMI 28:1266) with NCC as the similarity, as used by
    Sabuncu et al. 2010 (IEEE TMI 29:1714); the small constant makes voxels where every
    atlas correlates negatively fall back to majority voting.

    Parameters
    ----------
    target : float array (*spatial), the target T1w.
    atlas_images : float array (n_atlases, *spatial), warped atlas T1w images.
    atlas_labels : int array (n_atlases, *spatial), propagated atlas labels.
    mask : optional bool array (*spatial); voxels outside are set to 0.
    radius : window radius in voxels (2 -> 5x5x5 window; at 1 mm that is 5 mm wide).
    gain : exponent sharpening the weights (0 gives majority voting).
    probseg : also return normalised vote fractions.

    Returns
    -------
    dseg, probseg as in :func:`majority_vote`.
    """
    atlas_labels = _check_stack(atlas_labels, atlas_images)
    mask = _fusion_mask(atlas_labels, mask)
    weights = np.stack(
        [np.clip(local_correlation(target, img, radius), 0, None) ** gain for img in atlas_images]
    )
    return _vote(atlas_labels, weights + 1e-6, mask, probseg)


def _standardise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance intensities over ``mask`` (float32)."""
    values = image[mask]
    return ((image - values.mean()) / max(float(values.std()), 1e-12)).astype(np.float32)


def joint_label_fusion(
    target: np.ndarray,
    atlas_images: np.ndarray,
    atlas_labels: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    radius: int = 2,
    search_radius: int = 3,
    beta: float = 2.0,
    rho: float = 0.01,
    probseg: bool = False,
) -> tuple[np.ndarray, dict[int, np.ndarray] | None]:
    """Joint label fusion (Wang et al. 2013, IEEE PAMI 35:611) via ``ants.joint_label_fusion``.

    Intensities are standardised (zero mean, unit variance over the mask) per image first,
    since JLF compares patches by mean squared difference. ANTs writes posteriors only for
    the non-zero labels and its own segmentation assigns every masked voxel a non-zero label;
    here the background posterior is 1 - sum(posteriors) and dseg is the argmax over
    background and labels, so background inside the mask is kept.

    Parameters
    ----------
    target : float array (*spatial), the target T1w.
    atlas_images : float array (n_atlases >= 2, *spatial), warped atlas T1w images.
    atlas_labels : int array (n_atlases, *spatial), propagated atlas labels.
    mask : optional bool array (*spatial); JLF runs inside it (default: every voxel).
    radius : patch radius in voxels.
    search_radius : local search radius in voxels (compensates residual misregistration).
    beta : exponent on the patch-difference matrix (Wang et al. use 2).
    rho : ridge penalty added to the similarity matrix.
    probseg : also return the posteriors.

    Returns
    -------
    dseg, probseg as in :func:`majority_vote` (probseg: JLF posteriors, background 0 included).

    Raises
    ------
    ValueError with fewer than two atlases.
    """
    atlas_labels = _check_stack(atlas_labels, atlas_images)
    if atlas_labels.shape[0] < 2:
        raise ValueError("joint label fusion needs at least two atlases")
    mask = _fusion_mask(atlas_labels, mask)
    import ants  # here, not at the top: the plan (parse time) imports this module

    to_ants = ants.from_numpy
    with tempfile.TemporaryDirectory(prefix="atlas-") as tmp:
        result = ants.joint_label_fusion(
            to_ants(_standardise(np.asarray(target, dtype=np.float64), mask)),
            to_ants(mask.astype(np.float32)),
            [
                to_ants(_standardise(np.asarray(img, dtype=np.float64), mask))
                for img in atlas_images
            ],
            label_list=[to_ants(lab.astype(np.float32)) for lab in atlas_labels],
            beta=beta,
            rad=radius,
            rho=rho,
            r_search=search_radius,
            output_prefix=str(Path(tmp) / "jlf"),
        )
    ids = [0, *result["segmentation_numbers"]]
    posteriors = [img.numpy() for img in result["probabilityimages"]]
    background = np.clip(1.0 - np.sum(posteriors, axis=0), 0.0, 1.0)
    stack = np.stack([background, *posteriors])
    dseg = np.where(mask, np.asarray(ids)[stack.argmax(axis=0)], 0).astype(np.int32)
    if not probseg:
        return dseg, None
    return dseg, {
        i: np.where(mask, p, 0).astype(np.float32) for i, p in zip(ids, stack, strict=True)
    }


def staple(atlas_labels: np.ndarray, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Multi-label STAPLE (Warfield et al. 2004, IEEE TMI 23:903; multi-label EM of Rohlfing et
    al. 2004) via ``SimpleITK.MultiLabelSTAPLE``.

    STAPLE estimates a confusion matrix per atlas and the consensus by EM, using label maps
    only (no intensities). Voxels the filter leaves undecided (tied posteriors) take the
    majority vote.

    Parameters
    ----------
    atlas_labels : int array (n_atlases, *spatial), ids in [0, 65534].
    mask : optional bool array (*spatial); voxels outside are set to 0.

    Returns
    -------
    dseg : int32 array (*spatial).
    """
    atlas_labels = _check_stack(atlas_labels)
    mask = _fusion_mask(atlas_labels, mask)
    if atlas_labels.min() < 0 or atlas_labels.max() >= _UNDECIDED:
        raise ValueError("STAPLE needs label ids in [0, 65534]")
    consensus = sitk.GetArrayFromImage(
        sitk.MultiLabelSTAPLE(
            [sitk.GetImageFromArray(lab.astype(np.uint16)) for lab in atlas_labels], _UNDECIDED
        )
    ).astype(np.int32)
    if (consensus == _UNDECIDED).any():
        majority, _ = majority_vote(atlas_labels)
        consensus = np.where(consensus == _UNDECIDED, majority, consensus)
    return np.where(mask, consensus, 0).astype(np.int32)


def fuse(
    method: str,
    target: np.ndarray | None,
    atlas_images: np.ndarray | None,
    atlas_labels: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    probseg: bool = False,
    **options,
) -> tuple[np.ndarray, dict[int, np.ndarray] | None]:
    """Fuse propagated atlas labels into one target segmentation.

    Parameters
    ----------
    method : one of :data:`FUSION_METHODS`: ``"majority"`` (:func:`majority_vote`),
        ``"weighted"`` (:func:`weighted_vote`), ``"jlf"`` (:func:`joint_label_fusion`),
        ``"staple"`` (:func:`staple`).
    target : float array (*spatial) target T1w (used by ``weighted`` and ``jlf``).
    atlas_images : float array (n_atlases, *spatial) warped atlas T1w (``weighted``, ``jlf``).
    atlas_labels : int array (n_atlases, *spatial) propagated atlas labels.
    mask : optional bool array (*spatial); voxels outside are 0 in the output.
    probseg : also return per-label fractions (not available for ``staple``, which returns
        None).
    **options : method-specific keywords (``radius``, ``gain``, ``search_radius``, ...).

    Returns
    -------
    dseg : int32 array (*spatial).
    probseg : dict label id -> float32 array (*spatial) in [0, 1], or None.

    Raises
    ------
    ValueError for an unknown method, or when ``target``/``atlas_images`` are missing for a
    method that needs them.
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}; choose from {FUSION_METHODS}")
    if method == "majority":
        return majority_vote(atlas_labels, mask=mask, probseg=probseg, **options)
    if method == "staple":
        return staple(atlas_labels, mask=mask, **options), None
    if target is None or atlas_images is None:
        raise ValueError(f"fusion method {method!r} needs the target and atlas intensities")
    fusion = weighted_vote if method == "weighted" else joint_label_fusion
    return fusion(target, atlas_images, atlas_labels, mask=mask, probseg=probseg, **options)
