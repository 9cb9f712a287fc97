"""Snakemake job functions of the learned age-conditional atlas (``workflow/rules/learned.smk``).

Each function reads its input files, calls the :mod:`atlas.learn` API and writes its
outputs atomically (:mod:`atlas.io` or the package's own temporary-file-and-rename
writes). Rules call them through ``workflow/scripts/run.py`` with
``params.step = "learn.jobs.<function>"``; they are also usable without Snakemake.

Conventions
-----------
* Ages reach the package in **years** (its contract); ``age_units: months`` divides the
  configured and participant ages by 12, and the TemplateFlow description reports the
  cohorts back in the configured unit.
* Normalisation affines (``*_from-T1w_to-<ref>_mode-image_xfm.mat``) are ANTs affines in
  LPS physical coordinates that map reference-space points to subject points;
  :func:`read_normalisation_affine` turns them into the homogeneous RAS matrices that
  :func:`atlas.learn.fit_aarn` expects (same direction, NIfTI world convention).
* Written warps are ANTs-compatible displacement fields: NIfTI vector images
  ``(X, Y, Z, 1, 3)`` in mm with **LPS** components, defined on the grid of the image they
  resample *into*: ``ants.apply_transforms(fixed=atlas, moving=image,
  transformlist=[from-<ref>_to-<atlas> warp])`` reproduces the warped image.
* Evaluation measures are computed by the same code for both methods, from the same
  inputs (the affinely normalised images on the reference grid) and on the same grid
  and brain mask; see :func:`subject_measures`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from .. import io, metrics
from .aarn import AARN, fit_aarn, mean_scale
from .data import SEX_CODES, Cohort, load_bids_cohort, write_nifti
from .sample import LearnedAtlas, export_templateflow, montage
from .train import DEFAULT_CONFIG, train

log = logging.getLogger(__name__)

#: LPS <-> RAS flip of world coordinates (its own inverse).
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_years(ages, units: str) -> np.ndarray:
    """Ages in ``units`` (``years`` or ``months``) as float years."""
    ages = np.asarray(ages, dtype=np.float64)
    if units not in ("years", "months"):
        raise ValueError(f"age units must be 'years' or 'months', got {units!r}")
    return ages / 12.0 if units == "months" else ages


def _set_threads(threads) -> None:
    torch.set_num_threads(max(1, int(threads or 1)))


# --- transforms and fields ---------------------------------------------------------
def read_normalisation_affine(path) -> np.ndarray:
    """Homogeneous ``(4, 4)`` RAS matrix of an ANTs affine ``.mat``.

    ANTs stores ``y = A (x - c) + t + c`` (``A`` row-major in ``parameters[:9]``,
    ``t = parameters[9:]``, centre ``c = fixed_parameters``) on LPS points ``x`` of the
    fixed (reference) space, ``y`` in the moving (subject) space. With ``F = diag(-1, -1,
    1)`` flipping LPS <-> RAS, the same map on RAS points is ``M = F · M_lps · F``; ``M``
    still maps reference points to subject points, the convention of
    :func:`atlas.learn.fit_aarn`.
    """
    import ants

    tx = ants.read_transform(str(path))
    params = np.asarray(tx.parameters, dtype=np.float64)
    centre = np.asarray(tx.fixed_parameters, dtype=np.float64)
    if params.size != 12 or centre.size != 3:
        raise ValueError(f"{path}: not a 3D ANTs affine ({tx.transform_type})")
    a = params[:9].reshape(3, 3)
    m_lps = np.eye(4)
    m_lps[:3, :3] = a
    m_lps[:3, 3] = params[9:] + centre - a @ centre
    return FLIP @ m_lps @ FLIP


def _axes(affine: np.ndarray):
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    return zooms, affine[:3, :3] / zooms


def read_warp(path) -> tuple[np.ndarray, np.ndarray]:
    """An ANTs displacement field as ``(X, Y, Z, 3)`` mm along the array axes, and the
    voxel sizes (mm): the input of :func:`atlas.metrics.jacobian_determinant`."""
    img = nib.load(str(path))
    u_lps = np.asarray(img.dataobj, dtype=np.float64).reshape(*img.shape[:3], 3)
    zooms, directions = _axes(img.affine)
    return (u_lps * [-1.0, -1.0, 1.0]) @ directions, zooms


def write_warp(displacement_axes_vox, affine, path) -> Path:
    """Write a ``(X, Y, Z, 3)`` voxel displacement (channel ``i`` along array axis ``i``)
    as an ANTs displacement field (mm, LPS components) on the grid ``affine``."""
    u_ras = np.asarray(displacement_axes_vox, dtype=np.float64) @ affine[:3, :3].T
    u_lps = u_ras * [-1.0, -1.0, 1.0]
    return write_nifti(u_lps, affine, u_lps.shape[:3], path, intent="vector")


def subject_measures(template, image, warped, warp, mask) -> dict:
    """Registration measures of one subject, shared by both methods.

    ``template``, ``image`` (affinely normalised, before deformable registration),
    ``warped`` and ``mask`` are arrays on the template grid; ``warp`` is the path of the
    displacement field resampling the image into template space (template grid).
    """
    u, zooms = read_warp(warp)
    det = metrics.jacobian_determinant(u, zooms)
    return {
        "ncc_unregistered": metrics.ncc(template, image, mask),
        "ncc": metrics.ncc(template, warped, mask),
        "template_sharpness": metrics.sharpness(template, zooms, mask),
        "mean_displacement_mm": float(np.linalg.norm(u, axis=-1)[mask].mean()),
        "pct_nonpositive_jacobian": metrics.jacobian_stats(det, mask)["pct_nonpositive"],
    }


def _load(path, dtype=np.float32) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=dtype)


def _labels_in_reference(labels, affine, reference):
    """Native labels -> reference grid through the normalisation affine (nearest)."""
    import ants

    ref = ants.image_read(str(reference))
    out = ants.apply_transforms(
        ref, ants.image_read(str(labels)), [str(affine)], interpolator="nearestNeighbor"
    )
    return out.numpy().round().astype(np.int32)


# --- jobs --------------------------------------------------------------------------
def load_image_cohort(images, ages, subjects, sex=None) -> Cohort:
    """:class:`Cohort` from NIfTI files on one grid (the normalised images of a run).

    Raises
    ------
    ValueError if the images do not share shape and affine.
    """
    first = nib.load(str(images[0]))
    arrays = []
    for path in images:
        img = nib.load(str(path))
        if img.shape[:3] != first.shape[:3] or not np.allclose(img.affine, first.affine, atol=1e-4):
            raise ValueError(f"{path} is not on the grid of {images[0]}")
        arrays.append(np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3]))
    codes = None
    if sex is not None:
        codes = np.array([SEX_CODES.get(str(s), np.nan) for s in sex])
        codes = None if np.isnan(codes).any() else codes
    return Cohort(
        images=np.stack(arrays),
        ages=np.asarray(ages, dtype=np.float64),
        affine=first.affine,
        disk_shape=first.shape[:3],
        sex=codes,
        subjects=list(subjects),
    )


def train_atlas(
    out_model,
    out_losses,
    out_loss_curve,
    hyper,
    checkpoint_dir,
    device,
    age_units,
    threads=1,
    images=(),
    ages=(),
    sex=None,
    subjects=(),
    source="cohort",
    image_suffix="desc-norm_T1w",
    label_suffix=None,
    **_,
):
    """Train (or resume) the conditional atlas and publish model, losses and loss curve.

    ``source == "cohort"``: ``images`` (normalised NIfTI files) with ``ages`` (in
    ``age_units``), ``sex`` (F/M) and ``subjects``; otherwise ``source`` is a pre-aligned
    BIDS dataset read by :func:`atlas.learn.load_bids_cohort`. ``hyper`` holds keys of
    :data:`atlas.learn.DEFAULT_CONFIG`; checkpoints live in ``checkpoint_dir``, which a
    failed or killed job leaves in place, so rerunning the rule resumes from the last
    checkpoint (raising ``steps`` continues a finished training).
    """
    _set_threads(threads)
    if source == "cohort":
        cohort = load_image_cohort(images, to_years(ages, age_units), subjects, sex)
    else:
        wants_labels = label_suffix if hyper.get("dice_weight", 0) > 0 else None
        cohort = load_bids_cohort(source, image_suffix, wants_labels)
        cohort.ages = to_years(cohort.ages, age_units)
    log.info(
        "training on %d images %s, ages %.3g-%.3g y, device %s",
        len(cohort.images),
        cohort.shape,
        cohort.ages.min(),
        cohort.ages.max(),
        device,
    )
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hyper.items()}
    config["device"] = device
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"config learned.train: unknown keys {sorted(unknown)}")
    try:
        result = train(config, cohort, checkpoint_dir)
    except ValueError as exc:
        if "was trained" in str(exc):
            raise ValueError(
                f"{exc}. Delete {checkpoint_dir} to train from scratch with the new settings"
            ) from exc
        raise
    io.copy_file(result["model"], out_model)
    io.copy_file(result["losses"], out_losses)
    io.copy_file(result["loss_curve"], out_loss_curve)
    log.info("final loss %.4g", result["final_loss"])


def fit_age_affines(affines, out_aarn, out_table, ages, sample_ages, age_units, seed=0, **_):
    """Fit the AARN to the subjects' normalisation affines; tabulate it at ``sample_ages``.

    The table has, per sampled age (configured units), the isotropic scale factor
    ``exp(mean log-scale)``, the three log-scales and the translation (mm, RAS).
    """
    mats = np.stack([read_normalisation_affine(p) for p in affines])
    years = to_years(ages, age_units)
    model = fit_aarn(years, mats, seed=seed)
    with io.atomic_path(out_aarn) as tmp:
        model.save(tmp)
    at = to_years(sample_ages, age_units)
    params = model.affine_parameters(at)
    rows = pd.DataFrame({"age": list(sample_ages), "scale": mean_scale(model, at)})
    for i, axis in enumerate("xyz"):
        rows[f"log_scale_{axis}"] = params["log_scale"][:, i]
    for i, axis in enumerate("xyz"):
        rows[f"translation_{axis}_mm"] = params["translation"][:, i]
    io.write_tsv(rows, out_table)


def sample_atlases(
    model,
    out_description,
    out_montage,
    out_atlases,
    ages,
    age_units,
    name,
    res_label,
    device="cpu",
    aarn=None,
    out_scaled=(),
    threads=1,
    **_,
):
    """Atlases at ``ages`` as a TemplateFlow template, plus the montage PNG.

    ``out_atlases[k-1]`` is ``.../cohort-<k>/tpl-<name>_cohort-<k>_res-<res>_T1w.nii.gz``
    on the training grid (with learned labels, ``_dseg`` files follow each). With an
    ``aarn``, ``out_scaled[k-1]`` holds the same voxels with the header affine
    ``M(age) @ affine``: the atlas returned to the mean head size and position at that age.
    """
    _set_threads(threads)
    years = [float(a) for a in to_years(ages, age_units)]
    out_atlases = [Path(p) for p in out_atlases]
    root = Path(out_description).parent
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".learned-", dir=root.parent))
    try:
        built = export_templateflow(model, years, tmp, name, res=res_label, device=device)
        for src in sorted(built.rglob("*.nii.gz")):
            dst = root / src.relative_to(built)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        desc = json.loads((built / "template_description.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    missing = [p for p in out_atlases if not p.exists()]
    if missing:
        raise RuntimeError(f"export did not write {missing}")
    for k, age in enumerate(ages, start=1):
        desc["cohort"][str(k)] = {"age": [float(age)], "units": age_units}
    atlas = LearnedAtlas(model)
    desc.update(
        {
            "TemplateFlowVersion": "1.0.0",
            "ReferencesAndLinks": [
                "Dalca et al. 2019, NeurIPS (conditional deformable templates)",
                "Dalca et al. 2019, Medical Image Analysis 57:226 (diffeomorphic VoxelMorph)",
            ],
            "training_age_range_years": atlas.meta["age_range"],
            "training": {k: v for k, v in atlas.config.items() if k != "device"},
        }
    )
    if aarn is not None:
        net = AARN.load(aarn)
        desc["age_scaled"] = "desc-agescaled: header affine M(age) @ affine from the AARN"
        for src, dst, age in zip(out_atlases, out_scaled, years, strict=True):
            img = nib.load(str(src))
            with torch.no_grad():
                m = net([age])[0].double().numpy()
            scaled = nib.Nifti1Image(np.asarray(img.dataobj), m @ img.affine, img.header)
            scaled.set_sform(m @ img.affine, code=img.get_sform(coded=True)[1] or 2)
            scaled.set_qform(m @ img.affine, code=img.get_qform(coded=True)[1] or 2)
            with io.atomic_path(dst) as t:
                nib.save(scaled, str(t))
    io.write_json(desc, out_description)
    with io.atomic_path(out_montage) as t:
        montage(atlas, years, t)


def register_subject(
    model,
    image,
    mask,
    out_warped,
    out_warp,
    out_inverse_warp,
    out_row,
    img,
    age,
    age_units,
    device="cpu",
    threads=1,
    labels=None,
    normalisation=None,
    reference=None,
    out_labels=None,
    **_,
):
    """Register one normalised image to the learned atlas of its age (one forward pass).

    Writes the image warped into atlas space, the warp resampling it into atlas space
    (``out_warp``, atlas grid) and its inverse (``out_inverse_warp``, resampling the atlas
    into the normalised image), and a one-row table of :func:`subject_measures` plus the
    forward-pass time. With ``labels`` (native label map, its ``normalisation`` affine and
    the ``reference`` grid) the labels carried into atlas space go to ``out_labels``.
    """
    _set_threads(threads)
    atlas = LearnedAtlas(model, device)
    years = float(to_years(age, age_units))
    data = _load(image)
    lab = None if labels is None else _labels_in_reference(labels, normalisation, reference)
    atlas.register(data, years)  # warm-up: first-call allocations are not the method's time
    reg = atlas.register(data, years, labels=lab)
    atlas.write(reg.warped, out_warped)
    write_warp(reg.inverse_displacement, atlas.affine, out_warp)
    write_warp(reg.displacement, atlas.affine, out_inverse_warp)
    if out_labels is not None:
        atlas.write(reg.warped_labels, out_labels, np.int32)
    m = _load(mask) > 0
    template = reg.atlas.reshape(data.shape)
    row = {"img": img, "method": "learned", "age": age, "seconds": reg.seconds}
    row |= subject_measures(template, data, reg.warped.reshape(data.shape), out_warp, m)
    io.write_tsv(pd.DataFrame([row]), out_row)


def register_iterative(
    template,
    image,
    mask,
    out_warp,
    out_row,
    img,
    age,
    params,
    labels=None,
    normalisation=None,
    reference=None,
    out_labels=None,
    **_,
):
    """Register one normalised image to the iterative template with the template's own
    pairwise registration (ANTs affine + SyN, ``params``), timed, measured like
    :func:`register_subject` (deformable warp on the template grid)."""
    import ants

    from ..registration import register

    fixed = ants.image_read(str(template))
    moving = ants.image_read(str(image))
    tmp = Path(tempfile.mkdtemp(prefix="atlas-learned-eval-"))
    try:
        tic = time.perf_counter()
        warped = register(
            fixed,
            moving,
            dict(params, transform="SyN"),
            tmp / "affine.mat",
            tmp / "warp.nii.gz",
            tmp / "inverse.nii.gz",
        )
        seconds = time.perf_counter() - tic
        io.copy_file(tmp / "warp.nii.gz", out_warp)
        if out_labels is not None:
            lab = _labels_in_reference(labels, normalisation, reference)
            ref = ants.image_read(str(reference))
            moved = ants.apply_transforms(
                fixed,
                ref.new_image_like(lab.astype(np.float32)),
                [str(tmp / "warp.nii.gz"), str(tmp / "affine.mat")],
                interpolator="nearestNeighbor",
            )
            io.write_image(moved.astype("uint32"), out_labels)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = _load(mask) > 0
    row = {"img": img, "method": "iterative", "age": age, "seconds": seconds}
    row |= subject_measures(fixed.numpy(), moving.numpy(), warped.numpy(), out_warp, m)
    io.write_tsv(pd.DataFrame([row]), out_row)


def _centrality(warps, mask) -> float:
    """Mean over the mask of the magnitude of the subjects' mean displacement (mm)."""
    total = None
    for path in warps:
        u, _ = read_warp(path)
        total = u if total is None else total + u
    return float(np.linalg.norm(total / len(warps), axis=-1)[mask].mean())


