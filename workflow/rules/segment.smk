# Multi-atlas segmentation (config block segmentation): one registration job per atlas x
# image (direct route) or per atlas (template route), one fusion job per image, a labelled
# template, group tables and the evaluation on held-out labelled scans. The plan (which atlas
# labels which image, what is evaluated) is made at parse time by atlas.segmentation.plan, so
# a bad atlas set stops the run with one message; job functions are in
# atlas/segmentation/jobs.py. With no atlases, `snakemake segmentation` gives Atropos tissue
# maps of the template only.
import re

from atlas.segmentation.labels import TISSUE_CLASSES
from atlas.segmentation.plan import (
    evaluation_methods,
    fusion_settings,
    plan_segmentation,
    segment_targets,
)

SEG = config["segmentation"]
METHOD = SEG["fusion"]
SEGW = f"{WORK}/segmentation"

try:
    PLAN = plan_segmentation(SEG, IMAGES, BIDS_DIR)
    FUSION = fusion_settings(SEG)
    EVAL_METHODS = evaluation_methods(SEG)
except InputError as exc:
    _stop(str(exc))

SEG_ON = PLAN is not None
ATLASES = PLAN.atlases if SEG_ON else []
EVAL_IDS = PLAN.eval_ids if SEG_ON else []
LABEL_TABLE = str(PLAN.label_table) if SEG_ON else []


wildcard_constraints:
    atlas="|".join(map(re.escape, PLAN.labelled.index)) if SEG_ON else "(?!)",


def atlas_file(atlas, name):
    """Preprocessed atlas files (T1w, brain mask, dseg on its native grid)."""
    return f"{SEGW}/atlases/{atlas}_{name}"


def atlas_files(ids, name):
    return [atlas_file(a, name) for a in ids]


def to_template(atlas, name):
    """Atlas -> template registration files (template route and labelled template)."""
    return f"{SEGW}/template/{atlas}_{name}"


def direct(img, atlas, name):
    """Atlas -> image registration files (direct route)."""
    return f"{SEGW}/direct/{img}/{atlas}_{name}"


def template_transforms(img):
    """A workflow image's template -> image map from the template build."""
    return {
        "target_affine": subject_file(
            img, f"from-T1w_to-{TPL}_mode-image_desc-affine_xfm.mat"
        ),
        "target_inverse_warp": subject_file(
            img, f"from-{TPL}_to-T1w_mode-image_desc-warp_xfm.nii.gz"
        ),
    }


def atlas_inputs(ids, route):
    """Preprocessed atlases and, per route, their registrations (direct: to be given)."""
    files = {
        "table": LABEL_TABLE,
        "atlas_images": atlas_files(ids, "desc-preproc_T1w.nii.gz"),
        "atlas_dsegs": atlas_files(ids, "dseg.nii.gz"),
    }
    if route == "template":
        files |= {
            "atlas_affines": [to_template(a, "affine.mat") for a in ids],
            "atlas_warps": [to_template(a, "warp.nii.gz") for a in ids],
        }
    return files


