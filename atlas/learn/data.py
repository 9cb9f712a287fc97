"""Cohort loading/writing for the learned atlas: BIDS NIfTI <-> numpy arrays.

The learned atlas is trained in a common, affinely normalised space: every image of a
cohort shares one voxel grid (same shape and voxel-to-world affine). Singleton axes of
the on-disk arrays (e.g. the ``(160, 192, 1)`` OASIS slices) are dropped for training,
so a slice cohort trains a 2D model; :func:`write_nifti` restores them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SEX_CODES = {"F": 0.0, "M": 1.0}


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
    """

    images: np.ndarray
    ages: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    disk_shape: tuple | None = None
    sex: np.ndarray | None = None
    labels: np.ndarray | None = None
    subjects: list = field(default_factory=list)

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
        if tuple(n for n in self.disk_shape if n != 1) != tuple(
            n for n in self.images.shape[1:] if n != 1
        ):
            raise ValueError(f"disk_shape {self.disk_shape} does not match {self.images.shape}")
        if self.labels is not None and self.labels.shape != self.images.shape:
            raise ValueError(f"labels {self.labels.shape} differ from images {self.images.shape}")

    @property
    def shape(self) -> tuple:
        """Training spatial shape ``S`` (voxels)."""
        return self.images.shape[1:]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each training axis ``(len(S),)``."""
        return training_spacing(self.affine, self.disk_shape)


def training_spacing(affine: np.ndarray, disk_shape) -> np.ndarray:
    """Voxel sizes (mm) of the non-singleton axes of a grid with ``affine`` and ``disk_shape``."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))[: len(disk_shape)]
    return zooms[[i for i, n in enumerate(disk_shape) if n != 1]]


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


def load_bids_cohort(
    root,
    image_suffix: str = "desc-norm_T1w",
    label_suffix: str | None = "desc-seg4_dseg",
    subjects=None,
) -> Cohort:
    """Load a BIDS cohort already normalised to a common grid.

    Reads ``participants.tsv`` (columns ``participant_id``, ``age`` in years, optional
    ``sex`` F/M) and, for each participant, the single file
    ``sub-*/anat/sub-*_*<image_suffix>.nii.gz`` (and ``<label_suffix>`` if given).

    Parameters
    ----------
    root : BIDS dataset root.
    image_suffix, label_suffix : filename endings (entities + suffix) before ``.nii.gz``.
    subjects : optional iterable of ``sub-...`` ids to keep (default: all with images).

    Returns
    -------
    :class:`Cohort` (sex included when every participant has F/M).

    Raises
    ------
    FileNotFoundError if ``participants.tsv`` or every image is missing; ValueError if the
    images do not share one grid (shape and affine) or a label file is missing.
    """
    root = Path(root)
    table = pd.read_csv(root / "participants.tsv", sep="\t", dtype={"participant_id": str})
    if subjects is not None:
        table = table[table["participant_id"].isin(set(subjects))]
    images, labels, ages, sexes, ids = [], [], [], [], []
    affine = disk_shape = None
    for row in table.itertuples(index=False):
        sub = row.participant_id
        found = sorted((root / sub / "anat").glob(f"{sub}_*{image_suffix}.nii.gz"))
        if not found:
            continue
        img = nib.load(found[0])
        if affine is None:
            affine, disk_shape = img.affine, img.shape[:3]
        elif img.shape[:3] != disk_shape or not np.allclose(img.affine, affine, atol=1e-4):
            raise ValueError(f"{found[0]} is not on the grid of the first image")
        images.append(np.squeeze(np.asarray(img.dataobj, dtype=np.float32)))
        if label_suffix:
            lab_path = Path(str(found[0]).replace(image_suffix, label_suffix))
            if not lab_path.exists():
                raise ValueError(f"missing label map {lab_path}")
            labels.append(np.squeeze(np.asarray(nib.load(lab_path).dataobj)).astype(np.int16))
        ages.append(float(row.age))
        sexes.append(SEX_CODES.get(str(getattr(row, "sex", "n/a")), np.nan))
        ids.append(sub)
    if not images:
        raise FileNotFoundError(f"no *{image_suffix}.nii.gz images under {root}")
    sex = np.asarray(sexes)
    return Cohort(
        images=np.stack(images),
        ages=np.asarray(ages),
        affine=np.asarray(affine),
        disk_shape=disk_shape,
        sex=None if np.isnan(sex).any() else sex,
        labels=np.stack(labels) if labels else None,
        subjects=ids,
    )


def write_nifti(array, affine, disk_shape, path, dtype=np.float32, intent: str | None = None):
    """Write a training-space array as NIfTI on the on-disk grid.

    Parameters
    ----------
    array : ``(*S)`` scalar image or ``(*S, k)`` vector field in training axes.
    affine : ``(4, 4)`` voxel-to-world affine of the on-disk grid (RAS, mm).
    disk_shape : on-disk spatial shape (singleton axes restored).
    path : output ``.nii.gz`` path; parent folders are created; the file is written to a
        temporary name and renamed, so readers never see a partial file.
    dtype : on-disk data type.
    intent : optional NIfTI intent code name (e.g. ``"vector"``); vector fields are stored
        as ``(*disk_shape, 1, k)`` per the NIfTI-1 convention.

    Returns
    -------
    ``pathlib.Path`` of the written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    spatial = array.shape if intent is None else array.shape[:-1]
    if tuple(n for n in spatial if n != 1) != tuple(n for n in disk_shape if n != 1):
        raise ValueError(f"array {array.shape} does not fit the grid {tuple(disk_shape)}")
    shape = tuple(disk_shape) if intent is None else (*disk_shape, 1, array.shape[-1])
    img = nib.Nifti1Image(array.reshape(shape).astype(dtype), np.asarray(affine))
    img.header.set_xyzt_units("mm", "sec")
    if intent is not None:
        img.header.set_intent(intent)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(img, tmp)
    os.replace(tmp, path)
    return path