def _pairwise_dice(paths) -> float:
    maps = [_load(p, np.int32) for p in paths]
    scores = [metrics.mean_dice(a, b) for a, b in combinations(maps, 2)]
    return float(np.mean(scores)) if scores else float("nan")


def evaluation(
    mask,
    learned_rows,
    iterative_rows,
    learned_warps,
    iterative_warps,
    out_table,
    out_subjects,
    learned_name,
    iterative_name,
    learned_labels=(),
    iterative_labels=(),
    **_,
):
    """Learned vs iterative template on the same cohort: one row per method.

    Columns: ``method``, ``template``, ``n_subjects``, ``sharpness`` (mean gradient
    magnitude of the template each subject is registered to, per mm), ``centrality_mm``
    (mean over the brain mask of the magnitude of the subjects' mean displacement),
    ``mean_displacement_mm``, ``pct_nonpositive_jacobian``, ``ncc_unregistered`` and
    ``ncc`` (subject-template NCC before / after the deformable registration),
    ``seconds_per_subject`` (registration time: one forward pass for the learned atlas,
    ANTs affine + SyN for the iterative template), and ``dice`` (mean pairwise Dice of
    the subjects' labels in template space) when label maps were given. ``out_subjects``
    has the per-subject rows.
    """
    m = _load(mask) > 0
    subj = pd.concat(
        [pd.read_csv(p, sep="\t") for p in [*learned_rows, *iterative_rows]], ignore_index=True
    )
    rows = []
    for method, name, warps, labels in (
        ("learned", learned_name, learned_warps, learned_labels),
        ("iterative", iterative_name, iterative_warps, iterative_labels),
    ):
        s = subj[subj.method == method]
        row = {
            "method": method,
            "template": name,
            "n_subjects": len(s),
            "sharpness": s.template_sharpness.mean(),
            "centrality_mm": _centrality(warps, m),
            "mean_displacement_mm": s.mean_displacement_mm.mean(),
            "pct_nonpositive_jacobian": s.pct_nonpositive_jacobian.mean(),
            "ncc_unregistered": s.ncc_unregistered.mean(),
            "ncc": s.ncc.mean(),
            "seconds_per_subject": s.seconds.mean(),
        }
        if len(labels):
            row["dice"] = _pairwise_dice(labels)
        rows.append(row)
    io.write_tsv(pd.DataFrame(rows), out_table)
    io.write_tsv(subj, out_subjects)