SEG_TPL = {
    "dseg": f"{TPL_DIR}/tpl-{TPL}_res-{RES}_dseg.nii.gz",
    "table": f"{TPL_DIR}/tpl-{TPL}_dseg.tsv",
    "probseg": [
        f"{TPL_DIR}/tpl-{TPL}_res-{RES}_label-{t}_probseg.nii.gz"
        for t in TISSUE_CLASSES
    ],
}
SEG_GROUP = {
    "tidy": f"{OUT}/group/desc-{METHOD}_volumes.tsv",
    "wide": f"{OUT}/group/desc-{METHOD}wide_volumes.tsv",
    "qc": f"{OUT}/group/desc-{METHOD}_segmentationqc.tsv",
    "fig": f"{FIG}/desc-{METHOD}_volumesage.png",
}
SEG_EVAL = {
    "table": f"{OUT}/group/desc-fusion_evaluation.tsv",
    "summary": f"{OUT}/group/desc-fusionsummary_evaluation.tsv",
    "fig": f"{FIG}/desc-fusion_evaluation.png",
}
PROBSEG = [f"label-{t}_desc-{METHOD}_probseg.nii.gz" for t in TISSUE_CLASSES]
# Everything the segmentation adds to `rule all` (nothing without atlases).
SEGMENT_TARGETS = segment_targets(
    PLAN,
    {
        "table": [f"{OUT}/desc-{METHOD}_dseg.tsv"],
        "dseg": subject_files(f"desc-{METHOD}_dseg.nii.gz"),
        "probseg": [f for p in PROBSEG for f in subject_files(p)],
        "template": [SEG_TPL["dseg"], SEG_TPL["table"], *SEG_TPL["probseg"]],
        "group": list(SEG_GROUP.values()),
        "evaluation": list(SEG_EVAL.values()),
    },
    probseg=SEG["probseg"],
)


def fuse_inputs(w):
    ids = PLAN.image_atlases[w.img]
    files = {
        "image": subject_file(w.img, "desc-preproc_T1w.nii.gz"),
        "mask": subject_file(w.img, "desc-brain_mask.nii.gz"),
    } | atlas_inputs(ids, SEG["route"])
    if SEG["route"] == "direct":
        return files | {
            "atlas_affines": [direct(w.img, a, "affine.mat") for a in ids],
            "atlas_warps": [direct(w.img, a, "warp.nii.gz") for a in ids],
        }
    return files | template_transforms(w.img)


def evaluate_inputs(w):
    """A held-out scan, its own labels and the atlases labelling it. Template route: its
    template transforms are those of the template build when the scan is a workflow image
    (image and mask then that image's too), else its own registration to the template.
    """
    files = {
        "image": atlas_file(w.atlas, "desc-preproc_T1w.nii.gz"),
        "mask": atlas_file(w.atlas, "desc-brain_mask.nii.gz"),
        "dseg": atlas_file(w.atlas, "dseg.nii.gz"),
    } | atlas_inputs(PLAN.eval_atlases(w.atlas), SEG["route"])
    if SEG["route"] == "direct":
        return files
    img = PLAN.eval_images.get(w.atlas)
    if img is None:
        return files | {
            "target_affine": to_template(w.atlas, "affine.mat"),
            "target_inverse_warp": to_template(w.atlas, "inverse-warp.nii.gz"),
        }
    return (
        files
        | template_transforms(img)
        | {
            "image": subject_file(img, "desc-preproc_T1w.nii.gz"),
            "mask": subject_file(img, "desc-brain_mask.nii.gz"),
        }
    )


rule segmentation:
    input:
        SEGMENT_TARGETS
        if SEG_ON
        else [SEG_TPL["dseg"], SEG_TPL["table"], *SEG_TPL["probseg"]],


rule segment_atlas_prepare:
    input:
        t1w=lambda w: PLAN.labelled.loc[w.atlas, "t1w"],
        dseg=lambda w: PLAN.labelled.loc[w.atlas, "dseg"],
        table=LABEL_TABLE,
        reference_image=rules.reference.output.out_image,
    output:
        out_image=atlas_file("{atlas}", "desc-preproc_T1w.nii.gz"),
        out_mask=atlas_file("{atlas}", "desc-brain_mask.nii.gz"),
        out_dseg=atlas_file("{atlas}", "dseg.nii.gz"),
    log:
        f"{OUT}/logs/segmentation/atlas-{{atlas}}_prepare.log",
    conda:
        ENV
    threads: config["threads_per_job"]
    resources:
        **job_resources(),
    params:
        step="segmentation.prepare_atlas",
        settings=PREPROCESS_SETTINGS,
    script:
        RUN


