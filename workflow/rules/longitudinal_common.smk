# Longitudinal stage: config access, the plan, paths and input functions of longitudinal.smk
# (no rules, no logic: decisions are made by atlas.longitudinal.plan). Every session of a
# longitudinal subject is processed whatever `session` selects for the population template;
# its preprocessing and normalisation run through the same rules (SOURCE, SUBDIR).
import pandas as pd

from atlas.longitudinal.plan import (
    backend,
    n_sst_iterations,
    plan_longitudinal,
    sst_atlases,
    sst_params,
    sst_stage,
    sst_to_template_params,
)

LCFG = config["longitudinal"]
LONGW = f"{WORK}/longitudinal"

try:
    _ALL = None
    if LCFG["enabled"] is not False:
        _ALL = find_t1w(
            BIDS_DIR,
            config["participant_label"],
            config["exclude_participant_label"],
            "all",
            cache=f"{PARSE_CACHE}/bids_t1w.json",
        )
        _ALL = _ALL[~_ALL.img.isin(list(IMAGES.attrs.get("excluded", {})))]
        _NEW = _ALL[~_ALL.img.isin(IMAGES.img)]
        if len(_NEW):  # images the template stage did not select: check them too
            _ALL = _ALL[~_ALL.img.isin(_NEW.img)]
            _NEW = validate_images(
                _NEW,
                config["on_bad_subject"],
                cache=f"{PARSE_CACHE}/image_validation.json",
            )
            _ALL = pd.concat([_ALL, _NEW], ignore_index=True)
    LONG = plan_longitudinal(LCFG, _ALL, BIDS_DIR)
    # subject -> atlases of its SST's segmentation; None: the template's labels instead
    SST_ATLASES = sst_atlases(PLAN, LONG, BIDS_DIR)
except InputError as exc:
    _stop(str(exc))

LONG_ON = LONG is not None
LONG_BACKEND = backend(LCFG)
N_SST = n_sst_iterations(LCFG)
SST_LAST = N_SST - 1
SST_LIN_K = "|".join(str(k) for k in range(N_SST) if sst_stage(k, LCFG) != "syn")
SST_SYN_K = "|".join(str(k) for k in range(N_SST) if sst_stage(k, LCFG) == "syn")
if LONG_ON:
    SOURCE.update(zip(LONG.sessions.img, LONG.sessions.path))
    SUBDIR.update(zip(LONG.sessions.img, LONG.sessions.subdir))
    SUBJECT_OF = dict(zip(LONG.sessions.img, LONG.sessions.subject))
    for _s in LONG.single:
        logger.info(f"atlas: longitudinal: sub-{_s} has one session (not longitudinal)")


wildcard_constraints:
    sub=r"[A-Za-z0-9]+",


def sst_iter(sub, k, name):
    """Work file of iteration k of the single-subject template of subject ``sub``."""
    return f"{LONGW}/sub-{sub}/iter-{k}/{name}"


def sst_file(sub, suffix):
    """Per-subject (not per-session) derivative: OUT/sub-X/anat/sub-X_<suffix>."""
    return f"{OUT}/sub-{sub}/anat/sub-{sub}_{suffix}"


SST_T1W = "desc-sst_T1w.nii.gz"
SST_MASK = "space-sst_desc-brain_mask.nii.gz"
SST_DSEG = f"space-sst_desc-{METHOD}_dseg.nii.gz"
SST_TO_TPL = {
    "affine": f"from-sst_to-{TPL}_mode-image_desc-affine_xfm.mat",
    "warp": f"from-sst_to-{TPL}_mode-image_desc-warp_xfm.nii.gz",
    "inverse_warp": f"from-{TPL}_to-sst_mode-image_desc-warp_xfm.nii.gz",
    "warped": f"space-{TPL}_desc-sst_T1w.nii.gz",
}
SES_TO_SST = {
    "affine": "from-T1w_to-sst_mode-image_desc-affine_xfm.mat",
    "warp": "from-T1w_to-sst_mode-image_desc-warp_xfm.nii.gz",
    "inverse_warp": "from-sst_to-T1w_mode-image_desc-warp_xfm.nii.gz",
    "warped": f"space-{TPL}_desc-longitudinal_T1w.nii.gz",
    "dseg": "desc-longitudinal_dseg.nii.gz",
    "logjacobian": f"space-{TPL}_desc-logjacobian_map.nii.gz",
}


