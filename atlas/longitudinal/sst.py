"""A single-subject template in one process, by the workflow's own job functions.

The workflow runs each registration of an SST as its own Snakemake job
(``workflow/rules/longitudinal.smk``); benchmarks and tests that need an SST without the
workflow call the same jobs in the same order here (no other implementation of SyGN).
"""

from __future__ import annotations

from pathlib import Path

from ..registration.jobs import register_to_template
from ..template import jobs as tjobs
from .plan import n_sst_iterations, sst_params, sst_stage


def build_sst(
    images, workdir, lcfg: dict, tcfg: dict, initial_affines=None, init_images=None
) -> dict:
    """Build the SST of ``images`` (NIfTI paths on one world space) in ``workdir``.

    Parameters
    ----------
    images : session image files.
    workdir : folder for every iteration's files (created).
    lcfg : ``longitudinal`` config (``sst.affine_iterations``, ``sst.syn_iterations``).
    tcfg : ``template`` config (``affine``, ``syn``, ``average``, ``gradient_step``,
        ``sharpen``).
    initial_affines : per image, an affine to start from (the workflow's normalisation);
        None: centre-of-mass alignment.
    init_images : the images SST 0 averages (one grid; the workflow: the sessions
        normalised to the reference); None: ``images`` (then on one grid).

    Returns
    -------
    dict with ``sst`` (path of the final SST) and ``affines``, ``warps``,
    ``inverse_warps`` (per image, the last iteration's session -> SST transforms).
    """
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)

    def it(k, name):
        return work / f"iter-{k}_{name}"

    n = len(images)
    tjobs.init(
        images=list(init_images or images),
        out_template=it(0, "template.nii.gz"),
        average=tcfg["average"],
    )
    for k in range(n_sst_iterations(lcfg)):
        syn = sst_stage(k, lcfg) == "syn"
        for i, image in enumerate(images):
            extra = {}
            if syn:
                extra = {
                    "out_warp": it(k, f"{i}_warp.nii.gz"),
                    "out_inverse_warp": it(k, f"{i}_iw.nii.gz"),
                }
            register_to_template(
                template=it(k, "template.nii.gz"),
                image=image,
                initial_affine=initial_affines[i] if initial_affines else None,
                out_affine=it(k, f"{i}_affine.mat"),
                out_warped=it(k, f"{i}_warped.nii.gz"),
                params=sst_params(k, lcfg, tcfg),
                **extra,
            )
        tjobs.update(
            template=it(k, "template.nii.gz"),
            warped=[it(k, f"{i}_warped.nii.gz") for i in range(n)],
            affines=[it(k, f"{i}_affine.mat") for i in range(n)],
            warps=[it(k, f"{i}_warp.nii.gz") for i in range(n)] if syn else [],
            out_template=it(k + 1, "template.nii.gz"),
            out_row=it(k + 1, "convergence.tsv"),
            iteration=k,
            stage=sst_stage(k, lcfg),
            average=tcfg["average"],
            gradient_step=tcfg["gradient_step"],
            do_sharpen=tcfg["sharpen"],
        )
    last = n_sst_iterations(lcfg) - 1
    return {
        "sst": it(last + 1, "template.nii.gz"),
        "affines": [it(last, f"{i}_affine.mat") for i in range(n)],
        "warps": [it(last, f"{i}_warp.nii.gz") for i in range(n)],
        "inverse_warps": [it(last, f"{i}_iw.nii.gz") for i in range(n)],
    }
