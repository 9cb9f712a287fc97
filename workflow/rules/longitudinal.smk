# Longitudinal stage (config block longitudinal): for every subject with two or more
# sessions, a single-subject template (SST) built by the population template's SyGN jobs
# (template.init / registration.register_to_template / template.update: one
# registration per job), the SST
# registered once to the population template, and per session the transforms, labels,
# volumes and log-Jacobian measured through the composed chain session -> SST -> template
# (one interpolation). With atlases, each SST is segmented by the segmentation stage's
# fusion job (template route: atlas -> template -> SST, one interpolation) and its labels
# carried to the sessions. Job functions: atlas/longitudinal/jobs.py; plan:
# atlas/longitudinal/plan.py.


include: "longitudinal_common.smk"


rule longitudinal:
    input:
        LONGITUDINAL_TARGETS,


rule long_sst_init:
    input:
        images=sst_init_inputs,
    output:
        out_template=sst_iter("{sub}", 0, "template_T1w.nii.gz"),
    log:
        f"{OUT}/logs/longitudinal/sub-{{sub}}_sst_iter-0.log",
    conda:
        ENV_ANTS
    resources:
        **job_resources("template"),
    params:
        step="template.init",
        average=config["template"]["average"],
    script:
        RUN


rule long_sst_register_linear:
    input:
        unpack(sst_registration_inputs),
    output:
        out_affine=sst_iter("{sub}", "{k}", "{img}_affine.mat"),
        out_warped=sst_iter("{sub}", "{k}", "{img}_warped.nii.gz"),
    log:
        f"{OUT}/logs/longitudinal/sub-{{sub}}_sst_iter-{{k}}_{{img}}.log",
    wildcard_constraints:
        k=SST_LIN_K,
    conda:
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **job_resources("registration"),
    params:
        step="registration.register_to_template",
        params=lambda w: sst_params(w.k, LCFG, config["template"]),
        backend=LONG_BACKEND,
    script:
        RUN


use rule long_sst_register_linear as long_sst_register_syn with:
    output:
        out_affine=sst_iter("{sub}", "{k}", "{img}_affine.mat"),
        out_warped=sst_iter("{sub}", "{k}", "{img}_warped.nii.gz"),
        out_warp=sst_iter("{sub}", "{k}", "{img}_warp.nii.gz"),
        out_inverse_warp=sst_iter("{sub}", "{k}", "{img}_inverse-warp.nii.gz"),
    wildcard_constraints:
        k=SST_SYN_K,


rule long_sst_update:
    input:
        unpack(sst_update_inputs),
    output:
        out_template=sst_iter("{sub}", "{k}", "template_T1w.nii.gz"),
        out_row=sst_iter("{sub}", "{k}", "convergence.tsv"),
    log:
        f"{OUT}/logs/longitudinal/sub-{{sub}}_sst_iter-{{k}}.log",
    wildcard_constraints:
        k=r"[1-9]\d*",
    conda:
        ENV_ANTS
    resources:
        **job_resources("template"),
    params:
        step="template.update",
        iteration=lambda w: int(w.k) - 1,
        stage=lambda w: sst_stage(int(w.k) - 1, LCFG),
        average=config["template"]["average"],
        gradient_step=config["template"]["gradient_step"],
        do_sharpen=config["template"]["sharpen"],
    script:
        RUN


rule long_sst_final:
    input:
        template=sst_iter("{sub}", N_SST, "template_T1w.nii.gz"),
        warped=lambda w: [
            sst_iter(w.sub, SST_LAST, f"{i}_warped.nii.gz") for i in LONG.imgs(w.sub)
        ],
        masks=lambda w: [
            subject_file(i, "desc-brain_mask.nii.gz") for i in LONG.imgs(w.sub)
        ],
        affines=lambda w: [
            sst_iter(w.sub, SST_LAST, f"{i}_affine.mat") for i in LONG.imgs(w.sub)
        ],
        warps=lambda w: [
            sst_iter(w.sub, SST_LAST, f"{i}_warp.nii.gz") for i in LONG.imgs(w.sub)
        ],
    output:
        out_sst=sst_file("{sub}", SST_T1W),
        out_mask=sst_file("{sub}", SST_MASK),
        out_figure=report(
            f"{FIG}/sub-{{sub}}_desc-sst_mosaic.png",
            caption=f"{REPORT}/longitudinal_sst.rst",
            category="Longitudinal",
            subcategory="sub-{sub}",
        ),
    log:
        f"{OUT}/logs/longitudinal/sub-{{sub}}_sst_final.log",
    conda:
        ENV_ANTS
    resources:
        **job_resources("template"),
    params:
        step="longitudinal.sst_final",
        subject=lambda w: w.sub,
        sessions=lambda w: list(LONG.sessions.session[LONG.sessions.subject == w.sub]),
    script:
        RUN


