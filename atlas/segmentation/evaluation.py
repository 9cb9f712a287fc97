"""Segmentation accuracy against reference labels: per-structure scores, leave-one-out, summary."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..metrics import dice, hd95, volume_similarity
from .labels import as_labels
from .propagation import Atlas, PropagatedAtlases, SegmentationResult, segment_target


def evaluate_segmentation(
    predicted: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    *,
    table: pd.DataFrame | None = None,
    subject: str | None = None,
) -> pd.DataFrame:
    """Per-structure agreement of a predicted and a reference label map.

    Parameters
    ----------
    predicted, reference : int arrays (*spatial) on the same grid.
    spacing : voxel size in mm per axis.
    table : optional label table for the ``name`` column.
    subject : optional value of the ``subject`` column.

    Returns
    -------
    Tidy DataFrame, one row per non-zero label of either map: ``subject``, ``label``, ``name``,
    ``dice`` (Dice 1945), ``hd95_mm`` (95th-percentile symmetric surface distance in mm; inf
    when the label is missing from one map) and ``volume_similarity``, all from
    :mod:`atlas.metrics`.
    """
    predicted = np.asarray(predicted)
    reference = np.asarray(reference)
    scores = dice(predicted, reference)
    names = {} if table is None else dict(zip(table["index"], table["name"], strict=True))
    rows = [
        {
            "subject": subject,
            "label": label,
            "name": names.get(label, str(label)),
            "dice": score,
            "hd95_mm": hd95(predicted == label, reference == label, spacing),
            "volume_similarity": volume_similarity(predicted == label, reference == label),
        }
        for label, score in scores.items()
    ]
    return pd.DataFrame(
        rows, columns=["subject", "label", "name", "dice", "hd95_mm", "volume_similarity"]
    )


def leave_one_out(
    atlases: Sequence[Atlas],
    *,
    table: pd.DataFrame | None = None,
    segment: Callable[..., SegmentationResult] = segment_target,
    **segment_options,
) -> pd.DataFrame:
    """Leave-one-out evaluation: segment each atlas from all the others, score against its dseg.

    Parameters
    ----------
    atlases : at least two labelled atlases.
    table : optional label table for structure names.
    segment : segmentation function with the signature of :func:`segment_target`.
    **segment_options : passed to ``segment`` (``method``, ``registration``, ...).

    Returns
    -------
    Concatenated :func:`evaluate_segmentation` tables (``subject`` = left-out atlas).
    """
    if len(atlases) < 2:
        raise ValueError("leave-one-out needs at least two atlases")
    tables = []
    for i, held_out in enumerate(atlases):
        others = [a for j, a in enumerate(atlases) if j != i]
        result = segment(held_out.image, others, **segment_options)
        tables.append(
            evaluate_segmentation(
                as_labels(result.dseg),
                as_labels(held_out.dseg),
                held_out.image.spacing,
                table=table,
                subject=held_out.subject,
            )
        )
    return pd.concat(tables, ignore_index=True)


def score_fusion_methods(
    propagated: PropagatedAtlases,
    reference: np.ndarray,
    methods: Sequence[str],
    *,
    table: pd.DataFrame | None = None,
    subject: str | None = None,
    propagation_s: float = float("nan"),
    **fusion_options,
) -> pd.DataFrame:
    """Fuse one set of propagated atlases with each of ``methods`` and score each result.

    Parameters
    ----------
    propagated : atlases on the grid of the held-out scan (:func:`propagate_atlases`).
    reference : int array (*spatial), the held-out scan's own labels on that grid.
    methods : fusion method names (:data:`atlas.segmentation.fusion.FUSION_METHODS`).
    table, subject : as in :func:`evaluate_segmentation`.
    propagation_s : seconds spent registering and propagating (copied to every row).
    **fusion_options : keywords of :meth:`PropagatedAtlases.fuse` (``patch_radius_mm``, ...).

    Returns
    -------
    Concatenated :func:`evaluate_segmentation` tables with columns ``method``,
    ``propagation_s`` and ``fusion_s`` (seconds of that method's fusion) added.
    """
    scores = []
    for method in methods:
        start = time.perf_counter()
        fused, _ = propagated.fuse(method, **fusion_options)
        fusion_s = time.perf_counter() - start
        scores.append(
            evaluate_segmentation(
                fused, reference, propagated.spacing, table=table, subject=subject
            ).assign(method=method, propagation_s=propagation_s, fusion_s=fusion_s)
        )
    return pd.concat(scores, ignore_index=True)


def evaluation_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per held-out scan and fusion method of :func:`score_fusion_methods` tables:
    ``n_labels``, ``mean_dice``, ``median_hd95_mm`` (over finite values; NaN when none),
    ``mean_volume_similarity``, ``propagation_s`` and ``fusion_s``."""

    def finite_median(values: pd.Series) -> float:
        finite = values[np.isfinite(values)]
        return float(np.median(finite)) if len(finite) else float("nan")

    summary = scores.groupby(["subject", "method"], sort=False).agg(
        n_labels=("dice", "size"),
        mean_dice=("dice", "mean"),
        median_hd95_mm=("hd95_mm", finite_median),
        mean_volume_similarity=("volume_similarity", "mean"),
        propagation_s=("propagation_s", "first"),
        fusion_s=("fusion_s", "first"),
    )
    return summary.reset_index()
