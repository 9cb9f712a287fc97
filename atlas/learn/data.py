"""Cohorts of the learned atlas: images on one grid with ages, sex and labels.

The learned atlas is trained in a common, affinely normalised space: every image of a
cohort shares one voxel grid (same shape and voxel-to-world affine). Singleton axes of
the on-disk arrays (e.g. the ``(160, 192, 1)`` OASIS slices) are dropped for training,
so a slice cohort trains a 2D model; :func:`to_disk` restores them before writing.

:func:`load_cohort` is the one reader of cohort images (a run's normalised images, or the
files of a BIDS dataset found by :func:`find_bids_cohort`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ..io import InputError

SEX_CODES = {"F": 0.0, "M": 1.0}
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]


@dataclass
class Cohort:
    """Images of a cohort on one common grid, with ages and optional sex and labels.

    Attributes
    ----------
    images : float32 ``(N, *S)``, ``len(S)`` in {2, 3}, intensities (any unit).
    ages : float ``(N,)``, years.
    affine : ``(4, 4)`` voxel-to-world (RAS, mm) affine of the on-disk grid.
    disk_shape : on-disk spatial shape; equals ``S`` with the singleton axes restored.
    sex : optional float ``(N,)``, 0 = female, 1 = male.
    labels : optional int ``(N, *S)`` label maps (0 = background).
    subjects : subject ids (``sub-...``), length ``N``.
    tissues : optional int ``(N, *S)`` tissue segmentations, 0 = background and ``k``
        = tissue ``tissue_names[k - 1]`` (see :func:`tissue_lookup`).
    tissue_names : names of the tissues (``GM``, ``SGM``, ``WM``, ``CSF``), in map order.
    """

    images: np.ndarray
    ages: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    disk_shape: tuple | None = None
    sex: np.ndarray | None = None
    labels: np.ndarray | None = None
    subjects: list = field(default_factory=list)
    tissues: np.ndarray | None = None
    tissue_names: list = field(default_factory=list)

    def __post_init__(self):
        self.images = np.asarray(self.images, dtype=np.float32)
        self.ages = np.asarray(self.ages, dtype=np.float64)
        if self.images.ndim not in (3, 4) or len(self.ages) != len(self.images):
            raise ValueError(
                f"images must be (N, *S) with 2 or 3 spatial axes and ages (N,); got "
                f"{self.images.shape} and {self.ages.shape}"
            )
        if self.disk_shape is None:
            self.disk_shape = self.images.shape[1:]
        self.disk_shape = tuple(int(n) for n in self.disk_shape)
        if _squeezed(self.disk_shape) != _squeezed(self.images.shape[1:]):
            raise ValueError(f"disk_shape {self.disk_shape} does not match {self.images.shape}")
        for name in ("labels", "tissues"):
            maps = getattr(self, name)
            if maps is not None and maps.shape != self.images.shape:
                raise ValueError(f"{name} {maps.shape} differ from images {self.images.shape}")
        if self.tissues is not None and int(self.tissues.max()) > len(self.tissue_names):
            raise ValueError(f"tissue ids up to {self.tissues.max()} but {self.tissue_names}")

    @property
    def shape(self) -> tuple:
        """Training spatial shape ``S`` (voxels)."""
        return self.images.shape[1:]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each training axis ``(len(S),)``."""
        return training_spacing(self.affine, self.disk_shape)


def _squeezed(shape) -> tuple:
    return tuple(int(n) for n in shape if n != 1)


