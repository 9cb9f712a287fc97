"""Job functions of the segmentation rules (``workflow/rules/segment.smk``).

Each rule names its function in ``params.step`` (``segmentation.<function>``);
``workflow/scripts/run.py`` calls it with the rule's named inputs, outputs (prefixed
``out_``) and params as keywords. Every function is keyword-only, so a misspelt rule key
fails the job. Each reads its files, calls the methods of :mod:`atlas.segmentation`, and
writes its outputs last, all or none (:func:`atlas.io.write_all`): an error never leaves part of
a job's outputs behind.

Atlases are raw labelled scans, so each atlas T1w is first preprocessed exactly like the
workflow's own images (:func:`atlas.preprocess.jobs.preprocess_image` with the same
settings): atlas and target then share intensity scale, brain masking and voxel size, which
the QC NCC, weighted voting and JLF rely on. The atlas label map keeps its native grid, so
labels are interpolated only once, when they are propagated onto a target.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # ANTs (~2.5 s to import) is loaded by the functions that call it
    import ants

from .. import io
from ..qc import plot_evaluation, plot_volumes_vs_age, segmentation_overlay
from ..registration import TransformChain, image_io, preset_kwargs, register_preset
from .evaluation import evaluation_summary, score_fusion_methods
from .labels import (
    apply_tissue_classes,
    as_labels,
    read_label_table,
    table_for_output,
    tissue_channel,
    validate_atlas,
)
from .plan import FUSION_KEYS
from .propagation import Atlas, RegistrationQCError, propagate_atlases
from .tissue import atropos_tissue, average_posteriors, tissue_probseg, tissue_table
from .volumes import TOTALS, group_volume_tables, image_volumes

log = logging.getLogger(__name__)

QC_COLUMNS = ["name", "atlas", "ncc", "passed"]
"""Columns of the per-image registration QC tables."""


# --------------------------------------------------------------------------------------------
# Helpers: reading, writing all outputs at once, transform chains
# --------------------------------------------------------------------------------------------


def _image(reference: ants.ANTsImage, array: np.ndarray) -> ants.ANTsImage:
    return reference.new_image_like(np.asarray(array, dtype=np.float32))


def _probseg_writes(reference: ants.ANTsImage, tissue: np.ndarray, paths: Sequence) -> list:
    """Writes of the (CSF, GM, WM) channels of ``tissue`` to ``paths`` (``label-<class>``)."""
    return [(io.write_image, _image(reference, tissue[tissue_channel(p)]), p) for p in paths]


def _chains(atlas_affines, atlas_warps, target_affine=None, target_inverse_warp=None):
    """Atlas->target chains: each atlas's forward ``[warp, affine]`` (atlas onto the target in
    the direct route, onto the template in the template route), followed in the template route
    by the target's template->subject map ``[affine^-1, inverse warp]``."""
    chains = [TransformChain.forward(a, w) for a, w in zip(atlas_affines, atlas_warps, strict=True)]
    if target_affine is not None:
        to_target = TransformChain.inverse(target_affine, target_inverse_warp)
        chains = [c.then(to_target) for c in chains]
    return chains


def _atlases(ids, images, dsegs) -> list[Atlas]:
    return [
        Atlas(str(i), io.read_image(im), io.read_image(d))
        for i, im, d in zip(ids, images, dsegs, strict=True)
    ]


def _check_fusion(fusion: Mapping) -> None:
    """Raise ValueError unless ``fusion`` has exactly the keys of
    :func:`atlas.segmentation.plan.fusion_settings`."""
    missing, unknown = sorted(FUSION_KEYS - set(fusion)), sorted(set(fusion) - FUSION_KEYS)
    if missing or unknown:
        raise ValueError(f"params.fusion: missing keys {missing}, unknown keys {unknown}")


def _propagate(target, mask, atlases, *, methods, name, fusion, chains=None, registration=None):
    """:func:`propagate_atlases` with the ``fusion`` settings' QC gate and interpolation, the
    QC table logged, and ``min_atlases`` raised to 2 when one of ``methods`` is JLF."""
    _check_fusion(fusion)
    need = max(int(fusion["min_atlases"]), 2 if "jlf" in methods else 1)
    try:
        result = propagate_atlases(
            target,
            atlases,
            mask=mask,
            transforms=chains,
            registration=registration,
            min_ncc=fusion["min_ncc"],
            min_atlases=need,
            label_interpolation=fusion["label_interpolation"],
        )
    except RegistrationQCError as exc:
        log.error("%s: registration QC failed\n%s", name, exc.qc.to_string(index=False))
        raise
    log.info("%s: registration QC\n%s", name, result.qc.to_string(index=False))
    return result


