# Groupwise template by iterative mean-then-register (SyGN). Iteration k registers
# every image to template iter-k (one job each) and a join job writes iter-(k+1).


# Only the last iteration's inverse warps are used (the final transforms), so the SyN
# iterations before it write none.
AFFINE_K = "|".join(str(k) for k in range(N_AFFINE)) or "none"
SYN_K = "|".join(str(k) for k in range(N_AFFINE, N_ITER - 1)) or "none"
LAST = N_ITER - 1


rule template_init:
    input:
        images=subject_files("space-{ref}_desc-preproc_T1w.nii.gz"),
    output:
        out_template=iter_path(0, "template_T1w.nii.gz"),
    log:
        f"{OUT}/logs/template_iter-0.log",
    conda:
        ENV_ANTS
    resources:
        **job_resources("template"),
    params:
        step="template.init",
        average=config["template"]["average"],
    script:
        RUN


rule template_register_affine:
    input:
        unpack(registration_inputs),
    output:
        out_affine=iter_path("{k}", "{img}_affine.mat"),
        out_warped=iter_path("{k}", "{img}_warped.nii.gz"),
    log:
        f"{OUT}/logs/template_iter-{{k}}_{{img}}.log",
    wildcard_constraints:
        k=AFFINE_K,
    conda:
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **registration_resources(config["template"]),
    params:
        step="registration.register_to_template",
        params=lambda w: stage_params(w.k, config["template"]),
        backend=config["template"].get("backend", "ants"),
    script:
        RUN


use rule template_register_affine as template_register_syn with:
    output:
        out_affine=iter_path("{k}", "{img}_affine.mat"),
        out_warped=iter_path("{k}", "{img}_warped.nii.gz"),
        out_warp=iter_path("{k}", "{img}_warp.nii.gz"),
    wildcard_constraints:
        k=SYN_K,


use rule template_register_affine as template_register_last with:
    output:
        out_affine=iter_path("{k}", "{img}_affine.mat"),
        out_warped=iter_path("{k}", "{img}_warped.nii.gz"),
        out_warp=iter_path("{k}", "{img}_warp.nii.gz"),
        out_inverse_warp=iter_path("{k}", "{img}_inverse-warp.nii.gz"),
    wildcard_constraints:
        k=str(LAST),


rule template_update:
    input:
        unpack(update_inputs),
    output:
        out_template=iter_path("{k}", "template_T1w.nii.gz"),
        out_row=iter_path("{k}", "convergence.tsv"),
    log:
        f"{OUT}/logs/template_iter-{{k}}.log",
    wildcard_constraints:
        k=r"[1-9]\d*",
    conda:
        ENV_ANTS
    resources:
        **job_resources("template"),
    params:
        step="template.update",
        iteration=lambda w: int(w.k) - 1,
        stage=lambda w: stage(int(w.k) - 1, N_AFFINE),
        average=config["template"]["average"],
        gradient_step=config["template"]["gradient_step"],
        do_sharpen=config["template"]["sharpen"],
    script:
        RUN


rule subject_final:
    input:
        template=iter_path(N_ITER, "template_T1w.nii.gz"),
        affine=iter_path(LAST, "{img}_affine.mat"),
        warp=iter_path(LAST, "{img}_warp.nii.gz"),
        inverse_warp=iter_path(LAST, "{img}_inverse-warp.nii.gz"),
        image=rules.preprocess.output.out_image,
        mask=rules.preprocess.output.out_mask,
    output:
        out_affine=subject_path(f"from-T1w_to-{TPL}_mode-image_desc-affine_xfm.mat"),
        out_warp=subject_path(f"from-T1w_to-{TPL}_mode-image_desc-warp_xfm.nii.gz"),
        out_inverse_warp=subject_path(
            f"from-{TPL}_to-T1w_mode-image_desc-warp_xfm.nii.gz"
        ),
        out_warped=subject_path(f"space-{TPL}_desc-preproc_T1w.nii.gz"),
        out_mask=subject_path(f"space-{TPL}_desc-brain_mask.nii.gz"),
        out_row=f"{WORK}/template/final/{{subdir}}/{{img}}_metrics.tsv",
    log:
        f"{OUT}/logs/{{subdir}}/{{img}}_template_final.log",
    conda:
        ENV_ANTS
    threads: config["threads_per_job"]
    resources:
        **job_resources("registration"),
    params:
        step="template.subject_final",
        img=lambda w: w.img,
    script:
        RUN