def training_spacing(affine: np.ndarray, disk_shape) -> np.ndarray:
    """Voxel sizes (mm) of the non-singleton axes of a grid with ``affine`` and ``disk_shape``."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))[: len(disk_shape)]
    return zooms[[i for i, n in enumerate(disk_shape) if n != 1]]


def to_disk(array, disk_shape, vector: bool = False) -> np.ndarray:
    """A training-space array in its on-disk layout, the input of :func:`atlas.io.write_nifti`.

    Parameters
    ----------
    array : ``(*S)`` scalar image, or ``(*S, k)`` vector field when ``vector``.
    disk_shape : on-disk spatial shape (singleton axes restored).
    vector : store as ``(*disk_shape, 1, k)``, the NIfTI-1 layout of a vector image.

    Raises
    ------
    ValueError if the array does not fit the grid.
    """
    array = np.asarray(array)
    spatial = array.shape[:-1] if vector else array.shape
    if _squeezed(spatial) != _squeezed(disk_shape):
        raise ValueError(f"array {array.shape} does not fit the grid {tuple(disk_shape)}")
    shape = (*disk_shape, 1, array.shape[-1]) if vector else tuple(disk_shape)
    return array.reshape(shape)


def to_years(ages, units: str) -> np.ndarray:
    """Ages in ``units`` (``years`` or ``months``) as float years.

    Raises
    ------
    ValueError for other units.
    """
    ages = np.asarray(ages, dtype=np.float64)
    if units not in ("years", "months"):
        raise ValueError(f"age units must be 'years' or 'months', got {units!r}")
    return ages / 12.0 if units == "months" else ages


def sex_codes(sex) -> np.ndarray | None:
    """``F``/``M`` -> 0/1 per subject; None when ``sex`` is None or any value is another."""
    if sex is None:
        return None
    codes = np.array([SEX_CODES.get(str(s), np.nan) for s in sex], dtype=np.float64)
    return None if np.isnan(codes).any() else codes


def attribute_matrix(ages, sex=None, age_mean: float = 0.0, age_std: float = 1.0) -> np.ndarray:
    """Normalised conditioning attributes.

    Parameters
    ----------
    ages : ``(N,)`` years.
    sex : optional ``(N,)`` with 0 = female, 1 = male; omitted when None.
    age_mean, age_std : years; the training cohort's statistics.

    Returns
    -------
    float32 ``(N, 1)`` ``[(age - mean) / std]`` or ``(N, 2)`` with ``sex - 0.5`` appended.
    """
    cols = [(np.asarray(ages, dtype=np.float64) - age_mean) / age_std]
    if sex is not None:
        cols.append(np.asarray(sex, dtype=np.float64) - 0.5)
    return np.stack(cols, axis=1).astype(np.float32)


def load_cohort(
    images, ages, sex=None, subjects=(), labels=None, tissues=None, tissue_names=()
) -> Cohort:
    """Read a :class:`Cohort` from NIfTI files on one grid.

    Parameters
    ----------
    images : image paths, one per subject.
    ages : ``(N,)`` years.
    sex : optional ``F``/``M`` per subject (kept when every subject has one).
    subjects : subject ids, one per image.
    labels : optional label-map paths, one per image (stored as int16).
    tissues : optional tissue-segmentation paths, one per image (stored as int16), 0 =
        background and ``k`` = tissue ``tissue_names[k - 1]`` (e.g. the Atropos maps of
        :func:`atlas.learn.jobs.atropos_tissues`: 1 = CSF, 2 = GM, 3 = WM).
    tissue_names : names of the tissue ids of ``tissues``.

    Raises
    ------
    ValueError if there is no image, an image, label map or tissue map is not on the grid
    (shape and affine within 1e-4) of the first image, or a tissue map has an id beyond
    ``tissue_names``.
    """
    images = [Path(p) for p in images]
    if not images:
        raise ValueError("a cohort needs at least one image")
    first = nib.load(images[0])
    disk_shape = first.shape[:3]

    def read(path, dtype):
        img = nib.load(path)
        if img.shape[:3] != disk_shape or not np.allclose(img.affine, first.affine, atol=1e-4):
            raise ValueError(f"{path} is not on the grid of {images[0]}")
        return np.squeeze(np.asarray(img.dataobj, dtype=dtype))

    return Cohort(
        images=np.stack([read(p, np.float32) for p in images]),
        ages=np.asarray(ages, dtype=np.float64),
        affine=np.asarray(first.affine),
        disk_shape=disk_shape,
        sex=sex_codes(sex),
        labels=None if labels is None else np.stack([read(p, np.int16) for p in labels]),
        subjects=list(subjects),
        tissues=None if tissues is None else np.stack([read(p, np.int16) for p in tissues]),
        tissue_names=list(tissue_names),
    )


def _entities(name: str, key: str) -> dict:
    """pybids entities of a filename ending such as ``acq-slice_desc-norm_T1w``.

    Raises
    ------
    InputError naming the config ``key`` if a part is no BIDS entity.
    """
    from bids.layout import parse_file_entities

    parsed = parse_file_entities(f"/sub-0_{name}.nii.gz", config=["bids", "derivatives"])
    parsed = {k: v for k, v in parsed.items() if k not in ("subject", "extension")}
    if "suffix" not in parsed or len(parsed) != len(name.split("_")):
        raise InputError(
            f"config key {key}: {name!r} is not a sequence of BIDS entities and a suffix "
            f"(e.g. desc-norm_T1w); understood {parsed}"
        )
    return parsed


def find_bids_cohort(
    root, image_suffix: str, label_suffix: str | None = None, subjects=None
) -> pd.DataFrame:
    """Files and demographics of a BIDS dataset already normalised to one grid (pybids).

    For each ``participants.tsv`` row (columns ``participant_id``, ``age``, optional ``sex``
    F/M) with an image whose entities and suffix are those of ``image_suffix`` (e.g.
    ``desc-norm_T1w``; ``.nii`` or ``.nii.gz``, any session), the first such image (sorted
    path) and, with ``label_suffix``, the label map whose other entities equal the image's.

    Returns
    -------
    DataFrame with columns ``subject`` (``sub-...``), ``image``, ``label`` (None without
    ``label_suffix``), ``age`` and ``sex``, in ``participants.tsv`` order.

    Raises
    ------
    FileNotFoundError if ``participants.tsv`` or every image is missing; ValueError if a
    label map is missing; InputError for a suffix that is not BIDS entities.
    """
    import bids

    root = Path(root)
    want = _entities(image_suffix, "learned.image_suffix")
    want_label = _entities(label_suffix, "learned.label_suffix") if label_suffix else {}
    table = pd.read_csv(root / "participants.tsv", sep="\t", dtype={"participant_id": str})
    if subjects is not None:
        table = table[table["participant_id"].isin(set(subjects))]
    layout = bids.BIDSLayout(
        str(root),
        validate=False,
        config=["bids", "derivatives"],
        indexer=bids.BIDSLayoutIndexer(index_metadata=False),
    )
    found = layout.get(return_type="object", extension=NIFTI_EXTENSIONS, **want)
    by_subject: dict = {}
    for f in sorted(found, key=lambda f: f.path):
        by_subject.setdefault(f.get_entities()["subject"], f)
    rows = []
    for row in table.itertuples(index=False):
        image = by_subject.get(row.participant_id.removeprefix("sub-"))
        if image is None:
            continue
        label = _matching_label(layout, image, want, want_label) if label_suffix else None
        sex = getattr(row, "sex", "n/a")
        rows.append(
            {"subject": row.participant_id, "image": image.path, "label": label}
            | {"age": float(row.age), "sex": sex}
        )
    if not rows:
        raise FileNotFoundError(f"no *{image_suffix}.nii[.gz] images under {root}")
    return pd.DataFrame(rows)


def _matching_label(layout, image, want: dict, want_label: dict) -> str:
    """The label map named like ``image`` with ``want``'s entities replaced by
    ``want_label``'s (e.g. ``desc-norm_T1w`` -> ``desc-seg4_dseg``), any extension."""

    def entities(f, drop=()):
        skip = {"extension", "datatype", *drop}
        return {k: v for k, v in f.get_entities().items() if k not in skip}

    expected = entities(image, want) | want_label
    candidates = layout.get(
        return_type="object", subject=expected["subject"], extension=NIFTI_EXTENSIONS, **want_label
    )
    matches = sorted(c.path for c in candidates if entities(c) == expected)
    if not matches:
        raise ValueError(f"missing label map {want_label} for {image.path}")
    return matches[0]


