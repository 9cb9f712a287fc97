"""Structure and tissue volumes of label maps (mm^3), per image and as group tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .labels import TISSUE_CLASSES


def structure_volumes(
    dseg: np.ndarray, spacing: Sequence[float], table: pd.DataFrame, subject: str
) -> pd.DataFrame:
    """Per-structure volumes of a label map.

    Parameters
    ----------
    dseg : int array (*spatial).
    spacing : voxel size in mm per axis.
    table : label table; every listed structure gets a row (0 mm^3 when absent).
    subject : value of the ``subject`` column.

    Returns
    -------
    Tidy DataFrame with columns ``subject``, ``label``, ``name``, ``volume_mm3`` (voxel count
    times the voxel volume prod(spacing) in mm^3), one row per table entry.
    """
    dseg = np.asarray(dseg).astype(np.int64)
    counts = np.bincount(dseg[dseg > 0].ravel(), minlength=int(table["index"].max()) + 1)
    voxel_mm3 = float(np.prod(spacing))
    return pd.DataFrame(
        {
            "subject": subject,
            "label": table["index"].to_numpy(),
            "name": table["name"].to_numpy(),
            "volume_mm3": counts[table["index"].to_numpy()] * voxel_mm3,
        }
    )


def volumes_wide(volumes: pd.DataFrame) -> pd.DataFrame:
    """Pivot tidy :func:`structure_volumes` rows to one row per subject, one column per name."""
    return volumes.pivot(index="subject", columns="name", values="volume_mm3")


def brain_volume(dseg: np.ndarray, spacing: Sequence[float]) -> float:
    """Brain volume in mm^3: number of non-zero voxels times prod(spacing)."""
    return float(np.count_nonzero(dseg) * np.prod(spacing))


def image_volumes(
    dseg: np.ndarray, spacing: Sequence[float], table: pd.DataFrame, img: str
) -> pd.DataFrame:
    """Volumes of one labelled image: :func:`structure_volumes` rows followed by
    ``total_brain`` (every non-zero voxel) and one ``total_<class>`` row per tissue class of
    the table (voxels of the labels of that class); totals have no ``label``.

    Returns
    -------
    DataFrame with columns ``img``, ``label``, ``name``, ``volume_mm3`` (mm^3).
    """
    dseg = np.asarray(dseg).astype(np.int64)
    voxel_mm3 = float(np.prod(spacing))
    totals = [{"name": "total_brain", "volume_mm3": brain_volume(dseg, spacing)}] + [
        {
            "name": f"total_{tissue}",
            "volume_mm3": np.isin(dseg, table.loc[table["class"] == tissue, "index"]).sum()
            * voxel_mm3,
        }
        for tissue in TISSUE_CLASSES
    ]
    volumes = pd.concat(
        [structure_volumes(dseg, spacing, table, img), pd.DataFrame(totals).assign(subject=img)],
        ignore_index=True,
    )
    return volumes.rename(columns={"subject": "img"})


TOTALS = tuple(f"total_{t}" for t in ("brain", *TISSUE_CLASSES))
"""Names of the total rows of :func:`image_volumes`, always plotted against age."""


def group_volume_tables(
    volumes: pd.DataFrame, participants: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group tables from concatenated :func:`image_volumes` rows.

    Parameters
    ----------
    volumes : rows of every image (column ``img``).
    participants : the workflow's images (``atlas.bids.find_t1w``): ``img``, ``subject``,
        ``session``, ``age``, ``sex``.

    Returns
    -------
    (tidy, wide): tidy has one row per image and structure with ``participant_id``
    (``sub-<label>``), ``session``, ``age`` and ``sex`` first; wide one row per image, one
    column per structure name.
    """
    demo = participants[["img", "subject", "session", "age", "sex"]].rename(
        columns={"subject": "participant_id"}
    )
    demo["participant_id"] = "sub-" + demo["participant_id"].astype(str)
    tidy = demo.merge(volumes, on="img")
    wide = volumes_wide(tidy.rename(columns={"img": "subject"})).reset_index()
    wide = demo.merge(wide.rename(columns={"subject": "img"}), on="img")
    return tidy, wide