rule long_sst_to_template:
    input:
        template=TEMPLATE_OUTPUTS["template"],
        image=rules.long_sst_final.output.out_sst,
    output:
        out_affine=sst_file("{sub}", SST_TO_TPL["affine"]),
        out_warp=sst_file("{sub}", SST_TO_TPL["warp"]),
        out_inverse_warp=sst_file("{sub}", SST_TO_TPL["inverse_warp"]),
        out_warped=sst_file("{sub}", SST_TO_TPL["warped"]),
    log:
        f"{OUT}/logs/longitudinal/sub-{{sub}}_sst_to_template.log",
    conda:
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **job_resources("registration"),
    params:
        step="registration.register_to_template",
        params=sst_to_template_params(LCFG, config["template"]),
        backend=LONG_BACKEND,
    script:
        RUN


# The SST as one more target of the segmentation's fusion job (template route whatever
# segmentation.route is: the atlases' template registrations and the SST's are reused, so
# segmenting an SST costs no registration).
rule long_sst_segment:
    input:
        unpack(sst_segment_inputs),
    output:
        out_dseg=sst_file("{sub}", SST_DSEG),
        out_qc=f"{LONGW}/sub-{{sub}}/sst_segmentation_qc.tsv",
    log:
        f"{OUT}/logs/longitudinal/sub-{{sub}}_sst_segment.log",
    conda:
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **job_resources("fusion"),
    params:
        fusion=FUSION,
        step="segmentation.fuse_target",
        name=lambda w: f"sub-{w.sub} SST",
        atlas_ids=lambda w: SST_ATLASES[w.sub],
        tissue_classes=SEG["tissue_classes"],
    script:
        RUN


rule long_session:
    input:
        unpack(long_session_inputs),
    output:
        out_affine=subject_path(SES_TO_SST["affine"]),
        out_warp=subject_path(SES_TO_SST["warp"]),
        out_inverse_warp=subject_path(SES_TO_SST["inverse_warp"]),
        out_warped=subject_path(SES_TO_SST["warped"]),
        out_dseg=subject_path(SES_TO_SST["dseg"]),
        out_logjacobian=subject_path(SES_TO_SST["logjacobian"]),
        out_volumes=f"{LONGW}/{{subdir}}/{{img}}_volumes.tsv",
        out_qc=f"{LONGW}/{{subdir}}/{{img}}_qc.tsv",
    log:
        f"{OUT}/logs/{{subdir}}/{{img}}_longitudinal.log",
    conda:
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **job_resources("registration"),
    params:
        step="longitudinal.session",
        img=lambda w: w.img,
        min_ncc=LCFG["min_ncc"],
    script:
        RUN


if LONG_ON:

    rule long_group:
        input:
            volumes=[f"{LONGW}/{SUBDIR[i]}/{i}_volumes.tsv" for i in LONG.sessions.img],
            qc_rows=[f"{LONGW}/{SUBDIR[i]}/{i}_qc.tsv" for i in LONG.sessions.img],
            logjacobians=long_session_files(SES_TO_SST["logjacobian"]),
            template=TEMPLATE_OUTPUTS["template"],
        output:
            out_volumes=LONG_GROUP["volumes"],
            out_change=LONG_GROUP["change"],
            out_qc=LONG_GROUP["qc"],
            out_model=LONG_GROUP["model"],
            out_fig_trajectories=report(
                LONG_GROUP["fig_trajectories"],
                caption=f"{REPORT}/longitudinal_trajectories.rst",
                category="Longitudinal",
            ),
            out_fig_logjacobian=report(
                LONG_GROUP["fig_logjacobian"],
                caption=f"{REPORT}/longitudinal_logjacobian.rst",
                category="Longitudinal",
            ),
        log:
            f"{OUT}/logs/longitudinal/group.log",
        conda:
            ENV_REPORT
        resources:
            **job_resources("light"),
        params:
            step="longitudinal.group",
            sessions=LONG.sessions,
            single=LONG.single,
            identical=LONG.identical,
            structures=LCFG["structures"],
            time_unit=LCFG["time_unit"],
        script:
            RUN