def load_bids_cohort(
    root,
    image_suffix: str = "desc-norm_T1w",
    label_suffix: str | None = "desc-seg4_dseg",
    subjects=None,
    tissue_suffix: str | None = None,
) -> Cohort:
    """Load a BIDS cohort already normalised to a common grid.

    Files and ages as found by :func:`find_bids_cohort`, read by :func:`load_cohort`
    (sex included when every participant has F/M; labels when ``label_suffix`` is given).
    With ``tissue_suffix`` (e.g. ``desc-seg4_dseg``), the label maps of that ending are
    grouped into tissues by the dataset's label table ``<root>/<tissue_suffix>.tsv``
    (:func:`tissue_lookup`) and stored as ``tissues`` / ``tissue_names``.

    Raises
    ------
    FileNotFoundError if ``participants.tsv``, every image or the tissue label table is
    missing; ValueError if the images do not share one grid (shape and affine), a label
    file is missing or the label table names no tissue.
    """
    files = find_bids_cohort(root, image_suffix, label_suffix, subjects)
    cohort = load_cohort(
        files.image,
        files.age,
        sex=files.sex,
        subjects=files.subject,
        labels=files.label if label_suffix else None,
    )
    if tissue_suffix:
        lookup, names = tissue_lookup(read_tissue_table(Path(root) / f"{tissue_suffix}.tsv"))
        if tissue_suffix == label_suffix:
            maps = cohort.labels
        else:
            found = find_bids_cohort(root, image_suffix, tissue_suffix, subjects)
            maps = load_cohort(found.image, found.age, labels=found.label).labels
        cohort.tissues = lookup[np.clip(maps, 0, len(lookup) - 1)].astype(np.int16)
        cohort.tissue_names = names
    return cohort


