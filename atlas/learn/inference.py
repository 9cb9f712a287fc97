"""Use a trained conditional atlas: atlases at given ages, TemplateFlow export, montage,
and one-pass registration of a subject to the atlas of its age.

:class:`LearnedAtlas` is the in-memory interface (atlases at ages as arrays, one-pass
registration, :func:`templateflow_description`, :func:`montage_slices`); :func:`sample`,
:func:`export_templateflow`, :func:`montage` and :func:`register_file` write its results
for scripts and notebooks (the workflow's jobs are in :mod:`atlas.learn.jobs`). All read
the ``model.pt`` written by :func:`atlas.learn.training.train`.

Outputs live on the training grid (the on-disk shape and voxel-to-world affine of the
training images). Written warps are displacement fields in mm with RAS world components,
stored as NIfTI vector images ``(X, Y, Z, 1, 3)`` (intent "vector").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from .. import io, qc
from .aarn import AARN
from .data import attribute_matrix, to_disk, training_spacing
from .layers import SpatialTransformer
from .training import build_model, load_checkpoint, resolve_device

log = logging.getLogger(__name__)


@dataclass
class LearnedRegistration:
    """Result of registering one subject to the atlas of its age.

    Attributes
    ----------
    atlas : ``(*S)`` atlas image at the subject's age (training space).
    warped : ``(*S)`` subject image pulled into atlas space, ``subject ∘ exp(-v)``.
    displacement : ``(*S, ndim)`` voxels, ``exp(v) - Id``: atlas -> subject pull-back
        (``atlas ∘ (Id + u) ≈ subject``), channel ``i`` along array axis ``i``.
    inverse_displacement : ``(*S, ndim)`` voxels, ``exp(-v) - Id`` (subject -> atlas).
    warped_labels : int subject labels in atlas space (nearest neighbour), ``(*S)`` or
        ``(L, *S)`` like the input labels, or None.
    seconds : wall time of the forward pass (network + integration + warps), s.
    warped_tissues : ``(K + 1, *S)`` atlas tissue probabilities (background first) warped
        to the subject (``T_tis(a) ∘ (Id + u)``, linear), or None without tissue maps.
    """

    atlas: np.ndarray
    warped: np.ndarray
    displacement: np.ndarray
    inverse_displacement: np.ndarray
    warped_labels: np.ndarray | None
    seconds: float
    warped_tissues: np.ndarray | None = None


class LearnedAtlas:
    """A trained :class:`~atlas.learn.networks.ConditionalAtlas` with its metadata.

    Parameters
    ----------
    path : ``model.pt`` (or ``checkpoint.pt``) written by :func:`atlas.learn.training.train`.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Raises
    ------
    FileNotFoundError if ``path`` does not exist.
    """

    def __init__(self, path, device: str = "cpu"):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(path)
        self.device = resolve_device(device)
        ckpt = load_checkpoint(path, self.device)
        self.config, self.meta = ckpt["config"], ckpt["meta"]
        self.model = build_model(self.config, self.meta).to(self.device)
        self.model.load_state_dict(ckpt["model"])
        self.model.eval()
        self.affine = np.asarray(self.meta["affine"])
        self.disk_shape = tuple(self.meta["disk_shape"])
        self.shape = tuple(self.meta["shape"])
        self.spacing = training_spacing(self.affine, self.disk_shape)
        self.n_labels = int(self.meta["n_labels"])
        self.tissue_names = list(self.meta.get("tissue_names", []))

    def _attributes(self, ages, sex=None) -> torch.Tensor:
        ages = np.atleast_1d(np.asarray(ages, dtype=np.float64))
        lo, hi = self.meta["age_range"]
        if ages.min() < lo or ages.max() > hi:
            log.warning("ages %s extrapolate beyond the training range [%g, %g] y", ages, lo, hi)
        if self.meta["n_attributes"] == 2:
            if sex is None:
                raise ValueError("this atlas is conditioned on sex: pass sex (0 = F, 1 = M)")
            sex = np.broadcast_to(np.asarray(sex, dtype=np.float64), ages.shape)
        else:
            sex = None
        attrs = attribute_matrix(ages, sex, self.meta["age_mean"], self.meta["age_std"])
        return torch.from_numpy(attrs).to(self.device)

    @torch.no_grad()
    def templates(self, ages, sex=None):
        """Atlases at ``ages`` (years).

        Parameters
        ----------
        ages : scalar or ``(N,)`` years.
        sex : 0 (F) / 1 (M), scalar or ``(N,)``; required iff the model uses sex.

        Returns
        -------
        (images ``(N, *S)`` float32, label maps ``(N, *S)`` int16 — argmax of the learned
        label probabilities — or None when the model learned no labels).
        """
        tpl = self.model.template(self._attributes(ages, sex)).cpu().numpy()
        lab = tpl[:, 1 : 1 + self.n_labels]
        labels = lab.argmax(1).astype(np.int16) if self.n_labels else None
        return tpl[:, 0], labels

    @torch.no_grad()
    def tissue_maps(self, ages, sex=None) -> np.ndarray | None:
        """Tissue probability maps ``(N, K + 1, *S)`` at ``ages`` (years): background then
        :attr:`tissue_names`, non-negative and summing to 1 per voxel (softmax); None for
        a model without tissue maps (``tissue_weight = 0``)."""
        if not self.tissue_names:
            return None
        tpl = self.model.template(self._attributes(ages, sex))
        return tpl[:, 1 + self.n_labels :].cpu().numpy()

    @torch.no_grad()
    def register(self, image, age: float, sex=None, labels=None) -> LearnedRegistration:
        """Register a subject (fixed) to the atlas of its age (moving) in one forward pass.

        Parameters
        ----------
        image : ``(*S)`` or on-disk-shaped subject image, affinely normalised to the
            training grid, same intensity normalisation as the training images.
        age : years. ``sex`` : see :meth:`templates`.
        labels : optional ``(*S)`` int label map of the subject, or ``(L, *S)`` for ``L``
            maps (e.g. two parcellations), carried to atlas space.

        Returns
        -------
        :class:`LearnedRegistration`.

        Raises
        ------
        ValueError if the image does not fit the training grid.
        """
        image = np.asarray(image, dtype=np.float32)
        if image.size != np.prod(self.shape):
            raise ValueError(f"image {image.shape} does not fit the training grid {self.shape}")
        if labels is not None and np.size(labels) % np.prod(self.shape):
            raise ValueError(f"labels {np.shape(labels)} do not fit the training grid {self.shape}")
        tic = time.perf_counter()
        fixed = torch.from_numpy(image.reshape(self.shape))[None, None].to(self.device)
        out = self.model(fixed, self._attributes(age, sex))
        inverse = self.model.inverse_displacement(out["velocity"])
        warped = self.model.registration.transformer(fixed, inverse)
        warped_labels = None
        if labels is not None:
            lab = np.asarray(labels, dtype=np.float32).reshape(-1, *self.shape)
            lab = torch.from_numpy(lab)[None].to(self.device)
            warped_labels = SpatialTransformer("nearest")(lab, inverse)[0].cpu().numpy()
            warped_labels = warped_labels.round().astype(np.int16)
            if np.size(labels) == np.prod(self.shape):
                warped_labels = warped_labels[0]
        tissues = out["warped"][0, 1 + self.n_labels :] if self.tissue_names else None
        seconds = time.perf_counter() - tic
        return LearnedRegistration(
            atlas=out["template"][0, 0].cpu().numpy(),
            warped=warped[0, 0].cpu().numpy(),
            displacement=out["displacement"][0].movedim(0, -1).cpu().numpy(),
            inverse_displacement=inverse[0].movedim(0, -1).cpu().numpy(),
            warped_labels=warped_labels,
            seconds=seconds,
            warped_tissues=None if tissues is None else tissues.cpu().numpy(),
        )

    @torch.no_grad()
    def to_subject(self, array, displacement: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Carry an atlas-space ``(*S)`` or ``(C, *S)`` array to a subject with the
        atlas -> subject pull-back ``displacement`` ``(*S, ndim)`` voxels
        (:attr:`LearnedRegistration.displacement`); nearest neighbour for label maps."""
        arr = np.asarray(array, dtype=np.float32)
        x = torch.from_numpy(arr.reshape(-1, *self.shape))[None].to(self.device)
        u = torch.from_numpy(np.moveaxis(displacement, -1, 0).copy())[None].to(self.device)
        out = SpatialTransformer("nearest" if nearest else "bilinear")(x, u)[0].cpu().numpy()
        return out.reshape(arr.shape)

    def world_displacement(self, displacement: np.ndarray) -> np.ndarray:
        """Convert ``(*S, ndim)`` voxel displacements to ``(*S, 3)`` RAS millimetres."""
        kept = [i for i, n in enumerate(self.disk_shape) if n != 1]
        return displacement @ self.affine[:3, kept].T

    def write(self, array, path, dtype=np.float32, affine=None, vector: bool = False) -> Path:
        """Write a ``(*S)`` training-space array (``(*S, k)`` when ``vector``) as NIfTI on the
        training grid (or with the header ``affine``), atomically."""
        affine = self.affine if affine is None else affine
        data = to_disk(array, self.disk_shape, vector)
        return io.write_nifti(data, affine, path, dtype, intent="vector" if vector else None)