rule segment_label_table:
    input:
        table=LABEL_TABLE,
    output:
        out_table=f"{OUT}/desc-{METHOD}_dseg.tsv",
    log:
        f"{OUT}/logs/segmentation/label_table.log",
    conda:
        ENV
    params:
        step="segmentation.write_label_table",
        tissue_classes=SEG["tissue_classes"],
    script:
        RUN


rule segment_atlas_to_template:
    input:
        fixed=TEMPLATE_OUTPUTS["template"],
        moving=atlas_file("{atlas}", "desc-preproc_T1w.nii.gz"),
    output:
        out_affine=to_template("{atlas}", "affine.mat"),
        out_warp=to_template("{atlas}", "warp.nii.gz"),
        out_inverse_warp=to_template("{atlas}", "inverse-warp.nii.gz"),
        out_warped=to_template("{atlas}", "warped.nii.gz"),
    log:
        f"{OUT}/logs/segmentation/atlas-{{atlas}}_to-template.log",
    conda:
        ENV
    threads: config["threads_per_job"]
    resources:
        **job_resources(),
    params:
        step="segmentation.register_atlas",
        registration=SEG["registration"],
    script:
        RUN


rule segment_atlas_to_image:
    input:
        fixed=lambda w: subject_file(w.img, "desc-preproc_T1w.nii.gz"),
        moving=atlas_file("{atlas}", "desc-preproc_T1w.nii.gz"),
    output:
        out_affine=direct("{img}", "{atlas}", "affine.mat"),
        out_warp=direct("{img}", "{atlas}", "warp.nii.gz"),
    log:
        f"{OUT}/logs/segmentation/{{img}}_atlas-{{atlas}}.log",
    conda:
        ENV
    threads: config["threads_per_job"]
    resources:
        **job_resources(),
    params:
        step="segmentation.register_atlas",
        registration=SEG["registration"],
    script:
        RUN


rule segment_fuse:
    input:
        unpack(fuse_inputs),
    output:
        out_dseg=subject_path(f"desc-{METHOD}_dseg.nii.gz"),
        out_qc=f"{SEGW}/qc/{{subdir}}/{{img}}_qc.tsv",
        out_probseg=[subject_path(p) for p in PROBSEG] if SEG["probseg"] else [],
    log:
        f"{OUT}/logs/{{subdir}}/{{img}}_segment_fuse.log",
    conda:
        ENV
    threads: config["threads_per_job"]
    resources:
        **job_resources(),
    params:
        fusion=FUSION,
        step="segmentation.fuse_target",
        name=lambda w: w.img,
        atlas_ids=lambda w: PLAN.image_atlases[w.img],
        tissue_classes=SEG["tissue_classes"],
    script:
        RUN


rule segment_volumes:
    input:
        dseg=rules.segment_fuse.output.out_dseg,
        table=LABEL_TABLE,
    output:
        out_tsv=f"{SEGW}/volumes/{{subdir}}/{{img}}_volumes.tsv",
    log:
        f"{OUT}/logs/{{subdir}}/{{img}}_segment_volumes.log",
    conda:
        ENV
    resources:
        **job_resources(),
    params:
        step="segmentation.subject_volumes",
        img=lambda w: w.img,
        tissue_classes=SEG["tissue_classes"],
    script:
        RUN


rule segment_group:
    input:
        volumes=[f"{SEGW}/volumes/{SUBDIR[i]}/{i}_volumes.tsv" for i in IMAGES.img],
        qc=[f"{SEGW}/qc/{SUBDIR[i]}/{i}_qc.tsv" for i in IMAGES.img],
    output:
        out_tidy=SEG_GROUP["tidy"],
        out_wide=SEG_GROUP["wide"],
        out_qc=SEG_GROUP["qc"],
        out_figure=report(
            SEG_GROUP["fig"], caption=f"{REPORT}/volumes.rst", category="Segmentation"
        ),
    log:
        f"{OUT}/logs/segmentation/group.log",
    conda:
        ENV
    resources:
        **job_resources(),
    params:
        step="segmentation.group_volumes",
        participants=IMAGES,
        structures=SEG["volume_plot"],
    script:
        RUN


