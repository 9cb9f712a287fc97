# Multi-atlas segmentation (config block segmentation): one registration job per atlas x
# image (direct route) or per atlas (template route), one fusion job per image, a labelled
# template, group tables and the evaluation on held-out labelled scans. The plan (which atlas
# labels which image, what is evaluated) is made at parse time by atlas.segmentation.plan, so
# a bad atlas set stops the run with one message; job functions are in
# atlas/segmentation/jobs.py. With no atlases, `snakemake segmentation` gives Atropos tissue
# maps of the template only.


include: "segment_common.smk"


rule segmentation:
    input:
        SEGMENT_TARGETS
        if SEG_ON
        else [SEG_TPL["dseg"], SEG_TPL["table"], *SEG_TPL["probseg"]],


rule segment_atlas_prepare:
    input:
        unpack(prepare_inputs),
        table=LABEL_TABLE,
        reference_image=rules.reference.output.out_image,
    output:
        out_image=atlas_file("{atlas}", "desc-preproc_T1w.nii.gz"),
        out_mask=atlas_file("{atlas}", "desc-brain_mask.nii.gz"),
        out_dseg=atlas_file("{atlas}", "dseg.nii.gz"),
    log:
        f"{OUT}/logs/segmentation/atlas-{{atlas}}_prepare.log",
    conda:
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **job_resources("registration"),
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
        ENV_REPORT
    resources:
        **job_resources("light"),
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
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **registration_resources(config["segmentation"]["registration"]),
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
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **registration_resources(config["segmentation"]["registration"]),
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
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **job_resources("fusion"),
    params:
        fusion=FUSION,
        step="segmentation.fuse_target",
        name=lambda w: w.img,
        atlas_ids=lambda w: PLAN.image_atlases[w.img],
        tissue_classes=SEG["tissue_classes"],
    script:
        RUN


# Segmentation view of each image (reportlet): the fused labels over the image.
rule segment_overlay_figure:
    input:
        image=lambda w: subject_file(w.img, "desc-preproc_T1w.nii.gz"),
        dseg=lambda w: subject_file(w.img, f"desc-{METHOD}_dseg.nii.gz"),
    output:
        out_figure=report(
            SEG_FIGURE,
            caption=f"{REPORT}/segmentation.rst",
            category="Segmentation",
            subcategory="{img}",
        ),
    log:
        f"{OUT}/logs/figures/{{img}}_segmentation.log",
    conda:
        ENV_REPORT
    resources:
        **job_resources("light"),
    params:
        step="segmentation.overlay_figure",
        img=lambda w: w.img,
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
        ENV_REPORT
    resources:
        **job_resources("light"),
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
        ENV_REPORT
    resources:
        **job_resources("light"),
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
            ENV_ANTS
        threads: config["threads_per_job"]
        resources:
            **job_resources("fusion"),
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
            ENV_ANTS
        threads: config["threads_per_job"]
        resources:
            **job_resources("fusion"),
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
            ENV_ANTS
        resources:
            **job_resources("fusion"),
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
        ENV_REPORT
    threads: config["threads_per_job"]
    resources:
        **job_resources("light"),
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
        ENV_REPORT
    resources:
        **job_resources("light"),
    params:
        step="segmentation.evaluation_report",
    script:
        RUN