def _age_tag(age: float) -> str:
    return f"{age:g}".replace(".", "p")


def age_scaled_affine(aarn: AARN | None, age: float, affine: np.ndarray) -> np.ndarray:
    """``M(age) @ affine``: the header affine returning an atlas on the grid ``affine`` to
    the mean head size and position at ``age`` (years) predicted by ``aarn`` (3D);
    ``affine`` itself when ``aarn`` is None.

    Raises
    ------
    ValueError for a 2D AARN.
    """
    if aarn is None:
        return affine
    if aarn.ndim != 3:
        raise ValueError("resizing NIfTI atlases needs a 3D (4x4) AARN")
    with torch.no_grad():
        return aarn([age])[0].double().numpy() @ affine


def sample(model_path, ages, out_dir, sex=None, aarn: AARN | None = None, device: str = "cpu"):
    """Write the atlas at each age as ``atlas_age-<age>_T1w.nii.gz`` in ``out_dir``.

    Parameters
    ----------
    model_path : ``model.pt`` from :func:`atlas.learn.training.train`.
    ages : iterable of ages in years (``62.5`` is written ``age-62p5``).
    out_dir : output folder (created).
    sex : 0/1 for sex-conditioned models, else None.
    aarn : optional fitted 3D :class:`~atlas.learn.aarn.AARN`; when given, each atlas's
        header affine becomes ``M(age) @ affine``, i.e. the atlas is returned to the mean
        head size and position at that age without resampling.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    list of written paths; with learned labels, ``atlas_age-<age>_dseg.nii.gz`` follows
    each image.
    """
    atlas = LearnedAtlas(model_path, device)
    ages = [float(a) for a in ages]
    images, labels = atlas.templates(ages, None if sex is None else [sex] * len(ages))
    affines = [age_scaled_affine(aarn, age, atlas.affine) for age in ages]
    paths = []
    for i, (age, affine) in enumerate(zip(ages, affines, strict=True)):
        stem = Path(out_dir) / f"atlas_age-{_age_tag(age)}"
        paths.append(atlas.write(images[i], f"{stem}_T1w.nii.gz", affine=affine))
        if labels is not None:
            paths.append(atlas.write(labels[i], f"{stem}_dseg.nii.gz", np.int16, affine))
    return paths