if SEG_ON:

    rule segment_template:
        input:
            **atlas_inputs(ATLASES, "template"),
            image=TEMPLATE_OUTPUTS["template"],
            mask=TEMPLATE_OUTPUTS["mask"],
        output:
            out_dseg=SEG_TPL["dseg"],
            out_table=SEG_TPL["table"],
            out_probseg=SEG_TPL["probseg"],
            out_qc=f"{SEGW}/qc/template_qc.tsv",
        log:
            f"{OUT}/logs/segmentation/template.log",
        conda:
            ENV
        threads: config["threads_per_job"]
        resources:
            **job_resources(),
        params:
            fusion=FUSION,
            step="segmentation.fuse_target",
            name="template",
            atlas_ids=ATLASES,
            tissue_classes=SEG["tissue_classes"],
        script:
            RUN

else:

    rule segment_atropos:
        input:
            image=rules.preprocess.output.out_image,
            mask=rules.preprocess.output.out_mask,
            template=TEMPLATE_OUTPUTS["template"],
            affine=subject_path(f"from-T1w_to-{TPL}_mode-image_desc-affine_xfm.mat"),
            warp=subject_path(f"from-T1w_to-{TPL}_mode-image_desc-warp_xfm.nii.gz"),
        output:
            out_probseg=[
                f"{SEGW}/atropos/{{subdir}}/{{img}}_space-{TPL}_label-{t}_probseg.nii.gz"
                for t in TISSUE_CLASSES
            ],
        log:
            f"{OUT}/logs/{{subdir}}/{{img}}_segment_atropos.log",
        conda:
            ENV
        threads: config["threads_per_job"]
        resources:
            **job_resources(),
        params:
            step="segmentation.atropos_to_template",
        script:
            RUN

    rule segment_template_atropos:
        input:
            template=TEMPLATE_OUTPUTS["template"],
            mask=TEMPLATE_OUTPUTS["mask"],
            probseg=[
                f"{SEGW}/atropos/{SUBDIR[i]}/{i}_space-{TPL}_label-{t}_probseg.nii.gz"
                for i in IMAGES.img
                for t in TISSUE_CLASSES
            ],
        output:
            out_dseg=SEG_TPL["dseg"],
            out_table=SEG_TPL["table"],
            out_probseg=SEG_TPL["probseg"],
        log:
            f"{OUT}/logs/segmentation/template_atropos.log",
        conda:
            ENV
        resources:
            **job_resources(),
        params:
            step="segmentation.atropos_template",
        script:
            RUN


rule segment_evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        out_scores=f"{SEGW}/evaluation/{{atlas}}_scores.tsv",
    log:
        f"{OUT}/logs/segmentation/evaluate_{{atlas}}.log",
    conda:
        ENV
    threads: config["threads_per_job"]
    resources:
        **job_resources(),
    params:
        fusion=FUSION,
        methods=EVAL_METHODS,
        step="segmentation.evaluate_fold",
        name=lambda w: w.atlas,
        atlas_ids=lambda w: PLAN.eval_atlases(w.atlas),
        registration=SEG["registration"],
    script:
        RUN


rule segment_evaluation:
    input:
        scores=[f"{SEGW}/evaluation/{a}_scores.tsv" for a in EVAL_IDS],
    output:
        out_table=SEG_EVAL["table"],
        out_summary=SEG_EVAL["summary"],
        out_figure=report(
            SEG_EVAL["fig"],
            caption=f"{REPORT}/evaluation.rst",
            category="Segmentation",
        ),
    log:
        f"{OUT}/logs/segmentation/evaluation.log",
    conda:
        ENV
    resources:
        **job_resources(),
    params:
        step="segmentation.evaluation_report",
    script:
        RUN
