"""Job functions of the longitudinal rules (``workflow/rules/longitudinal.smk``).

The SST itself is built by the population template's jobs (``template.init``,
``registration.register_to_template``, ``template.update``) on one subject's sessions; the jobs
here finish it (``sst_final``), measure each session through the composed transforms
(``session``) and write the group tables and figures (``group``).
"""

from __future__ import annotations

import ants
import numpy as np
import pandas as pd

from .. import io, metrics, qc
from ..preprocess import foreground_mask
from ..registration import TransformChain
from ..segmentation.labels import read_label_table
from ..segmentation.volumes import image_volumes
from .change import change_table, jacobian_integration
from .models import fit_structures

__all__ = ["sst_final", "session", "group"]


def sst_final(
    *, template, warped, masks, affines, warps, out_sst, out_mask, out_figure, subject, sessions
):
    """Write the final SST of one subject (``template``: the last SST iteration) under its
    BIDS name, its brain mask, and a montage of its sessions (``warped``: each resampled onto
    the SST by the last iteration; ``sessions``: their labels) above the SST (PNG,
    :func:`atlas.qc.mosaic`).

    The mask holds the SST voxels inside at least half of the sessions' brain masks
    (``masks``) carried onto the SST by the last iteration's ``affines`` and ``warps``
    (nearest label), as the population template's mask from its images' masks; it is the
    fusion mask of the SST's multi-atlas segmentation."""
    sst = io.read_image(template)
    inside = [
        _apply(sst, io.read_image(m), TransformChain.forward(a, w), "genericLabel").numpy() > 0
        for m, a, w in zip(masks, affines, warps, strict=True)
    ]
    mask = sst.new_image_like((np.mean(inside, axis=0) >= 0.5).astype("float32"))
    vols = [io.read_image(p).numpy() for p in warped] + [sst.numpy()]
    labels = [f"sub-{subject} ses-{s}" for s in sessions] + [f"sub-{subject} SST"]
    io.write_all([(io.write_image, sst, out_sst), (io.write_image, mask, out_mask)])
    qc.mosaic(vols, labels, out_figure)


def _chains(affine, warp, inverse_warp, sst_affine, sst_warp, sst_inverse_warp):
    """Session -> SST, session -> template (one list), template -> SST, SST -> session and
    template -> SST -> session chains."""
    to_sst = TransformChain.forward(affine, warp)
    to_tpl = to_sst.then(TransformChain.forward(sst_affine, sst_warp))
    tpl_to_sst = TransformChain.inverse(sst_affine, sst_inverse_warp)
    sst_to_ses = TransformChain.inverse(affine, inverse_warp)
    return to_sst, to_tpl, tpl_to_sst, sst_to_ses, tpl_to_sst.then(sst_to_ses)


def _apply(fixed, moving, chain, interpolator="linear"):
    return ants.apply_transforms(
        fixed,
        moving,
        list(chain.paths),
        interpolator=interpolator,
        whichtoinvert=list(chain.invert),
    )


def _labels(image, sst, tpl_dseg, sst_dseg, chains):
    """The labels on the SST and on the session (nearest label). From the SST's own labels
    (``sst_dseg``) carried SST -> session; else the template's (``tpl_dseg``) carried
    template -> SST and, in one interpolation, template -> SST -> session."""
    _, _, tpl_to_sst, sst_to_ses, tpl_to_ses = chains
    if (tpl_dseg is None) == (sst_dseg is None):
        raise ValueError("give exactly one of template_dseg and sst_dseg")
    if sst_dseg is not None:
        return sst_dseg, _apply(image, sst_dseg, sst_to_ses, "genericLabel")
    return (
        _apply(sst, tpl_dseg, tpl_to_sst, "genericLabel"),
        _apply(image, tpl_dseg, tpl_to_ses, "genericLabel"),
    )


def _session_measures(image, sst, tpl, dsegs, table, files, min_ncc):
    """Everything one session job computes (images: ``ants.ANTsImage``; ``dsegs``: the
    template's and the SST's labels, one of them None (:func:`_labels`); ``files``: the six
    transform paths of :func:`_chains`). Returns a dict of outputs and tables."""
    chains = _chains(*files)
    to_sst, to_tpl = chains[:2]
    in_tpl = _apply(tpl, image, to_tpl)  # one interpolation: session -> SST -> template
    sst_dseg, ses_dseg = _labels(image, sst, *dsegs, chains)
    labels = np.rint(sst_dseg.numpy()).astype(np.int64)
    jac, det, lj = jacobian_integration(sst, files[0], files[1], labels, table)
    fg = foreground_mask(sst).numpy() > 0
    ncc = metrics.ncc(_apply(sst, image, to_sst).numpy(), sst.numpy(), fg)
    pct_bad = float(100.0 * np.mean(det[fg] <= 0))
    reason = ""
    if not np.isfinite(ncc) or ncc < min_ncc:
        reason = f"registration to the SST failed QC (NCC {ncc:.3f} < {min_ncc})"
    lj_img = sst.new_image_like(np.where(np.isfinite(lj), lj, 0.0).astype("float32"))
    lab = image_volumes(np.rint(ses_dseg.numpy()), image.spacing, table, "x").drop(columns="img")
    return {
        "in_tpl": in_tpl,
        "dseg": ses_dseg,
        "logjac_tpl": _apply(tpl, lj_img, TransformChain.forward(files[3], files[4])),
        "volumes": pd.concat(
            [jac.assign(method="jacobian"), lab.assign(method="labels")], ignore_index=True
        ),
        "qc": {"ncc": ncc, "pct_nonpositive_jacobian": pct_bad, "reason": reason},
    }