def sst_init_inputs(w):
    return [
        subject_file(i, f"space-{REF}_desc-preproc_T1w.nii.gz")
        for i in LONG.imgs(w.sub)
    ]


def sst_registration_inputs(w):
    return {
        "template": sst_iter(w.sub, w.k, "template_T1w.nii.gz"),
        "image": subject_file(w.img, "desc-preproc_T1w.nii.gz"),
        "initial_affine": subject_file(w.img, f"from-T1w_to-{REF}_mode-image_xfm.mat"),
    }


def sst_update_inputs(w):
    k = int(w.k) - 1
    imgs = LONG.imgs(w.sub)
    return {
        "template": sst_iter(w.sub, k, "template_T1w.nii.gz"),
        "warped": [sst_iter(w.sub, k, f"{i}_warped.nii.gz") for i in imgs],
        "affines": [sst_iter(w.sub, k, f"{i}_affine.mat") for i in imgs],
        "warps": (
            [sst_iter(w.sub, k, f"{i}_warp.nii.gz") for i in imgs]
            if sst_stage(k, LCFG) == "syn"
            else []
        ),
    }


def long_session_inputs(w):
    sub = SUBJECT_OF[w.img]
    return {
        "image": subject_file(w.img, "desc-preproc_T1w.nii.gz"),
        "affine": sst_iter(sub, SST_LAST, f"{w.img}_affine.mat"),
        "warp": sst_iter(sub, SST_LAST, f"{w.img}_warp.nii.gz"),
        "inverse_warp": sst_iter(sub, SST_LAST, f"{w.img}_inverse-warp.nii.gz"),
        "sst": sst_file(sub, SST_T1W),
        "sst_affine": sst_file(sub, SST_TO_TPL["affine"]),
        "sst_warp": sst_file(sub, SST_TO_TPL["warp"]),
        "sst_inverse_warp": sst_file(sub, SST_TO_TPL["inverse_warp"]),
        "template": TEMPLATE_OUTPUTS["template"],
    } | long_label_inputs(sub)


def long_label_inputs(sub):
    """The labels a session is measured with: its SST's multi-atlas segmentation, or
    without atlases the labelled template's (carried template -> SST -> session)."""
    if SST_ATLASES is None:
        return {"template_dseg": SEG_TPL["dseg"], "label_table": SEG_TPL["table"]}
    return {
        "sst_dseg": sst_file(sub, SST_DSEG),
        "label_table": f"{OUT}/desc-{METHOD}_dseg.tsv",
    }


def sst_segment_inputs(w):
    """The SST as a target of the segmentation's template route: the atlases registered to
    the template once, composed with the SST's template -> SST map."""
    return atlas_inputs(SST_ATLASES[w.sub], "template") | {
        "image": sst_file(w.sub, SST_T1W),
        "mask": sst_file(w.sub, SST_MASK),
        "target_affine": sst_file(w.sub, SST_TO_TPL["affine"]),
        "target_inverse_warp": sst_file(w.sub, SST_TO_TPL["inverse_warp"]),
    }


LONG_GROUP = {
    "volumes": f"{OUT}/group/desc-longitudinal_volumes.tsv",
    "change": f"{OUT}/group/desc-longitudinal_change.tsv",
    "qc": f"{OUT}/group/desc-longitudinal_qc.tsv",
    "model": f"{OUT}/group/desc-longitudinal_mixedlm.tsv",
    "fig_trajectories": f"{FIG}/desc-longitudinal_trajectories.png",
    "fig_logjacobian": f"{FIG}/tpl-{TPL}_desc-logjacobian_map.png",
}


def long_session_files(suffix):
    """That derivative for every session of a longitudinal subject."""
    return [subject_file(i, suffix) for i in LONG.sessions.img] if LONG_ON else []


# Everything the longitudinal stage adds to `rule all` (nothing when it is off).
LONGITUDINAL_TARGETS = (
    [
        *LONG_GROUP.values(),
        *(sst_file(s, SST_T1W) for s in LONG.subjects),
        *(sst_file(s, SST_TO_TPL["warped"]) for s in LONG.subjects),
        *(sst_file(s, SST_DSEG) for s in (SST_ATLASES or [])),
        *(f"{FIG}/sub-{s}_desc-sst_mosaic.png" for s in LONG.subjects),
        *(f for key in SES_TO_SST for f in long_session_files(SES_TO_SST[key])),
    ]
    if LONG_ON
    else []
)
