# Learned age-conditional atlas (config block learned): Atropos tissue maps of the images
# (tissue variants of a cohort source), training, AARN, atlases at ages
# exported as TemplateFlow, one-pass registration of each image to the atlas of its age, and
# an evaluation against the iterative template. Decisions and checks are made at parse time
# by atlas.learn.plan; job functions are in atlas/learn/jobs.py. Targets: LEARNED_TARGETS
# (in `all` when learned.enabled). Checkpoints stay in WORK/learned/train (not a Snakemake
# output), so a killed or failed training resumes when the rule reruns.


include: "learned_common.smk"


# Cohort source with tissue_weight > 0: Atropos CSF/GM/WM of each preprocessed image,
# carried onto the reference grid (one job per image; the training job reads them).
rule learned_tissue:
    input:
        image=rules.preprocess.output.out_image,
        mask=rules.preprocess.output.out_mask,
        normalisation=rules.normalise.output.out_affine,
        reference=rules.reference.output.out_image,
    output:
        out_dseg=LEARNED_TISSUE,
    log:
        f"{OUT}/logs/{{subdir}}/{{img}}_learned_tissue.log",
    conda:
        ENV_TORCH
    threads: config["threads_per_job"]
    resources:
        **job_resources("fusion"),
    params:
        step="learn.atropos_tissues",
    script:
        RUN


rule learned_train:
    input:
        unpack(learned_train_inputs),
    output:
        out_model=LEARNED["model"],
        out_losses=LEARNED["losses"],
        out_loss_curve=report(
            LEARNED["loss_curve"],
            caption=f"{REPORT}/learned_loss.rst",
            category="Learned atlas",
        ),
    log:
        f"{OUT}/logs/learned_train.log",
    conda:
        ENV_TORCH
    threads: config["threads_per_job"]
    resources:
        **train_resources(
            LEARNED_CFG, job_resources("train", gpu=LEARNED_CFG["use_gpu"])
        ),
    params:
        **train_params(LEARNED_CFG, IMAGES),
        step="learn.train_atlas",
        hyper=train_hyper(LEARNED_CFG),
        checkpoint_dir=f"{LWORK}/train",
        device=LPLAN.device,
        age_units=LEARNED_CFG["age_units"],
        threads=lambda w, threads: threads,
    script:
        RUN


rule learned_aarn:
    input:
        affines=subject_files(f"from-T1w_to-{REF}_mode-image_xfm.mat"),
    output:
        out_aarn=f"{OUT}/learned/aarn.pt",
        out_table=f"{OUT}/learned/aarn.tsv",
    log:
        f"{OUT}/logs/learned_aarn.log",
    conda:
        ENV_TORCH
    resources:
        **job_resources("torch"),
    params:
        step="learn.fit_age_affines",
        ages=list(IMAGES.age),
        sample_ages=LEARNED_CFG["ages"],
        age_units=LEARNED_CFG["age_units"],
        seed=LEARNED_CFG["train"]["seed"],
    script:
        RUN


rule learned_sample:
    input:
        **({"aarn": LEARNED["aarn"]} if LPLAN.use_aarn else {}),
        model=LEARNED["model"],
    output:
        **({"out_scaled": LEARNED["scaled"]} if LPLAN.use_aarn else {}),
        **({"out_labels": LEARNED["labels"]} if LPLAN.learns_labels else {}),
        **(
            {
                "out_probseg": LEARNED["probseg"],
                "out_tissue_dseg": LEARNED["tissue_dseg"],
                "out_tissue_table": LEARNED["tissue_table"],
            }
            if LPLAN.tissue_names
            else {}
        ),
        out_description=LEARNED["description"],
        out_atlases=LEARNED["atlases"],
        out_montage=report(
            LEARNED["montage"],
            caption=f"{REPORT}/learned_montage.rst",
            category="Learned atlas",
        ),
    log:
        f"{OUT}/logs/learned_sample.log",
    conda:
        ENV_TORCH
    threads: config["threads_per_job"]
    resources:
        **job_resources("torch"),
    params:
        step="learn.sample_atlases",
        ages=LEARNED_CFG["ages"],
        age_units=LEARNED_CFG["age_units"],
        name=LNAME,
        res_label=LPLAN.res_label,
        threads=lambda w, threads: threads,
    script:
        RUN


rule learned_register:
    input:
        unpack(learned_label_inputs),
        model=LEARNED["model"],
        image=subject_path(f"space-{REF}_desc-preproc_T1w.nii.gz"),
        mask=rules.reference.output.out_mask,
    output:
        **learned_label_output("learned"),
        out_warped=subject_path(f"space-{LNAME}_desc-preproc_T1w.nii.gz"),
        out_warp=subject_path(f"from-{REF}_to-{LNAME}_mode-image_xfm.nii.gz"),
        out_inverse_warp=subject_path(f"from-{LNAME}_to-{REF}_mode-image_xfm.nii.gz"),
        out_row=f"{LWORK}/eval/learned/{{subdir}}/{{img}}_metrics.tsv",
    log:
        f"{OUT}/logs/{{subdir}}/{{img}}_learned_register.log",
    conda:
        ENV_TORCH
    threads: config["threads_per_job"]
    resources:
        **job_resources("registration"),
    params:
        step="learn.register_subject",
        img=lambda w: w.img,
        age=lambda w: AGE[w.img],
        age_units=LEARNED_CFG["age_units"],
        threads=lambda w, threads: threads,
    script:
        RUN


rule learned_register_iterative:
    input:
        unpack(learned_label_inputs),
        template=TEMPLATE_OUTPUTS["template"],
        image=subject_path(f"space-{REF}_desc-preproc_T1w.nii.gz"),
        mask=rules.reference.output.out_mask,
    output:
        **learned_label_output("iterative"),
        out_warp=f"{LWORK}/eval/iterative/{{subdir}}/{{img}}_warp.nii.gz",
        out_row=f"{LWORK}/eval/iterative/{{subdir}}/{{img}}_metrics.tsv",
    log:
        f"{OUT}/logs/{{subdir}}/{{img}}_learned_register_iterative.log",
    conda:
        ENV_TORCH
    threads: config["threads_per_job"]
    resources:
        **job_resources("registration"),
    params:
        step="learn.register_iterative",
        img=lambda w: w.img,
        age=lambda w: AGE[w.img],
        params=iterative_registration_params(config["template"]),
    script:
        RUN


rule learned_evaluation:
    input:
        mask=rules.reference.output.out_mask,
        learned_rows=learned_eval_files("learned", "metrics.tsv"),
        iterative_rows=learned_eval_files("iterative", "metrics.tsv"),
        learned_warps=subject_files(f"from-{REF}_to-{LNAME}_mode-image_xfm.nii.gz"),
        iterative_warps=learned_eval_files("iterative", "warp.nii.gz"),
        learned_labels=learned_eval_files("learned", "dseg.nii.gz") if LABELS else [],
        iterative_labels=(
            learned_eval_files("iterative", "dseg.nii.gz") if LABELS else []
        ),
    output:
        out_table=LEARNED.get("evaluation", f"{OUT}/group/desc-learned_evaluation.tsv"),
        out_subjects=LEARNED.get(
            "registration", f"{OUT}/group/desc-learnedregistration_table.tsv"
        ),
    log:
        f"{OUT}/logs/learned_evaluation.log",
    conda:
        ENV_TORCH
    resources:
        **job_resources("light"),
    params:
        step="learn.evaluate",
        learned_name=LNAME,
        iterative_name=TPL,
    script:
        RUN