def session(
    *,
    image,
    affine,
    warp,
    inverse_warp,
    sst,
    sst_affine,
    sst_warp,
    sst_inverse_warp,
    template,
    label_table,
    out_affine,
    out_warp,
    out_inverse_warp,
    out_warped,
    out_dseg,
    out_logjacobian,
    out_volumes,
    out_qc,
    img,
    min_ncc,
    template_dseg=None,
    sst_dseg=None,
):
    """One session of a longitudinal subject, measured through its SST.

    Writes the session -> SST transforms (last SST iteration) under BIDS names; the session
    resampled into the population template with the composed list session -> SST ->
    template (one interpolation, :meth:`TransformChain.then`); the labels (``label_table``)
    on the session in one nearest-label interpolation: the SST's multi-atlas segmentation
    (``sst_dseg``) carried SST -> session, or, without atlases, the template's labels
    (``template_dseg``) carried template -> SST -> session (exactly one is given); the
    log-Jacobian of the SST -> session map (ANTs ``CreateJacobianDeterminantImage`` of the
    warp times the affine's determinant: > 0 where the session is larger than the SST)
    resampled into the template; volumes (method ``jacobian``: Jacobian integration over the
    SST's labels, :func:`atlas.longitudinal.change.jacobian_integration`; ``labels``: voxel
    count of the session's labels, mm^3) with the per-structure mean log-Jacobian; and a QC
    row (NCC session vs SST in the SST foreground, % non-positive Jacobian, failure
    ``reason`` when NCC < ``min_ncc``).
    """
    files = (affine, warp, inverse_warp, sst_affine, sst_warp, sst_inverse_warp)
    dsegs = [None if p is None else io.read_image(p) for p in (template_dseg, sst_dseg)]
    m = _session_measures(
        io.read_image(image),
        io.read_image(sst),
        io.read_image(template),
        dsegs,
        read_label_table(label_table),
        files,
        float(min_ncc),
    )
    io.write_all(
        [
            (io.copy_file, affine, out_affine),
            (io.copy_file, warp, out_warp),
            (io.copy_file, inverse_warp, out_inverse_warp),
            (io.write_image, m["in_tpl"], out_warped),
            (io.write_image, m["dseg"], out_dseg),
            (io.write_image, m["logjac_tpl"], out_logjacobian),
            (io.write_tsv, m["volumes"].assign(img=img), out_volumes),
            (io.write_tsv, pd.DataFrame([{"img": img, **m["qc"]}]), out_qc),
        ]
    )


def _qc_table(sessions: pd.DataFrame, qc_rows, single, identical) -> pd.DataFrame:
    """Per-session QC rows, plus one row per subject that is not longitudinal."""
    qc_tab = sessions[["subject", "session", "img", "age"]].merge(
        pd.concat([pd.read_csv(p, sep="\t", keep_default_na=False) for p in qc_rows]), on="img"
    )
    qc_tab["longitudinal"] = True
    qc_tab["identical_sessions"] = qc_tab.subject.isin(identical)
    extra = pd.DataFrame({"subject": list(single), "longitudinal": False})
    extra["reason"] = "one session: not longitudinal"
    return pd.concat([qc_tab, extra], ignore_index=True)


def _mean_log_jacobian_change(sessions: pd.DataFrame, logjacobians) -> np.ndarray:
    """Mean over subjects of (last - first session) log-Jacobian in template space."""
    by_img = dict(zip(sessions.img, logjacobians, strict=True))
    diffs = []
    for _, rows in sessions.groupby("subject", sort=False):
        first, last = rows.img.iloc[0], rows.img.iloc[-1]
        diffs.append(io.read_image(by_img[last]).numpy() - io.read_image(by_img[first]).numpy())
    return np.mean(diffs, axis=0)


def group(
    *,
    volumes,
    qc_rows,
    logjacobians,
    template,
    out_volumes,
    out_change,
    out_qc,
    out_model,
    out_fig_trajectories,
    out_fig_logjacobian,
    sessions,
    single,
    identical,
    structures,
    time_unit,
):
    """Group tables and figures of the longitudinal stage.

    ``sessions``: the plan's session table (:class:`atlas.longitudinal.plan.LongitudinalPlan`);
    ``volumes`` / ``qc_rows`` / ``logjacobians``: the session jobs' outputs in that order.
    Writes the tidy volume table (subject x session x method x structure), the change table
    (:func:`atlas.longitudinal.change.change_table`; NaN with the reason for sessions that
    failed QC), the QC table (one-session subjects listed as not longitudinal), the mixed
    model of ``total_brain`` and ``structures`` (:func:`atlas.longitudinal.models.fit_structures`,
    method ``jacobian``), a spaghetti plot and the cohort's mean log-Jacobian change map.
    """
    qc_tab = _qc_table(sessions, qc_rows, single, identical)
    vols = pd.concat([pd.read_csv(p, sep="\t") for p in volumes], ignore_index=True)
    vols = sessions[["subject", "session", "img", "age"]].merge(vols, on="img")
    vols = vols.merge(qc_tab[["img", "reason"]], on="img")
    names = ["total_brain", *[s for s in structures if s != "total_brain"]]
    model = fit_structures(vols[vols.method == "jacobian"], names)
    tpl = io.read_image(template)
    mean_change = _mean_log_jacobian_change(sessions, logjacobians)
    io.write_all(
        [
            (io.write_tsv, vols, out_volumes),
            (io.write_tsv, change_table(vols, time_unit), out_change),
            (io.write_tsv, qc_tab, out_qc),
            (io.write_tsv, model, out_model),
        ]
    )
    jac = vols[vols.method == "jacobian"]
    qc.plot_trajectories(jac, model, names, out_fig_trajectories, time_unit)
    qc.log_jacobian_map(mean_change, tpl.numpy(), out_fig_logjacobian)