def templateflow_description(atlas: LearnedAtlas, ages, name: str, res=1) -> dict:
    """``template_description.json`` of a TemplateFlow-style template with one cohort per
    age: ``Name``, ``Identifier``, ``cohort`` (``{"1": {"age": [20.0], "units": "years"},
    ...}``) and ``res`` (shape, zooms and origin of the training grid).

    Raises
    ------
    ValueError if ``name`` is not alphanumeric (TemplateFlow rule).
    """
    if not name.isalnum():
        raise ValueError(f"template name must be alphanumeric, got {name!r}")
    cohorts = {str(k): {"age": [float(age)], "units": "years"} for k, age in enumerate(ages, 1)}
    return {
        "Name": f"{name}: learned age-conditional template (Dalca et al. 2019)",
        "Identifier": name,
        "cohort": cohorts,
        "res": {
            str(res): {
                "shape": list(atlas.disk_shape),
                "zooms": np.sqrt((atlas.affine[:3, :3] ** 2).sum(0)).round(6).tolist(),
                "origin": atlas.affine[:3, 3].round(6).tolist(),
            }
        },
    }


def templateflow_name(name: str, cohort: int, res, suffix: str = "T1w") -> str:
    """``cohort-<k>/tpl-<name>_cohort-<k>_res-<res>_<suffix>.nii.gz`` inside ``tpl-<name>``."""
    return f"cohort-{cohort}/tpl-{name}_cohort-{cohort}_res-{res}_{suffix}.nii.gz"


