"""One function per Snakemake job. Each reads its input files, calls the methods of
:mod:`atlas.preprocess`, :mod:`atlas.registration`, :mod:`atlas.template` and
:mod:`atlas.metrics`, and writes its outputs atomically. Rules call these through
``workflow/scripts/run.py``; they are also usable without Snakemake.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata
from pathlib import Path

import ants
import numpy as np
import pandas as pd

from . import io, metrics, qc
from .demo import mni152_path
from .preprocess import foreground_mask, preprocess_t1w
from .registration import jacobian_determinant_image, register
from .template import average_images, reference_grid, shape_update, sharpen, template_change

log = logging.getLogger(__name__)

#: TemplateFlow identifier of the reference inside nilearn.
MNI_ID = "MNI152NLin2009aSym"


def reference_space(reference: str) -> str:
    """BIDS ``space-`` label of the affine normalisation reference (config key ``reference``).

    ``MNI152NLin2009aSym`` and ``cohort`` (rigid to it) give ``MNI152NLin2009aSym``; a path
    gives its TemplateFlow ``tpl-<label>`` entity and ``cohort-<label>`` if present (e.g.
    ``tpl-UNCBCP4DInfant_cohort-12_T1w.nii.gz`` -> ``UNCBCP4DInfantcohort12``), otherwise the
    letters and digits of the file name without extensions (e.g. ``my_ref.nii.gz`` ->
    ``myref``).

    Raises
    ------
    ValueError if the path's name has no letter or digit.
    """
    if reference in (MNI_ID, "cohort"):
        return MNI_ID
    name = Path(reference).name.split(".")[0]
    entities = dict(e.split("-", 1) for e in name.split("_") if "-" in e)
    if "tpl" in entities:
        label = entities["tpl"] + ("cohort" + entities["cohort"] if "cohort" in entities else "")
    else:
        label = name
    label = "".join(c for c in label if c.isalnum())
    if not label:
        raise ValueError(f"config key reference: no space label in the file name {reference!r}")
    return label


def reference(out_image, out_mask, reference, reference_mask, resolution, margin_mm):
    """Reference image and brain mask on the template grid (``resolution`` mm)."""
    path = mni152_path() if reference in (MNI_ID, "cohort") else Path(reference)
    io.check_nifti(path)
    mask = ants.image_read(str(reference_mask)) if reference_mask else None
    ref, ref_mask = reference_grid(ants.image_read(str(path)), resolution, mask, margin_mm)
    io.write_image(ref, out_image)
    io.write_image(ref_mask, out_mask)


def preprocess(
    t1w,
    reference_image,
    out_image,
    out_mask,
    out_json,
    resolution,
    skull_strip,
    head,
    head_mask,
    intensity,
    max_brain_ml,
    margin_mm,
    seed,
):
    """Preprocess one T1w image (:func:`atlas.preprocess.preprocess_t1w`)."""
    io.check_nifti(t1w)
    image, mask, info = preprocess_t1w(
        ants.image_read(str(t1w)),
        resolution=resolution,
        skull_strip=skull_strip,
        head_template=ants.image_read(str(head)) if head else None,
        head_mask=ants.image_read(str(head_mask)) if head_mask else None,
        intensity=intensity,
        reference=ants.image_read(str(reference_image)),
        max_brain_ml=max_brain_ml,
        margin_mm=margin_mm,
        seed=seed,
    )
    info["Sources"] = [str(t1w)]
    io.write_image(image, out_image)
    io.write_image(mask, out_mask)
    io.write_json(info, out_json)


def normalise(image, reference_image, out_affine, out_warped, rigid_only, affine_params):
    """Centre-of-mass initialisation, rigid then affine registration to the reference.

    ``rigid_only`` (reference ``cohort``) stops after the rigid stage: the template's
    affine iterations then make the cohort's own unbiased affine template.
    """
    fixed = ants.image_read(str(reference_image))
    moving = ants.image_read(str(image))
    params = dict(affine_params, transform="Rigid")
    warped = register(fixed, moving, params, out_affine)
    if not rigid_only:
        params["transform"] = "Affine"
        warped = register(fixed, moving, params, out_affine, initial_transform=out_affine)
    io.write_image(warped, out_warped)


def template_init(images, out_template, average):
    """template_0: average of the affinely normalised images."""
    avg = average_images([ants.image_read(str(p)) for p in images], average)
    io.write_image(avg, out_template)


def template_register(template, image, initial_affine, out_affine, out_warped, params, **warps):
    """Register one subject to template_k (affine, or affine + SyN for SyN iterations)."""
    warped = register(
        ants.image_read(str(template)),
        ants.image_read(str(image)),
        params,
        out_affine,
        warps.get("out_warp"),
        warps.get("out_inverse_warp"),
        initial_transform=initial_affine,
    )
    io.write_image(warped, out_warped)


def template_update(
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
    cohort's mean size, so the reference's brain mask no longer fits it.
    """
    old = ants.image_read(str(template))
    fg = foreground_mask(old)
    m = fg.numpy() > 0
    images = [ants.image_read(str(p)) for p in warped]
    avg = average_images(images, average)
    new, magnitude = shape_update(avg, affines, warps or None, gradient_step)
    if do_sharpen:
        new = sharpen(new)
    row = {
        "iteration": int(iteration),
        "stage": stage,
        "mean_warp_mm": float(magnitude[m].mean()) if magnitude is not None else np.nan,
        "max_warp_mm": float(magnitude[m].max()) if magnitude is not None else np.nan,
        "template_change": template_change(new, old, fg),
        "mean_ncc": float(np.mean([metrics.ncc(im.numpy(), old.numpy(), m) for im in images])),
    }
    io.write_image(new, out_template)
    io.write_tsv(pd.DataFrame([row]), out_row)


