"""Snakemake job functions of the learned age-conditional atlas (``workflow/rules/learned.smk``).

Each function reads its input files, calls the methods of :mod:`atlas.learn` and writes its
outputs atomically with :mod:`atlas.io`. Rules call them through
``workflow/scripts/run.py`` with ``params.step = "learn.<function>"``; arguments are
keyword-only and named as the rule's inputs, outputs (``out_*``) and params, so an unknown
or misspelled one is an error. They are also usable without Snakemake.

Conventions
-----------
* Ages reach the methods in **years**; ``age_units: months`` divides the configured and
  participant ages by 12 (:func:`atlas.learn.data.to_years`), and the TemplateFlow
  description reports the cohorts back in the configured unit.
* Normalisation affines (``*_from-T1w_to-<ref>_mode-image_xfm.mat``) are ANTs affines that
  map reference-space points to subject points; :func:`atlas.registration.read_affine_ras`
  gives the homogeneous RAS matrices that :func:`atlas.learn.fit_aarn` expects.
* Written warps are ANTs-compatible displacement fields (:func:`atlas.registration.write_warp`)
  on the grid of the image they resample *into*: ``ants.apply_transforms(fixed=atlas,
  moving=image, transformlist=[from-<ref>_to-<atlas> warp])`` reproduces the warped image.
* Evaluation measures are computed by the same code for both methods, from the same inputs
  (the affinely normalised images on the reference grid), on the same grid and brain mask
  (:mod:`atlas.learn.evaluation`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from .. import io
from ..registration import read_affine_ras, read_warp, write_warp
from ..segmentation.labels import TISSUE_CLASSES
from . import evaluation
from .aarn import AARN, fit_aarn, mean_scale
from .data import load_bids_cohort, load_cohort, to_years
from .inference import (
    LearnedAtlas,
    age_scaled_affine,
    montage_figure,
    templateflow_description,
    tissue_table,
    write_tissues,
)
from .training import train

log = logging.getLogger(__name__)

__all__ = [
    "atropos_tissues",
    "train_atlas",
    "fit_age_affines",
    "sample_atlases",
    "register_subject",
    "register_iterative",
    "evaluate",
]

REFERENCES = [
    "Dalca et al. 2019, NeurIPS (conditional deformable templates)",
    "Dalca et al. 2019, Medical Image Analysis 57:226 (diffeomorphic VoxelMorph)",
]


def _set_threads(threads) -> None:
    torch.set_num_threads(max(1, int(threads or 1)))


def _load(path, dtype=np.float32) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=dtype)


def _labels_in_reference(labels, normalisation, reference) -> np.ndarray:
    """Native labels (path) -> reference grid (path) through the normalisation affine
    (nearest neighbour); int32 array on the reference grid."""
    moved = _carry_labels(io.read_image(labels), normalisation, io.read_image(reference))
    return moved.numpy().round().astype(np.int32)


def _carry_labels(labels, normalisation, reference, interpolator="nearestNeighbor"):
    """A label map in an image's own space (ANTs image) resampled onto the ``reference``
    grid (ANTs image) through that image's normalisation affine (ANTs ``.mat`` path, reference
    points -> image points). ``interpolator``: ``nearestNeighbor`` or ``genericLabel`` (each
    label's indicator interpolated linearly, the largest wins: smoother borders)."""
    import ants

    return ants.apply_transforms(reference, labels, [str(normalisation)], interpolator=interpolator)


def train_atlas(
    *,
    out_model,
    out_losses,
    out_loss_curve,
    hyper,
    checkpoint_dir,
    device,
    age_units,
    threads,
    images=None,
    ages=None,
    sex=None,
    subjects=None,
    tissues=None,
    participants=None,
    image_suffix=None,
    label_suffix=None,
    tissue_suffix=None,
):
    """Train (or resume) the conditional atlas and publish model, losses and loss curve.

    Either ``images`` (this run's normalised NIfTI files) with ``ages`` (in ``age_units``),
    ``sex`` (F/M), ``subjects`` and, for a tissue-guided atlas, ``tissues`` (one Atropos
    tissue map per image, same order: :func:`atropos_tissues`); or ``participants``, the
    ``participants.tsv`` of a BIDS dataset already aligned to one grid, read by
    :func:`atlas.learn.load_bids_cohort` with ``image_suffix``, ``label_suffix`` (None: no
    labels) and ``tissue_suffix`` (None: no tissue maps; else grouped into tissues by the
    dataset's label table). ``hyper`` holds keys of :data:`atlas.learn.DEFAULT_CONFIG`;
    checkpoints live in ``checkpoint_dir``, which a failed or killed job leaves in place, so
    rerunning the rule resumes from the last checkpoint (raising ``steps`` continues a
    finished training).

    Raises
    ------
    ValueError unless exactly one of ``images`` and ``participants`` is given, with
    ``tissues`` but no ``images``, or when the checkpoint was trained with other settings (the
    message says to delete it).
    """
    _set_threads(threads)
    if (images is None) == (participants is None):
        raise ValueError("train_atlas needs either images (cohort) or participants (dataset)")
    if tissues is not None and images is None:
        raise ValueError("train_atlas: tissues are the tissue maps of images (cohort source)")
    if images is not None:
        names = TISSUE_CLASSES if tissues is not None else ()
        years = to_years(ages, age_units)
        cohort = load_cohort(images, years, sex, subjects, tissues=tissues, tissue_names=names)
    else:
        root = Path(participants).parent
        cohort = load_bids_cohort(root, image_suffix, label_suffix, tissue_suffix=tissue_suffix)
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
    try:
        result = train(config | {"device": device}, cohort, checkpoint_dir)
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


def atropos_tissues(*, image, mask, normalisation, reference, out_dseg, mrf=0.1):
    """Tissue map of one training image of a cohort source (``learned.tissue_weight > 0``).

    Three-class Atropos (Avants et al. 2011, Neuroinformatics 9:381), k-means initialised,
    of the preprocessed image inside its brain mask, in the image's own space
    (:func:`atlas.segmentation.tissue.atropos_tissue`, the segmentation stage's method),
    carried onto the reference grid of the normalised training image by its normalisation
    affine with ANTs' ``genericLabel`` interpolation. The classes are ordered by mean
    intensity (CSF < GM < WM on a T1w brain); in T1w scans of infants younger than about
    8 months, whose white matter is darker than or as bright as grey matter, the order is
    not the tissues' and the map is an intensity-class map.

    Parameters
    ----------
    image : preprocessed skull-stripped T1w (``<img>_desc-preproc_T1w``).
    mask : its brain mask (``<img>_desc-brain_mask``, same grid).
    normalisation : ANTs affine ``<img>_from-T1w_to-<ref>_mode-image_xfm.mat``.
    reference : reference image (grid of the normalised images).
    out_dseg : uint8 NIfTI on the reference grid: 0 background, 1 CSF, 2 GM, 3 WM
        (:data:`atlas.segmentation.labels.TISSUE_CLASSES` order), read by
        :func:`train_atlas` as ``tissues``.
    mrf : Atropos Markov random field weight (higher is smoother).

    Raises
    ------
    ValueError if the image and the mask are not on one grid.
    """
    from ..segmentation.tissue import atropos_tissue

    subject = io.read_image(image)
    dseg, _ = atropos_tissue(subject, io.read_image(mask), mrf=mrf)
    native = subject.new_image_like(dseg.astype(np.float32))
    moved = _carry_labels(native, normalisation, io.read_image(reference), "genericLabel")
    io.write_image(moved.astype("uint8"), out_dseg)


def fit_age_affines(*, affines, out_aarn, out_table, ages, sample_ages, age_units, seed):
    """Fit the AARN to the subjects' normalisation affines; tabulate it at ``sample_ages``.

    The table has, per sampled age (configured units), the isotropic scale factor
    ``exp(mean log-scale)``, the three log-scales and the translation (mm, RAS).
    """
    mats = np.stack([read_affine_ras(p) for p in affines])
    model = fit_aarn(to_years(ages, age_units), mats, seed=seed)
    at = to_years(sample_ages, age_units)
    params = model.affine_parameters(at)
    rows = pd.DataFrame({"age": list(sample_ages), "scale": mean_scale(model, at)})
    for i, axis in enumerate("xyz"):
        rows[f"log_scale_{axis}"] = params["log_scale"][:, i]
    for i, axis in enumerate("xyz"):
        rows[f"translation_{axis}_mm"] = params["translation"][:, i]
    model.save(out_aarn)
    io.write_tsv(rows, out_table)


def sample_atlases(
    *,
    model,
    out_description,
    out_montage,
    out_atlases,
    ages,
    age_units,
    name,
    res_label,
    threads,
    device="cpu",
    aarn=None,
    out_scaled=(),
    out_labels=(),
    out_probseg=(),
    out_tissue_dseg=(),
    out_tissue_table=None,
):
    """Atlases at ``ages`` as a TemplateFlow template, plus the montage PNG.

    ``out_atlases[k-1]`` is ``.../cohort-<k>/tpl-<name>_cohort-<k>_res-<res>_T1w.nii.gz`` on
    the training grid; ``out_labels[k-1]`` its learned label map (models trained with
    labels). With an ``aarn``, ``out_scaled[k-1]`` holds the same voxels with the header
    affine ``M(age) @ affine``: the atlas returned to the mean head size and position at
    that age. For a tissue-guided atlas, ``out_probseg`` holds one
    ``..._label-<tissue>_probseg`` per age and tissue (age-major, tissues in model order),
    ``out_tissue_dseg[k-1]`` the argmax tissue map (``_dseg``) and ``out_tissue_table`` its
    ``_dseg.tsv``; the montage then shows intensity and tissue rows side by side.
    Everything is computed before the first file is written.

    Raises
    ------
    ValueError if ``out_atlases``, ``out_scaled``, ``out_labels`` or the tissue outputs do
    not match the ages and the model (labels or tissues learned or not, AARN given or not).
    """
    _set_threads(threads)
    years = [float(a) for a in to_years(ages, age_units)]
    atlas = LearnedAtlas(model, device)
    images, labels = atlas.templates(years)
    net = None if aarn is None else AARN.load(aarn)
    tissues = atlas.tissue_maps(years)
    n_tissues = len(atlas.tissue_names)
    want = (len(years), 0 if net is None else len(years), 0 if labels is None else len(years))
    want += (len(years) * n_tissues, len(years) if n_tissues else 0, bool(n_tissues))
    got = (len(out_atlases), len(out_scaled), len(out_labels), len(out_probseg))
    got += (len(out_tissue_dseg), out_tissue_table is not None)
    if got != want:
        raise ValueError(
            f"{len(years)} ages need {want} (atlases, age-scaled, label maps, probseg, tissue "
            f"dseg, tissue table) outputs, got {got}"
        )
    scaled = [age_scaled_affine(net, age, atlas.affine) for age in years] if net is not None else []
    desc = templateflow_description(atlas, years, name, res_label)
    for k, age in enumerate(ages, start=1):
        desc["cohort"][str(k)] = {"age": [float(age)], "units": age_units}
    desc |= {
        "TemplateFlowVersion": "1.0.0",
        "ReferencesAndLinks": REFERENCES,
        "training_age_range_years": atlas.meta["age_range"],
        "training": {k: v for k, v in atlas.config.items() if k != "device"},
    }
    if net is not None:
        desc["age_scaled"] = "desc-agescaled: header affine M(age) @ affine from the AARN"
    unit = {"years": "y", "months": "mo"}[age_units]
    figure = montage_figure(atlas, images, tissues, [float(a) for a in ages], unit)

    for k, path in enumerate(out_atlases):
        atlas.write(images[k], path)
    for k, path in enumerate(out_labels):
        atlas.write(labels[k], path, np.int16)
    for k, path in enumerate(out_scaled):
        atlas.write(images[k], path, affine=scaled[k])
    for k, path in enumerate(out_tissue_dseg):
        probseg = out_probseg[k * n_tissues : (k + 1) * n_tissues]
        write_tissues(atlas, tissues[k], {"probseg": probseg, "dseg": path})
    if n_tissues:
        io.write_tsv(tissue_table(atlas.tissue_names), out_tissue_table)
    io.write_json(desc, out_description)
    io.save_figure(figure, out_montage)


def register_subject(
    *,
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
    threads,
    device="cpu",
    labels=None,
    normalisation=None,
    reference=None,
    out_labels=None,
):
    """Register one normalised image to the learned atlas of its age (one forward pass).

    Writes the image warped into atlas space, the warp resampling it into atlas space
    (``out_warp``, atlas grid) and its inverse (``out_inverse_warp``, resampling the atlas
    into the normalised image), and a one-row table of
    :func:`atlas.learn.evaluation.subject_measures` plus the forward-pass time. With
    ``labels`` (native label map, its ``normalisation`` affine and the ``reference`` grid)
    the labels carried into atlas space go to ``out_labels``.
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
    u, zooms = read_warp(out_warp)  # the measures see the field as written (float32, mm)
    template, warped = reg.atlas.reshape(data.shape), reg.warped.reshape(data.shape)
    row = {"img": img, "method": "learned", "age": age, "seconds": reg.seconds}
    row |= evaluation.subject_measures(template, data, warped, u, zooms, _load(mask) > 0)
    io.write_tsv(pd.DataFrame([row]), out_row)


def register_iterative(
    *,
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
):
    """Register one normalised image to the iterative template with the template's own
    pairwise registration (ANTs affine + SyN with the settings ``params``), timed,
    measured like :func:`register_subject` (deformable warp on the template grid).
    Transforms go to a job-private temporary folder; outputs are written last."""
    import ants

    from ..registration import register

    fixed = io.read_image(template)
    moving = io.read_image(image)
    with tempfile.TemporaryDirectory(prefix="atlas-learned-eval-") as tmp:
        tmp = Path(tmp)
        tic = time.perf_counter()
        syn = dict(params, transform="SyN")
        warped = register(
            fixed, moving, syn, tmp / "affine.mat", tmp / "warp.nii.gz", tmp / "inverse.nii.gz"
        )
        seconds = time.perf_counter() - tic
        moved = None
        if out_labels is not None:
            lab = _labels_in_reference(labels, normalisation, reference)
            ref = io.read_image(reference)
            moved = ants.apply_transforms(
                fixed,
                ref.new_image_like(lab.astype(np.float32)),
                [str(tmp / "warp.nii.gz"), str(tmp / "affine.mat")],
                interpolator="nearestNeighbor",
            )
        u, zooms = read_warp(tmp / "warp.nii.gz")
        row = {"img": img, "method": "iterative", "age": age, "seconds": seconds}
        row |= evaluation.subject_measures(
            fixed.numpy(), moving.numpy(), warped.numpy(), u, zooms, _load(mask) > 0
        )
        io.copy_file(tmp / "warp.nii.gz", out_warp)
    if moved is not None:
        io.write_image(moved.astype("uint32"), out_labels)
    io.write_tsv(pd.DataFrame([row]), out_row)


def evaluate(
    *,
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
):
    """Learned vs iterative template on the same cohort: one row per method.

    Columns (:func:`atlas.learn.evaluation.method_summary`): ``method``, ``template``,
    ``n_subjects``, ``sharpness`` (mean gradient magnitude of the template each subject is
    registered to, per mm, in the subjects' intensity units), ``sharpness_raw`` (the same in
    the template's units), ``centrality_mm`` (mean over the brain mask of the magnitude of
    the subjects' mean displacement), ``mean_displacement_mm``, ``pct_nonpositive_jacobian``,
    ``ncc_unregistered`` and ``ncc`` (subject-template NCC before / after the deformable
    registration), ``seconds_per_subject`` (registration time: one forward pass for the
    learned atlas, ANTs affine + SyN for the iterative template), and ``dice`` (mean
    pairwise Dice of the subjects' labels in template space) when label maps were given.
    ``out_subjects`` has the per-subject rows.
    """
    m = _load(mask) > 0
    rows = [pd.read_csv(p, sep="\t") for p in [*learned_rows, *iterative_rows]]
    subjects = pd.concat(rows, ignore_index=True)
    table = []
    for method, name, warps, labels in (
        ("learned", learned_name, learned_warps, learned_labels),
        ("iterative", iterative_name, iterative_warps, iterative_labels),
    ):
        centrality = evaluation.centrality((read_warp(p)[0] for p in warps), m)
        row = evaluation.method_summary(subjects, method, name, centrality)
        if len(labels):
            row["dice"] = evaluation.pairwise_dice([_load(p, np.int32) for p in labels])
        table.append(row)
    io.write_tsv(pd.DataFrame(table), out_table)
    io.write_tsv(subjects, out_subjects)
