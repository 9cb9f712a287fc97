# Per-image preprocessing and affine normalisation (one job per image).


rule reference:
    output:
        out_image=f"{WORK}/reference/res-{RES}_T1w.nii.gz",
        out_mask=f"{WORK}/reference/res-{RES}_desc-brain_mask.nii.gz",
    log:
        f"{OUT}/logs/reference.log",
    conda:
        ENV_ANTS
    resources:
        **job_resources("preprocess"),
    params:
        step="preprocess.reference",
        reference=config["reference"],
        reference_mask=config["reference_mask"],
        resolution=config["resolution"],
        margin_mm=config["fov_margin_mm"],
    script:
        RUN


rule preprocess:
    input:
        t1w=lambda w: SOURCE[w.img],
        reference_image=rules.reference.output.out_image,
    output:
        out_image=subject_path("desc-preproc_T1w.nii.gz"),
        out_mask=subject_path("desc-brain_mask.nii.gz"),
        out_json=subject_path("desc-preproc_T1w.json"),
    log:
        f"{OUT}/logs/{{subdir}}/{{img}}_preprocess.log",
    conda:
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **job_resources("preprocess"),
    params:
        step="preprocess.preprocess",
        settings=PREPROCESS_SETTINGS,
    script:
        RUN


rule normalise:
    input:
        image=rules.preprocess.output.out_image,
        reference_image=rules.reference.output.out_image,
    output:
        out_affine=subject_path(f"from-T1w_to-{REF}_mode-image_xfm.mat"),
        out_warped=subject_path(f"space-{REF}_desc-preproc_T1w.nii.gz"),
    log:
        f"{OUT}/logs/{{subdir}}/{{img}}_normalise.log",
    conda:
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **job_resources("registration"),
    params:
        step="preprocess.normalise",
        rigid_only=config["reference"] == "cohort",
        affine_params=config["template"]["affine"],
    script:
        RUN


# `atlas BIDS_DIR OUTPUT_DIR participant`: preprocessing and normalisation of the
# selected images (no template).
rule participant:
    input:
        f"{OUT}/dataset_description.json",
        subject_files("space-{ref}_desc-preproc_T1w.nii.gz"),
