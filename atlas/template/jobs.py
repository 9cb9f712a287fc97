"""Job functions of the template rules (``workflow/rules/template.smk``): one per Snakemake
job. Each reads its input files, calls :mod:`atlas.template.methods`,
:mod:`atlas.registration` and :mod:`atlas.metrics`, and writes its outputs atomically.
The per-image registration job of each iteration is
:func:`atlas.registration.jobs.register_to_template` (it never loads ANTs for Greedy).

ANTs, the preprocessing package and the figures (matplotlib) are imported by the jobs that
use them: the join jobs of the iterations (:func:`init`, :func:`update`) are on the
critical path of every template and load neither (2.5 CPU s of ``import ants`` each)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import io, metrics
from ..provenance import software_versions
from ..registration.transforms import forward_transform_sitk, jacobian_determinant_sitk
from .convergence import evaluate_convergence
from .methods import (
    average_images,
    shape_update,
    sharpen,
    template_change,
    voxel_variance,
    voxels,
)

if TYPE_CHECKING:
    import ants

log = logging.getLogger(__name__)


def init(*, images, out_template, average):
    """template_0: average of the affinely normalised images (``average``: mean, median,
    normalized_mean; :func:`atlas.template.methods.average_images`)."""
    io.write_sitk(average_images((io.read_sitk(p) for p in images), average), out_template)


def update(
    *,
    template,
    warped,
    affines,
    warps,
    out_template,
    out_row,
    iteration,
    stage,
    average,
    gradient_step,
    do_sharpen,
):
    """Average, shape update and sharpening of iteration k, plus its convergence row.

    Measures are taken inside the foreground of template_k: the template takes the
    cohort's mean size, so the reference's brain mask no longer fits it. SimpleITK
    throughout (:mod:`atlas.template.methods`): the join job of every iteration, on the
    critical path, does not load ANTs.
    """
    old = io.read_sitk(template)
    old_arr = voxels(old)
    m = metrics.foreground(old_arr)
    nccs = []

    def read_warped():  # one warped image in memory at a time (except for the median)
        for path in warped:
            image = io.read_sitk(path)
            nccs.append(metrics.ncc(voxels(image), old_arr, m))
            yield image

    avg = average_images(read_warped(), average)
    # a generator: the mean field is accumulated one subject's field at a time
    fields = (io.read_sitk(p, vector=True) for p in warps) if warps else None
    new, magnitude = shape_update(avg, affines, fields, gradient_step)
    if do_sharpen:
        new = sharpen(new)
    row = {
        "iteration": int(iteration),
        "stage": stage,
        "mean_warp_mm": float(magnitude[m].mean()) if magnitude is not None else np.nan,
        "max_warp_mm": float(magnitude[m].max()) if magnitude is not None else np.nan,
        "template_change": template_change(new, old, m),
        "mean_ncc": float(np.mean(nccs)),
    }
    table = pd.DataFrame([row])
    io.write_all([(io.write_sitk, new, out_template), (io.write_tsv, table, out_row)])


def subject_final(
    *,
    template,
    affine,
    warp,
    inverse_warp,
    image,
    mask,
    out_affine,
    out_warp,
    out_inverse_warp,
    out_warped,
    out_mask,
    out_row,
    img,
):
    """Copy one subject's final transforms under BIDS names, resample its image and brain
    mask into the template (linear; the mask with ITK's label-wise linear interpolator, ANTs'
    ``genericLabel``) and measure the registration inside the template foreground. SimpleITK
    only (``import ants`` is 2.5 CPU s a job): the resampling equals ``ants.apply_transforms``
    and the Jacobian ANTs' (``tests/unit/test_registration_transforms.py``)."""
    import SimpleITK as sitk

    tpl = io.read_sitk(template)
    tpl_array = sitk.GetArrayFromImage(tpl)
    m = metrics.foreground(tpl_array)
    transform = forward_transform_sitk(affine, warp)
    moved = sitk.Resample(io.read_sitk(image), tpl, transform, sitk.sitkLinear, 0.0)
    moved_mask = sitk.Resample(io.read_sitk(mask), tpl, transform, sitk.sitkLabelLinear, 0.0)
    moved_array = sitk.GetArrayFromImage(moved)
    det = jacobian_determinant_sitk(warp)
    jac = metrics.jacobian_stats(det, m)
    row = {
        "img": img,
        "ncc": metrics.ncc(moved_array, tpl_array, m),
        "mutual_information": metrics.mutual_information(moved_array, tpl_array, m),
        "pct_nonpositive_jacobian": jac["pct_nonpositive"],
        "min_jacobian": jac["min"],
        "std_log_jacobian": jac["std_log"],
    }
    io.write_all(
        [
            (io.copy_file, affine, out_affine),
            (io.copy_file, warp, out_warp),
            (io.copy_file, inverse_warp, out_inverse_warp),
            (io.write_sitk, moved, out_warped),
            (io.write_sitk, moved_mask, out_mask),
            (io.write_tsv, pd.DataFrame([row]), out_row),
        ]
    )