def export_templateflow(
    model_path, ages, out_root, name: str, res: int = 1, sex=None, aarn=None, device="cpu"
) -> Path:
    """Export atlases at ``ages`` as a TemplateFlow-style template with one cohort per age.

    Writes ``<out_root>/tpl-<name>/`` + :func:`templateflow_name` for ``k = 1..len(ages)``
    (``..._dseg.nii.gz`` too when labels were learned) and ``template_description.json``
    (:func:`templateflow_description`). Everything is computed before the first file is
    written, and each file is written atomically.

    Parameters
    ----------
    model_path, sex, aarn, device : as in :func:`sample`.
    ages : ages in years, one cohort each.
    out_root : folder receiving ``tpl-<name>``.
    name : template identifier (letters/digits only, TemplateFlow rule).
    res : resolution index recorded in filenames and ``template_description.json``.

    Returns
    -------
    Path of ``tpl-<name>``.

    Raises
    ------
    ValueError if ``name`` is not alphanumeric.
    """
    atlas = LearnedAtlas(model_path, device)
    ages = [float(a) for a in ages]
    sexes = None if sex is None else [sex] * len(ages)
    images, labels = atlas.templates(ages, sexes)
    tissues = atlas.tissue_maps(ages, sexes)
    description = templateflow_description(atlas, ages, name, res)
    affines = [age_scaled_affine(aarn, age, atlas.affine) for age in ages]
    root = Path(out_root) / f"tpl-{name}"
    label_suffix = "desc-labels_dseg" if tissues is not None else "dseg"
    for k, affine in enumerate(affines, start=1):
        atlas.write(images[k - 1], root / templateflow_name(name, k, res), affine=affine)
        if labels is not None:
            path = root / templateflow_name(name, k, res, label_suffix)
            atlas.write(labels[k - 1], path, np.int16, affine)
        if tissues is not None:
            paths = tissue_paths(root, name, k, res, atlas.tissue_names)
            write_tissues(atlas, tissues[k - 1], paths, affine)
    if tissues is not None:
        io.write_tsv(tissue_table(atlas.tissue_names), root / f"tpl-{name}_dseg.tsv")
    io.write_json(description, root / "template_description.json")
    return root


def tissue_paths(root, name: str, cohort: int, res, tissue_names) -> dict:
    """Paths of one cohort's tissue outputs: ``probseg`` (one
    ``..._label-<tissue>_probseg.nii.gz`` per tissue) and ``dseg`` (``..._dseg.nii.gz``)."""
    root = Path(root)
    return {
        "probseg": [
            root / templateflow_name(name, cohort, res, f"label-{t}_probseg") for t in tissue_names
        ],
        "dseg": root / templateflow_name(name, cohort, res, "dseg"),
    }


def tissue_table(tissue_names) -> pd.DataFrame:
    """The ``_dseg.tsv`` of the tissue label maps: ``index`` 1..K and ``name``."""
    return pd.DataFrame({"index": range(1, len(tissue_names) + 1), "name": list(tissue_names)})


def write_tissues(atlas: LearnedAtlas, maps: np.ndarray, paths: dict, affine=None) -> None:
    """Write one age's tissue maps ``(K + 1, *S)`` (background first): each tissue's
    probability to ``paths["probseg"]`` and the argmax label map (0 = background) to
    ``paths["dseg"]`` (:func:`tissue_paths`)."""
    for channel, path in enumerate(paths["probseg"], start=1):
        atlas.write(maps[channel], path, affine=affine)
    atlas.write(maps.argmax(0).astype(np.int16), paths["dseg"], np.int16, affine)