def _radii(fusion: Mapping) -> dict:
    """The neighbourhood radii of :meth:`PropagatedAtlases.fuse` in ``fusion``."""
    return {k: fusion[k] for k in ("patch_radius_mm", "search_radius_mm")}


# --------------------------------------------------------------------------------------------
# Atlases
# --------------------------------------------------------------------------------------------


def prepare_atlas(
    *,
    t1w,
    dseg,
    table,
    reference_image,
    out_image,
    out_mask,
    out_dseg,
    settings,
    preprocessed_image=None,
    preprocessed_mask=None,
):
    """Validate one labelled atlas and preprocess its T1w like the workflow's images.

    ``settings`` are those of the workflow's ``preprocess`` rule
    (:func:`atlas.preprocess.plan.preprocess_settings`). The label map is checked against the
    T1w and the label table (:func:`validate_atlas`) and written as integers (rounded) on its
    native grid. A scan that is also a workflow image passes that image's ``preprocess``
    outputs (``preprocessed_image``, ``preprocessed_mask``: the same function of the same
    file), which are copied instead of preprocessing the scan a second time; that job then
    never loads ANTs (checks and label map with SimpleITK).
    """
    import SimpleITK as sitk

    validate_atlas(t1w, dseg, read_label_table(table))
    labels = (io.write_sitk, sitk.Round(io.read_sitk(dseg)), out_dseg)
    if preprocessed_image is None:
        from ..preprocess.jobs import preprocess_image

        image, mask, _ = preprocess_image(t1w, reference_image, settings)
        writes = [(io.write_image, image, out_image), (io.write_image, mask, out_mask)]
    else:
        writes = [(io.copy_file, preprocessed_image, out_image)]
        writes.append((io.copy_file, preprocessed_mask, out_mask))
    io.write_all([*writes, labels])


def register_atlas(
    *,
    fixed,
    moving,
    out_affine,
    out_warp,
    registration,
    out_inverse_warp=None,
    out_warped=None,
):
    """Register a preprocessed atlas T1w (``moving``) to a target or the template (``fixed``)
    with :func:`atlas.registration.register_preset`; ``registration`` =
    ``{transform, iterations, backend, greedy}`` (a SyN-family ANTs preset, its per-level SyN
    iterations, the backend and its settings: :func:`atlas.registration.preset_kwargs`).
    Writes the forward affine and warp, and optionally the inverse warp and the warped atlas
    T1w; the transform files ANTs writes stay in a private folder removed on return. With
    the greedy or fireants backend the job never loads ANTs (:func:`atlas.registration.image_io`).
    """
    read, write = image_io(registration.get("backend", "ants"))
    with tempfile.TemporaryDirectory(prefix="atlas-") as tmp:
        result = register_preset(
            read(fixed), read(moving), str(Path(tmp) / "reg_"), **preset_kwargs(registration)
        )
        warp, affine = result.forward.paths
        writes = [(io.copy_file, affine, out_affine), (io.copy_file, warp, out_warp)]
        if out_inverse_warp:
            writes.append((io.copy_file, result.inverse.paths[-1], out_inverse_warp))
        if out_warped:
            writes.append((write, result.warped, out_warped))
        io.write_all(writes)


def write_label_table(*, table, out_table, tissue_classes=None):
    """The label table of the segmentations (``index``, ``name``, ``class``; ``n/a`` where a
    structure has no tissue class), with ``tissue_classes`` applied."""
    labels = apply_tissue_classes(read_label_table(table), tissue_classes)
    io.write_tsv(table_for_output(labels), out_table)


# --------------------------------------------------------------------------------------------
# Fusion: images and template
# --------------------------------------------------------------------------------------------