def registration_figure(*, image, template, out_figure, img):
    """Registration view of one image (``img``, its id, as the title): ``image`` (the
    image resampled into the final template) with the edges of ``template`` drawn over it
    (:func:`atlas.qc.registration_overlay`, nilearn), written to ``out_figure`` (PNG)."""
    from .. import qc

    qc.registration_overlay(image, template, out_figure, title=img)


def template_description(
    final: ants.ANTsImage, participants, config, res_label, convergence: dict | None = None
) -> dict:
    """TemplateFlow ``template_description.json`` of the population template: identifier,
    grid of resolution ``res_label``, cohort size and age range (years), parameters,
    software versions and, when given, ``convergence``: the verdict of
    :func:`atlas.template.convergence.evaluate_convergence` (criterion, values, met)."""
    ages = pd.to_numeric(participants.age, errors="coerce")
    tcfg = config["template"]
    return {
        "Identifier": tcfg["name"],
        "Name": f"atlas population template {tcfg['name']}",
        "Authors": [],
        "ReferencesAndLinks": ["Avants et al. 2010, NeuroImage 49:2457 (SyGN)"],
        "TemplateFlowVersion": "1.0.0",
        "res": {
            res_label: {
                "origin": list(final.origin),
                "shape": list(final.shape),
                "zooms": list(final.spacing),
            }
        },
        "cohort_size": len(participants),
        "age_range_years": [float(ages.min()), float(ages.max())] if ages.notna().any() else None,
        "age_units": "years",
        "reference": config["reference"],
        "parameters": {k: config[k] for k in ("resolution", "skull_strip", "seed")}
        | {"template": tcfg},
        "software": software_versions(),
    } | ({"convergence": convergence} if convergence is not None else {})


def final(
    *,
    templates,
    masks,
    subject_rows,
    convergence_rows,
    warped,
    participants,
    config,
    res_label,
    out_template,
    out_mask,
    out_description,
    out_convergence,
    out_subjects,
    out_variance,
    out_fig_mosaic,
    out_fig_convergence,
    out_fig_subjects,
    convergence=None,
):
    """Write the TemplateFlow folder, group tables, variance map and figures.

    The brain mask holds the voxels inside at least half of the subjects' warped brain
    masks; ``participants`` is the table of :func:`atlas.bids.find_t1w`. ``convergence``
    is the criterion of config ``template.convergence`` (None: the default,
    :data:`atlas.template.convergence.DEFAULT_CRITERION`); its verdict on the convergence
    table goes to ``template_description.json`` (``convergence``), to the job log (one
    line: met or not, and what to change) and onto the convergence figure.
    """
    tpl = io.read_image(templates[-1])
    mask_mean = np.mean([io.read_image(p).numpy() > 0 for p in masks], axis=0)
    conv = pd.concat([pd.read_csv(p, sep="\t") for p in convergence_rows], ignore_index=True)
    subj = pd.concat([pd.read_csv(p, sep="\t") for p in subject_rows], ignore_index=True)
    subj = participants[["img", "subject", "session", "age", "sex"]].merge(subj, on="img")
    variance = voxel_variance(io.read_image(p).numpy() for p in warped)  # one at a time
    verdict = evaluate_convergence(conv, convergence)
    (log.info if verdict["met"] else log.warning)(verdict["message"])
    desc = template_description(tpl, participants, config, res_label, verdict)
    io.write_all(
        [
            (io.write_image, tpl, out_template),
            (io.write_image, tpl.new_image_like((mask_mean >= 0.5).astype("float32")), out_mask),
            (io.write_tsv, conv, out_convergence),
            (io.write_tsv, subj, out_subjects),
            (io.write_image, tpl.new_image_like(variance.astype("float32")), out_variance),
            (io.write_json, desc, out_description),
        ]
    )
    from .. import qc

    vols = [io.read_image(p).numpy() for p in templates]
    qc.mosaic(vols, [f"iteration {k}" for k in range(len(vols))], out_fig_mosaic)
    qc.convergence_plot(conv, out_fig_convergence, verdict)
    volumes = (io.read_image(p).numpy() for p in warped)  # read again, one at a time
    qc.subject_grid(volumes, list(participants.img), out_fig_subjects)