def subject_final(
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
    mask into the template and measure the registration inside the template foreground."""
    for src, dst in ((affine, out_affine), (warp, out_warp), (inverse_warp, out_inverse_warp)):
        io.copy_file(src, dst)
    tpl = ants.image_read(str(template))
    m = foreground_mask(tpl).numpy() > 0
    transforms = [str(warp), str(affine)]
    moved = ants.apply_transforms(tpl, ants.image_read(str(image)), transforms)
    io.write_image(moved, out_warped)
    moved_mask = ants.apply_transforms(
        tpl, ants.image_read(str(mask)), transforms, interpolator="genericLabel"
    )
    io.write_image(moved_mask, out_mask)
    det = jacobian_determinant_image(tpl, warp).numpy()
    jac = metrics.jacobian_stats(det, m)
    row = {
        "img": img,
        "ncc": metrics.ncc(moved.numpy(), tpl.numpy(), m),
        "mutual_information": metrics.mutual_information(moved.numpy(), tpl.numpy(), m),
        "pct_nonpositive_jacobian": jac["pct_nonpositive"],
        "min_jacobian": jac["min"],
        "std_log_jacobian": jac["std_log"],
    }
    io.write_tsv(pd.DataFrame([row]), out_row)


def software_versions() -> dict:
    """Versions of the packages that shape the results."""
    names = ["atlas", "antspyx", "snakemake", "nibabel", "numpy", "nilearn", "torch"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def template_final(
    templates,
    masks,
    subject_rows,
    convergence_rows,
    warped,
    participants,
    config,
    res_label,
    **out,
):
    """Write the TemplateFlow folder, group tables, variance map and figures.

    ``out`` (keyword arguments) maps output names (``template``, ``mask``,
    ``description``, ``convergence``, ``subjects``, ``variance``, ``fig_mosaic``,
    ``fig_convergence``, ``fig_subjects``) to paths; ``participants`` is the table of
    :func:`atlas.bids.find_t1w`.
    """
    final = ants.image_read(str(templates[-1]))
    io.write_image(final, out["template"])
    # brain mask: voxels inside at least half of the subjects' warped brain masks
    mask_mean = np.mean([ants.image_read(str(p)).numpy() > 0 for p in masks], axis=0)
    io.write_image(final.new_image_like((mask_mean >= 0.5).astype("float32")), out["mask"])
    conv = pd.concat([pd.read_csv(p, sep="\t") for p in convergence_rows], ignore_index=True)
    subj = pd.concat([pd.read_csv(p, sep="\t") for p in subject_rows], ignore_index=True)
    subj = participants[["img", "subject", "session", "age", "sex"]].merge(subj, on="img")
    io.write_tsv(conv, out["convergence"])
    io.write_tsv(subj, out["subjects"])
    stack = np.stack([ants.image_read(str(p)).numpy() for p in warped])
    io.write_image(final.new_image_like(stack.var(0).astype("float32")), out["variance"])
    ages = pd.to_numeric(participants.age, errors="coerce")
    tcfg = config["template"]
    desc = {
        "Identifier": tcfg["name"],
        "Name": f"atlas population template {tcfg['name']}",
        "Authors": [],
        "ReferencesAndLinks": [
            "Avants et al. 2010, NeuroImage 49:2457 (SyGN)",
        ],
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
    }
    io.write_json(desc, out["description"])
    vols = [ants.image_read(str(p)).numpy() for p in templates]
    qc.mosaic(vols, [f"iteration {k}" for k in range(len(vols))], out["fig_mosaic"])
    qc.convergence_plot(conv, out["fig_convergence"])
    qc.subject_grid(list(stack), list(participants.img), out["fig_subjects"])


def dataset_files(out_json, out_config, name, bids_dir, config):
    """``dataset_description.json`` of the derivatives and a snapshot of the resolved
    config with software versions (``atlas_config.json``)."""
    from .bids import dataset_description

    io.write_json(dataset_description(name, bids_dir), out_json)
    io.write_json({"config": config, "software": software_versions()}, out_config)