def fuse_target(
    *,
    image,
    mask,
    table,
    atlas_images,
    atlas_dsegs,
    atlas_affines,
    atlas_warps,
    out_dseg,
    out_qc,
    name,
    atlas_ids,
    fusion,
    target_affine=None,
    target_inverse_warp=None,
    out_probseg=(),
    out_table=None,
    tissue_classes=None,
):
    """Label one preprocessed image, or the template, by multi-atlas segmentation.

    Atlas transforms are the direct atlas->image registrations, or (template route, with
    ``target_affine`` and ``target_inverse_warp``) atlas->template composed with the image's
    template->subject map; for the labelled template (``image`` = the template) the
    atlas->template registrations alone. Writes the fused dseg on the image's grid, the
    per-atlas QC rows (``name``, ``atlas``, ``ncc``, ``passed``), tissue fractions when
    ``out_probseg`` lists ``label-{CSF,GM,WM}`` paths (:func:`tissue_probseg`: sums of the
    per-label fractions; STAPLE gives indicator maps) and, with ``out_table``, the label
    table with ``tissue_classes`` applied. ``fusion`` holds the method, QC gate, label
    interpolation and radii (:func:`atlas.segmentation.plan.fusion_settings`).

    Raises :class:`RegistrationQCError` (QC table in the log) when too few atlases pass.
    """
    labels = apply_tissue_classes(read_label_table(table), tissue_classes)
    target = io.read_image(image)
    result = _propagate(
        target,
        io.read_image(mask),
        _atlases(atlas_ids, atlas_images, atlas_dsegs),
        methods=[fusion["method"]],
        name=name,
        fusion=fusion,
        chains=_chains(atlas_affines, atlas_warps, target_affine, target_inverse_warp),
    )
    dseg, probs = result.fuse(fusion["method"], probseg=bool(out_probseg), **_radii(fusion))
    writes = [
        (io.write_image, _image(target, dseg), out_dseg),
        (io.write_tsv, result.qc.assign(name=name)[QC_COLUMNS], out_qc),
    ]
    if out_probseg:
        tissue = tissue_probseg(dseg, labels, probseg=probs)
        writes += _probseg_writes(target, tissue, out_probseg)
    if out_table:
        writes.append((io.write_tsv, table_for_output(labels), out_table))
    io.write_all(writes)


def atropos_to_template(*, image, mask, template, affine, warp, out_probseg, mrf=0.1):
    """Atropos GM/WM/CSF posteriors of one preprocessed image (:func:`atropos_tissue`),
    resampled onto the template grid with the image's forward transforms (linear); used for
    the template tissue maps when no atlases are configured."""
    import ants

    subject = io.read_image(image)
    _, probs = atropos_tissue(subject, io.read_image(mask), mrf=mrf)
    tpl = io.read_image(template)
    chain = TransformChain.forward(affine, warp)
    warped = np.stack(
        [
            ants.apply_transforms(
                tpl, _image(subject, p), list(chain.paths), interpolator="linear"
            ).numpy()
            for p in probs
        ]
    )
    io.write_all(_probseg_writes(tpl, warped, out_probseg))


def atropos_template(*, template, mask, probseg, out_dseg, out_table, out_probseg):
    """Template tissue maps without atlases: the mean over images of their Atropos posteriors
    in template space (:func:`average_posteriors`); dseg = argmax class inside the template
    mask (1=CSF, 2=GM, 3=WM)."""
    tpl = io.read_image(template)
    inside = io.read_image(mask).numpy() > 0
    posteriors = ((tissue_channel(p), io.read_image(p).numpy()) for p in probseg)
    stack, dseg = average_posteriors(posteriors, inside)
    io.write_all(
        [
            *_probseg_writes(tpl, stack, out_probseg),
            (io.write_image, _image(tpl, dseg), out_dseg),
            (io.write_tsv, tissue_table(), out_table),
        ]
    )


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------


def subject_volumes(*, dseg, table, out_tsv, img, tissue_classes=None):
    """Per-structure volumes (mm^3) of one labelled image, plus ``total_brain`` (every
    non-zero voxel) and ``total_<class>`` rows per tissue class (label ``n/a``):
    :func:`image_volumes`."""
    labels = apply_tissue_classes(read_label_table(table), tissue_classes)
    image = io.read_image(dseg)
    io.write_tsv(image_volumes(as_labels(image), image.spacing, labels, img), out_tsv)


