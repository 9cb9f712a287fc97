"""A single-subject template in one process, by the workflow's own job functions.

The workflow runs each registration of an SST as its own Snakemake job
(``workflow/rules/longitudinal.smk``); benchmarks and tests that need an SST without the
workflow call the same jobs in the same order here (no other implementation of SyGN).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..registration.jobs import register_to_template
from ..template import jobs as tjobs
from .plan import backend, n_sst_iterations, sst_params, sst_stage


def build_sst(
    images, workdir, lcfg: dict, tcfg: dict, initial_affines=None, init_images=None
) -> dict:
    """Build the SST of ``images`` (NIfTI paths on one world space) in ``workdir``.

    Parameters
    ----------
    images : session image files.
    workdir : folder for every iteration's files (created).
    lcfg : ``longitudinal`` config (``sst.affine_iterations``, ``sst.syn_iterations``,
        ``sst.syn``, ``backend``, ``greedy``).
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
                backend=backend(lcfg),
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


def sst_measure(
    images, labels, workdir, lcfg: dict, tcfg: dict, labelled: int = 0, **kwargs
) -> dict:
    """Volumes of every structure in each of ``images`` through their SST.

    The SST of the images (:func:`build_sst`; ``kwargs``: its ``initial_affines`` and
    ``init_images``), the labels of image ``labelled`` (``labels``: a label image on its
    grid) carried to the SST (nearest label, through that image's last-iteration
    transforms), and each image's volumes by Jacobian integration of SST -> image over them
    (:func:`atlas.longitudinal.change.jacobian_integration`, as the workflow's session job).

    Returns
    -------
    dict with ``sst`` (``ants.ANTsImage``), ``dseg`` (integer labels on it), ``volumes``
    (per image, a Series of mm^3 indexed by label id as a string and ``total_brain``),
    ``log_jacobians`` (per image, the SST -> image log-Jacobian on the SST) and
    ``transforms`` (:func:`build_sst`'s dict).
    """
    import ants

    from .change import jacobian_integration

    out = build_sst(images, workdir, lcfg, tcfg, **kwargs)
    sst = ants.image_read(str(out["sst"]))
    lab = ants.apply_transforms(
        sst,
        ants.image_read(str(labels)),
        [str(out["warps"][labelled]), str(out["affines"][labelled])],
        interpolator="genericLabel",
    ).numpy()
    lab = np.rint(lab).astype(np.int64)
    ids = np.unique(lab[lab > 0])
    table = pd.DataFrame({"index": ids, "name": [str(i) for i in ids]})
    measured = [
        jacobian_integration(sst, affine, warp, lab, table)
        for affine, warp in zip(out["affines"], out["warps"], strict=True)
    ]
    return {
        "sst": sst,
        "dseg": lab,
        "volumes": [m[0].set_index("name").volume_mm3.astype(float) for m in measured],
        "log_jacobians": [m[2] for m in measured],
        "transforms": out,
    }


def sst_percent_change(
    images, labels, workdir, lcfg: dict, tcfg: dict, labelled: int = 0, **kwargs
) -> pd.Series:
    """% volume change from ``images[0]`` to ``images[1]`` of every structure, through an SST
    (:func:`sst_measure`, same arguments).

    Returns
    -------
    Series indexed by label id (as a string) and ``total_brain``: ``100 (V1 / V0 - 1)``.
    """
    vols = sst_measure(images, labels, workdir, lcfg, tcfg, labelled, **kwargs)["volumes"]
    return 100 * (vols[1] / vols[0] - 1)