TPL_DIR = f"{OUT}/tpl-{TPL}"
FIG = f"{OUT}/figures"
TEMPLATE_OUTPUTS = {
    "template": f"{TPL_DIR}/tpl-{TPL}_res-{RES}_T1w.nii.gz",
    "mask": f"{TPL_DIR}/tpl-{TPL}_res-{RES}_desc-brain_mask.nii.gz",
    "description": f"{TPL_DIR}/template_description.json",
    "convergence": f"{OUT}/group/desc-convergence_table.tsv",
    "subjects": f"{OUT}/group/desc-registration_table.tsv",
    "variance": f"{TPL_DIR}/tpl-{TPL}_res-{RES}_desc-variance_T1w.nii.gz",
    "fig_mosaic": f"{FIG}/tpl-{TPL}_desc-iterations_mosaic.png",
    "fig_convergence": f"{FIG}/tpl-{TPL}_desc-convergence_plot.png",
    "fig_subjects": f"{FIG}/tpl-{TPL}_desc-subjects_mosaic.png",
}
REPORT = "../report"


rule template_final:
    input:
        templates=[iter_path(k, "template_T1w.nii.gz") for k in range(N_ITER + 1)],
        masks=subject_files("space-{tpl}_desc-brain_mask.nii.gz"),
        subject_rows=[
            f"{WORK}/template/final/{SUBDIR[i]}/{i}_metrics.tsv" for i in IMAGES.img
        ],
        convergence_rows=[iter_path(k, "convergence.tsv") for k in range(1, N_ITER + 1)],
        warped=subject_files("space-{tpl}_desc-preproc_T1w.nii.gz"),
    output:
        out_template=TEMPLATE_OUTPUTS["template"],
        out_mask=TEMPLATE_OUTPUTS["mask"],
        out_description=TEMPLATE_OUTPUTS["description"],
        out_convergence=TEMPLATE_OUTPUTS["convergence"],
        out_subjects=TEMPLATE_OUTPUTS["subjects"],
        out_variance=TEMPLATE_OUTPUTS["variance"],
        out_fig_mosaic=report(
            TEMPLATE_OUTPUTS["fig_mosaic"],
            caption=f"{REPORT}/mosaic.rst",
            category="Template",
        ),
        out_fig_convergence=report(
            TEMPLATE_OUTPUTS["fig_convergence"],
            caption=f"{REPORT}/convergence.rst",
            category="Template",
        ),
        out_fig_subjects=report(
            TEMPLATE_OUTPUTS["fig_subjects"],
            caption=f"{REPORT}/subjects.rst",
            category="Template",
        ),
    log:
        f"{OUT}/logs/template_final.log",
    conda:
        ENV_ANTS
    resources:
        **job_resources("template"),
    params:
        step="template.final",
        participants=IMAGES,
        config=config,
        res_label=RES,
        convergence=config["template"]["convergence"],
    script:
        RUN


# Registration view of each image (sMRIPrep-style reportlet): the image in template space
# under the template's edges.
REGISTRATION_FIGURES = [
    f"{FIG}/{i}_space-{TPL}_desc-registration_T1w.png" for i in IMAGES.img
]


rule template_registration_figure:
    input:
        image=lambda w: subject_file(w.img, f"space-{TPL}_desc-preproc_T1w.nii.gz"),
        template=TEMPLATE_OUTPUTS["template"],
    output:
        out_figure=report(
            f"{FIG}/{{img}}_space-{TPL}_desc-registration_T1w.png",
            caption=f"{REPORT}/registration.rst",
            category="Registration",
            subcategory="{img}",
        ),
    log:
        f"{OUT}/logs/figures/{{img}}_registration.log",
    conda:
        ENV_REPORT
    resources:
        **job_resources("light"),
    params:
        step="template.registration_figure",
        img=lambda w: w.img,
    script:
        RUN