def group_volumes(
    *, volumes, qc, participants, out_tidy, out_wide, out_qc, out_figure, structures=()
):
    """Group tables of the segmentation: tidy volumes (one row per image and structure, with
    ``participant_id``, ``session``, ``age``, ``sex``), wide volumes (one row per image), the
    registration-QC rows of every image, and the figure of volumes against age (the
    ``total_*`` rows and ``structures``).

    Raises
    ------
    atlas.io.InputError, before writing anything, when ``structures`` names a structure
    absent from the volume tables.
    """
    tidy, wide = group_volume_tables(
        pd.concat([pd.read_csv(p, sep="\t") for p in volumes], ignore_index=True), participants
    )
    names = [*TOTALS, *structures]
    unknown = sorted(set(names) - set(tidy["name"]))
    if unknown:
        raise io.InputError(f"config key segmentation.volume_plot: unknown structures {unknown}")
    ages = dict(zip(tidy["img"], pd.to_numeric(tidy["age"], errors="coerce"), strict=True))
    figure = plot_volumes_vs_age(tidy.rename(columns={"img": "subject"}), ages, names)
    qc_rows = pd.concat([pd.read_csv(p, sep="\t") for p in qc], ignore_index=True)
    io.write_all(
        [
            (io.write_tsv, tidy, out_tidy),
            (io.write_tsv, wide, out_wide),
            (io.write_tsv, qc_rows, out_qc),
            (io.save_figure, figure, out_figure),
        ]
    )


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate_fold(
    *,
    image,
    mask,
    dseg,
    table,
    atlas_images,
    atlas_dsegs,
    out_scores,
    name,
    atlas_ids,
    methods,
    fusion,
    registration,
    atlas_affines=(),
    atlas_warps=(),
    target_affine=None,
    target_inverse_warp=None,
):
    """Segment one labelled scan held out from the atlases and score it against its own labels.

    Direct route (no transforms given): each atlas is registered to the held-out scan here
    with ``registration`` (as :func:`register_atlas`); template route: atlas->template
    composed with the held-out scan's template->scan map. The atlases are propagated once and
    fused with each of ``methods`` (:func:`score_fusion_methods`). The reference labels are
    resampled onto the scan's preprocessed grid (``genericLabel``); scores per structure and
    method are Dice, HD95 in mm and volume similarity with columns ``method``,
    ``propagation_s`` (seconds to register, in the direct route, and propagate all atlases,
    once per scan) and ``fusion_s`` (seconds of that fusion). ``fusion`` as in
    :func:`fuse_target` (its ``method`` is not used: ``methods`` are).
    """
    import ants

    target = io.read_image(image)
    chains, preset = None, None
    if atlas_affines:
        chains = _chains(atlas_affines, atlas_warps, target_affine, target_inverse_warp)
    else:
        preset = preset_kwargs(registration)
    start = time.perf_counter()
    result = _propagate(
        target,
        io.read_image(mask),
        _atlases(atlas_ids, atlas_images, atlas_dsegs),
        methods=methods,
        name=name,
        fusion=fusion,
        chains=chains,
        registration=preset,
    )
    propagation_s = time.perf_counter() - start
    reference = ants.resample_image_to_target(
        io.read_image(dseg), target, interp_type="genericLabel"
    )
    scores = score_fusion_methods(
        result,
        as_labels(reference),
        methods,
        table=read_label_table(table),
        subject=name,
        propagation_s=propagation_s,
        **_radii(fusion),
    )
    io.write_tsv(scores, out_scores)


def evaluation_report(*, scores, out_table, out_figure, out_summary):
    """Concatenate the evaluation folds; write the per-structure table, a summary per scan
    and fusion method (:func:`evaluation_summary`) and a box plot of the per-structure Dice
    with one box per fusion method."""
    table = pd.concat([pd.read_csv(p, sep="\t") for p in scores], ignore_index=True)
    io.write_all(
        [
            (io.write_tsv, table, out_table),
            (io.write_tsv, evaluation_summary(table), out_summary),
            (io.save_figure, plot_evaluation(table, metric="dice", by="method"), out_figure),
        ]
    )


def overlay_figure(*, image, dseg, out_figure, img):
    """Segmentation view of one image (``img``, its id, as the title): the fused label map
    ``dseg`` over the preprocessed ``image`` (:func:`atlas.qc.segmentation_overlay`,
    nilearn), written to ``out_figure`` (PNG)."""
    segmentation_overlay(image, dseg, out_figure, title=img)


__all__ = [
    "atropos_template",
    "atropos_to_template",
    "evaluate_fold",
    "evaluation_report",
    "fuse_target",
    "group_volumes",
    "overlay_figure",
    "prepare_atlas",
    "register_atlas",
    "subject_volumes",
    "write_label_table",
]
