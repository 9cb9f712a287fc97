"""Tissue maps: GM/WM/CSF fractions from a label map, or Atropos when there are no atlases."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # ANTs (~2.5 s to import) is loaded by the functions that call it
    import ants

from .labels import TISSUE_CLASSES, check_same_grid


def tissue_probseg(
    dseg: np.ndarray, table: pd.DataFrame, *, probseg: Mapping[int, np.ndarray] | None = None
) -> np.ndarray:
    """GM/WM/CSF fractions from a (fused) segmentation and the label table's ``class`` column.

    Parameters
    ----------
    dseg : int array (*spatial), a label map.
    table : label table from :func:`read_label_table`; labels without a class contribute to no
        channel.
    probseg : optional per-label fractions from :func:`fuse`; when given, the tissue fraction
        is the sum of its labels' fractions (a soft map), otherwise the indicator of its labels
        in ``dseg``.

    Returns
    -------
    float32 array (3, *spatial) in [0, 1], channels in :data:`TISSUE_CLASSES` order
    (CSF, GM, WM); the channels sum to at most 1.
    """
    dseg = np.asarray(dseg)
    out = np.zeros((len(TISSUE_CLASSES), *dseg.shape), dtype=np.float32)
    for channel, tissue in enumerate(TISSUE_CLASSES):
        ids = table.loc[table["class"] == tissue, "index"].to_numpy()
        if probseg is None:
            out[channel] = np.isin(dseg, ids)
        else:
            for label in set(ids.tolist()) & set(probseg):
                out[channel] += probseg[label]
    return np.clip(out, 0.0, 1.0)


def atropos_tissue(
    image: ants.ANTsImage, mask: ants.ANTsImage, *, mrf: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Three-class tissue segmentation with Atropos (Avants et al. 2011, Neuroinformatics 9:381).

    For targets without labelled atlases: k-means-initialised Atropos
    (``ants.kmeans_segmentation``, 5 EM iterations, MRF smoothing ``mrf`` on a 1-voxel
    neighbourhood) inside ``mask``. On a T1w brain, k-means classes ordered by mean intensity
    are CSF < GM < WM.

    Parameters
    ----------
    image : skull-stripped T1w (ANTs image).
    mask : brain mask on the same grid.
    mrf : Markov random field weight (higher is smoother).

    Returns
    -------
    dseg : int32 array (*spatial) with 1=CSF, 2=GM, 3=WM, 0 outside the mask.
    probseg : float32 array (3, *spatial) of posteriors in :data:`TISSUE_CLASSES` order.

    antspyx's ``atropos`` writes the posteriors to ``tempfile.mktemp()`` names and never
    removes them; they are kept in a private folder removed on return (:func:`_private_tempdir`).
    """
    import ants

    check_same_grid(mask, image, names=("mask", "image"))
    with _private_tempdir():
        result = ants.kmeans_segmentation(image, len(TISSUE_CLASSES), kmask=mask, mrf=mrf)
    dseg = result["segmentation"].numpy().round().astype(np.int32)
    probseg = np.stack([p.numpy() for p in result["probabilityimages"]]).astype(np.float32)
    return dseg, probseg


def average_posteriors(
    posteriors: Iterable[tuple[int, np.ndarray]], mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue maps of a group: the mean of per-image posteriors on one grid.

    Parameters
    ----------
    posteriors : ``(channel, array)`` pairs, channel an index into :data:`TISSUE_CLASSES`;
        every image gives one array per channel (e.g. :func:`atropos_tissue` maps resampled
        to the template).
    mask : bool array (*spatial); the maps are 0 outside.

    Returns
    -------
    probseg : float64 array (3, *spatial), per channel the mean over images.
    dseg : int64 array (*spatial), argmax channel + 1 (1=CSF, 2=GM, 3=WM) inside the mask
        where any posterior is non-zero, else 0.

    Raises
    ------
    ValueError when the channels do not have the same number of maps.
    """
    mask = np.asarray(mask, dtype=bool)
    probseg = np.zeros((len(TISSUE_CLASSES), *mask.shape), dtype=np.float64)
    counts = np.zeros(len(TISSUE_CLASSES), dtype=int)
    for channel, array in posteriors:
        probseg[channel] += array
        counts[channel] += 1
    if len(set(counts.tolist())) != 1:
        raise ValueError(f"unequal number of posteriors per tissue class: {counts.tolist()}")
    probseg /= max(int(counts[0]), 1)
    probseg *= mask
    dseg = np.where(mask & (probseg.sum(0) > 0), probseg.argmax(0) + 1, 0)
    return probseg, dseg


def tissue_table() -> pd.DataFrame:
    """Label table of a tissue dseg (:func:`average_posteriors`): 1=CSF, 2=GM, 3=WM."""
    return pd.DataFrame(
        {
            "index": range(1, len(TISSUE_CLASSES) + 1),
            "name": list(TISSUE_CLASSES),
            "class": list(TISSUE_CLASSES),
        }
    )


@contextlib.contextmanager
def _private_tempdir() -> Iterator[str]:
    """Point :mod:`tempfile`'s default folder at a new private folder, removed on exit.

    For antspyx functions that write files under ``tempfile.mktemp()`` names without an
    output-prefix argument (``ants.atropos``). Changes process-wide state for the duration:
    not for use from several threads at once.
    """
    saved = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="atlas-") as folder:
        tempfile.tempdir = folder
        try:
            yield folder
        finally:
            tempfile.tempdir = saved