def montage_slices(atlas: LearnedAtlas, images) -> list[np.ndarray]:
    """The slice of each ``(N, *S)`` atlas shown by :func:`montage`: reoriented to RAS with
    the training affine, a slice cohort's slice or a 3D atlas's middle axial slice, as
    ``(x, y)`` arrays (first axis left to right, second pointing up)."""
    ornt = nib.orientations.io_orientation(atlas.affine)
    ras_shape = [atlas.disk_shape[int(i)] for i in ornt[:, 0]]
    axis = ras_shape.index(1) if 1 in ras_shape else 2
    slices = []
    for img in images:
        vol = nib.orientations.apply_orientation(img.reshape(atlas.disk_shape), ornt)
        slices.append(np.take(vol, vol.shape[axis] // 2, axis=axis))
    return slices


def montage(model_path_or_atlas, ages, png, sex=None) -> Path:
    """Save a PNG row of the atlases at ``ages`` (years) (:func:`montage_slices`, drawn by
    :func:`atlas.qc.plot_age_montage`). ``model_path_or_atlas`` is a ``model.pt`` path or a
    :class:`LearnedAtlas`. Returns the PNG path."""
    atlas = (
        model_path_or_atlas
        if isinstance(model_path_or_atlas, LearnedAtlas)
        else LearnedAtlas(model_path_or_atlas)
    )
    ages = [float(a) for a in ages]
    sexes = None if sex is None else [sex] * len(ages)
    images, _ = atlas.templates(ages, sexes)
    io.save_figure(montage_figure(atlas, images, atlas.tissue_maps(ages, sexes), ages), png)
    return Path(png)


def montage_figure(atlas: LearnedAtlas, images, tissues, ages, unit: str = "y"):
    """The montage Figure: the intensity atlases ``(N, *S)`` at ``ages`` in a row, titled in
    ``unit`` (``y`` or ``mo``; :func:`atlas.qc.plot_age_montage`), or, with tissue maps
    ``(N, K + 1, *S)``, the intensity row above one row per tissue
    (:func:`atlas.qc.plot_age_tissue_montage`)."""
    vmax = float(np.percentile(images, 99.5))
    if tissues is None:
        return qc.plot_age_montage(montage_slices(atlas, images), ages, vmax, unit)
    rows = [montage_slices(atlas, tissues[:, k]) for k in range(1, tissues.shape[1])]
    return qc.plot_age_tissue_montage(
        montage_slices(atlas, images), rows, atlas.tissue_names, ages, vmax, unit
    )


def register_file(
    model_path, image_path, age: float, out_dir, sex=None, label_path=None, device="cpu"
) -> dict:
    """Register one NIfTI subject to the atlas of its age and write the results.

    Parameters
    ----------
    model_path : ``model.pt``.
    image_path : subject image on the training grid (affinely normalised).
    age : years. ``sex``, ``device`` : as in :func:`sample`.
    out_dir : output folder; files are named after the input (``<stem>_space-atlas_T1w``,
        ``<stem>_from-atlas_to-subject_xfm`` and ``<stem>_from-subject_to-atlas_xfm``
        displacement fields in mm (RAS components), ``<stem>_space-atlas_dseg``).
    label_path : optional subject label map to carry into atlas space.

    Returns
    -------
    dict of written paths plus ``seconds`` (forward-pass time).
    """
    atlas = LearnedAtlas(model_path, device)
    image = np.asarray(nib.load(image_path).dataobj, dtype=np.float32)
    labels = None if label_path is None else np.asarray(nib.load(label_path).dataobj)
    result = atlas.register(image, age, sex, labels)
    stem = Path(out_dir) / Path(image_path).name.split(".nii")[0]
    forward = atlas.world_displacement(result.displacement)
    inverse = atlas.world_displacement(result.inverse_displacement)
    out = {
        "warped": atlas.write(result.warped, f"{stem}_space-atlas_T1w.nii.gz"),
        "warp": atlas.write(forward, f"{stem}_from-atlas_to-subject_xfm.nii.gz", vector=True),
        "inverse_warp": atlas.write(
            inverse, f"{stem}_from-subject_to-atlas_xfm.nii.gz", vector=True
        ),
        "seconds": result.seconds,
    }
    if result.warped_labels is not None:
        out["labels"] = atlas.write(
            result.warped_labels, f"{stem}_space-atlas_dseg.nii.gz", np.int16
        )
    return out
