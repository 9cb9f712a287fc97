"""Label tables, tissue classes and the checks of a labelled atlas.

Conventions: label maps (``dseg``) are integer arrays with 0 as background; a label table
lists every non-zero id with its ``name`` and optional tissue ``class`` (GM, WM, CSF).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..registration.transforms import is_sitk

TISSUE_CLASSES = ("CSF", "GM", "WM")
"""Tissue classes of the label table ``class`` column, in probseg channel order."""

_NO_CLASS = {"", "n/a", "na", "none"}

if TYPE_CHECKING:  # ANTs is imported where it is used: the workflow's parse needs none
    import ants

    ImageLike = str | os.PathLike | ants.ANTsImage


def read_label_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a BIDS-style label table (``*_dseg.tsv``).

    Parameters
    ----------
    path : TSV file with columns ``index`` (integer label id >= 1; 0 is background and must not
        be listed), ``name`` and optionally ``class`` (tissue class, one of ``GM``, ``WM``,
        ``CSF``; empty, ``n/a`` or ``None`` means the structure has no tissue class).

    Returns
    -------
    DataFrame with columns ``index`` (int64), ``name`` (str) and ``class`` (str, missing where
    unclassified), in file order.

    Raises
    ------
    ValueError naming the file if a required column is missing, an id is not a positive
    integer, ids or names are duplicated (the duplicates are listed), or a class is unknown.
    """
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = {"index", "name"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: label table lacks column(s) {sorted(missing)}")
    ids = pd.to_numeric(table["index"], errors="coerce")
    bad = table.loc[ids.isna() | (ids < 1) | (ids % 1 != 0), "index"].tolist()
    if bad:
        raise ValueError(f"{path}: label ids must be integers >= 1, got {bad}")
    table["index"] = ids.astype("int64")
    table["name"] = table["name"].str.strip()
    for column in ("index", "name"):
        dup = table.loc[table[column].duplicated(keep=False), column].unique().tolist()
        if dup:
            raise ValueError(f"{path}: duplicate label {column} values {dup}")
    classes = table["class"] if "class" in table else pd.Series("", index=table.index)
    classes = classes.str.strip().mask(classes.str.strip().str.lower().isin(_NO_CLASS))
    unknown = sorted(set(classes.dropna().str.upper()) - set(TISSUE_CLASSES))
    if unknown:
        raise ValueError(f"{path}: unknown tissue class(es) {unknown}; use {TISSUE_CLASSES}")
    table["class"] = classes.str.upper()
    return table[["index", "name", "class"]]


def apply_tissue_classes(table: pd.DataFrame, tissue_classes: Mapping | None) -> pd.DataFrame:
    """Override the label table's ``class`` column: ``{"GM": [ids], "WM": [...], "CSF": [...]}``;
    ids not listed lose their class. None (or empty) keeps the table's own classes.

    Raises
    ------
    ValueError for a tissue class not in :data:`TISSUE_CLASSES`.
    """
    if not tissue_classes:
        return table
    table = table.copy()
    table["class"] = None
    for tissue, ids in tissue_classes.items():
        if tissue not in TISSUE_CLASSES:
            raise ValueError(f"unknown tissue class {tissue!r}; use {TISSUE_CLASSES}")
        table.loc[table["index"].isin([int(i) for i in ids]), "class"] = tissue
    return table


def table_for_output(table: pd.DataFrame) -> pd.DataFrame:
    """The label table as written next to segmentations: ``n/a`` where no tissue class."""
    return table.assign(**{"class": table["class"].fillna("n/a")})


def tissue_channel(path: str | os.PathLike) -> int:
    """Channel (index into :data:`TISSUE_CLASSES`) of a probseg file ``..._label-<class>_...``.

    Raises
    ------
    ValueError when the file name carries no ``label-CSF``, ``label-GM`` or ``label-WM``
    entity.
    """
    name = Path(path).name
    for channel, tissue in enumerate(TISSUE_CLASSES):
        if f"label-{tissue}_" in name:
            return channel
    raise ValueError(f"{path}: no label-<{'|'.join(TISSUE_CLASSES)}> entity in the file name")


def as_labels(image: ants.ANTsImage) -> np.ndarray:
    """Voxels of a label image as int64 (rounded: label maps are stored as floats by ANTs)."""
    return image.numpy().round().astype(np.int64)


def _read(image: ImageLike):
    """Return the image and a name for error messages: an in-memory ANTs image as given, a
    path read with SimpleITK (:func:`atlas.io.read_sitk`, so a job that only checks and
    copies files never loads ANTs)."""
    if isinstance(image, str | os.PathLike):
        from ..io import read_sitk

        return read_sitk(image), str(image)
    return image, "<in-memory image>"


def _grid(image) -> dict:
    """Shape (x, y, z index order), spacing, origin (mm) and flattened direction cosines of an
    ANTs or a SimpleITK image."""
    if is_sitk(image):
        return {
            "shape": image.GetSize(),
            "spacing": image.GetSpacing(),
            "origin": image.GetOrigin(),
            "direction": image.GetDirection(),
        }
    return {
        "shape": tuple(image.shape),
        "spacing": image.spacing,
        "origin": image.origin,
        "direction": np.ravel(image.direction),
    }


def _voxels(image) -> np.ndarray:
    """Voxel array of an ANTs or a SimpleITK image (any axis order)."""
    if is_sitk(image):
        import SimpleITK as sitk

        return sitk.GetArrayViewFromImage(image)
    return image.numpy()


def check_same_grid(a, b, *, atol: float = 1e-3, names=("image", "reference")) -> None:
    """Raise ValueError unless ``a`` and ``b`` share shape, spacing, origin and direction.

    ``a`` and ``b`` are ANTs or SimpleITK images (either kind, or one of each).

    Spacing and origin are compared in mm, direction cosines as unitless numbers, each with
    absolute tolerance ``atol``. The message names both images and every differing property.

    Kept instead of ``ants.image_physical_space_consistency``, which compares spacing, origin
    and direction only (two images of different shape pass it) and returns a bare bool
    (tested in ``tests/unit/test_segmentation.py``).
    """
    diffs = []
    ga, gb = _grid(a), _grid(b)
    if ga["shape"] != gb["shape"]:
        diffs.append(f"shape {ga['shape']} vs {gb['shape']}")
    for prop in ("spacing", "origin", "direction"):
        va, vb = np.asarray(ga[prop]), np.asarray(gb[prop])
        if va.shape != vb.shape or not np.allclose(va, vb, atol=atol):
            diffs.append(f"{prop} {va.tolist()} vs {vb.tolist()}")
    if diffs:
        raise ValueError(f"{names[0]} and {names[1]} are on different grids: " + "; ".join(diffs))


def validate_atlas(
    t1w: ImageLike, dseg: ImageLike, table: pd.DataFrame, *, atol: float = 1e-3
) -> None:
    """Check that a labelled atlas (T1w + dseg) is usable with ``table``.

    Parameters
    ----------
    t1w, dseg : paths (read with SimpleITK) or ANTs images of the atlas intensity image and
        its label map.
    table : label table from :func:`read_label_table`.
    atol : tolerance for the grid comparison (mm for spacing/origin), see
        :func:`check_same_grid`.

    Raises
    ------
    ValueError naming the file if the two grids differ, the label map is empty (no non-zero
    voxel) or holds non-integer values, or it contains label ids absent from ``table`` (the
    missing ids are listed).
    """
    t1w_img, t1w_name = _read(t1w)
    dseg_img, dseg_name = _read(dseg)
    check_same_grid(dseg_img, t1w_img, atol=atol, names=(dseg_name, t1w_name))
    values = np.unique(_voxels(dseg_img))
    if not np.all(values == np.round(values)):
        raise ValueError(f"{dseg_name}: label map holds non-integer values")
    ids = values[values != 0].astype(np.int64)
    if ids.size == 0:
        raise ValueError(f"{dseg_name}: label map is empty (no non-zero voxel)")
    missing = np.setdiff1d(ids, table["index"].to_numpy())
    if missing.size:
        raise ValueError(f"{dseg_name}: label ids {missing.tolist()} are not in the label table")