TISSUE_ALIASES = {
    "GM": ("gm", "cortex", "cortical-gray-matter", "cortical-grey-matter", "cgm"),
    "SGM": ("sgm", "subcortical-gray-matter", "subcortical-grey-matter", "deep-gray-matter"),
    "WM": ("wm", "white-matter", "cerebral-white-matter"),
    "CSF": ("csf", "cerebrospinal-fluid", "ventricles"),
}
"""Tissue names of the learned tissue maps and the label names read as each."""


def read_tissue_table(path) -> pd.DataFrame:
    """A BIDS ``*_dseg.tsv`` (columns ``index``, ``name``, optional ``class``), row 0
    (background) dropped if listed.

    Raises
    ------
    FileNotFoundError if missing; ValueError without ``index`` and ``name`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tissue label table {path} not found")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if not {"index", "name"} <= set(table.columns):
        raise ValueError(f"{path}: a label table needs columns index and name")
    table["index"] = table["index"].astype(int)
    return table[table["index"] > 0].reset_index(drop=True)


def tissue_lookup(table: pd.DataFrame) -> tuple[np.ndarray, list]:
    """Label id -> tissue map id (0 = background) and the tissue names.

    With a non-empty ``class`` column (GM, WM, CSF; see
    :func:`atlas.segmentation.labels.read_label_table`), labels are grouped by class (in
    the order CSF, GM, WM) and unclassified labels become background. Otherwise every
    label is one tissue named by :data:`TISSUE_ALIASES` (e.g. oasis2d seg4: Cortex -> GM,
    Subcortical-Gray-Matter -> SGM, White-Matter -> WM, CSF -> CSF).

    Returns
    -------
    (int ``(max id + 1,)`` lookup array, list of tissue names)

    Raises
    ------
    ValueError if a label name is not a known tissue and the table has no ``class``.
    """
    lookup = np.zeros(int(table["index"].max()) + 1, dtype=np.int16)
    classes = table["class"].str.strip().str.upper() if "class" in table else None
    if classes is not None and classes.isin(["CSF", "GM", "WM"]).any():
        names = [c for c in ("CSF", "GM", "WM") if (classes == c).any()]
        for k, name in enumerate(names, start=1):
            lookup[table.loc[classes == name, "index"].to_numpy()] = k
        return lookup, names
    alias = {a: t for t, names in TISSUE_ALIASES.items() for a in names}
    names = []
    for row in table.itertuples(index=False):
        key = str(row.name).strip().lower().replace(" ", "-").replace("_", "-")
        if key not in alias:
            raise ValueError(
                f"label {row.name!r} is no known tissue ({sorted(TISSUE_ALIASES)}); add a "
                "class column (GM, WM, CSF) to the label table"
            )
        if alias[key] not in names:
            names.append(alias[key])
        lookup[row.index] = names.index(alias[key]) + 1
    return lookup, names
