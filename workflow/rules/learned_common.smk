# Config, targets and input functions of the learned atlas rules (learned.smk).

from pathlib import Path

LCFG = config["learned"]
LNAME = f"{LCFG['name']}Learned"
LDIR = f"{OUT}/tpl-{LNAME}"
LWORK = f"{WORK}/learned"
FROM_COHORT = LCFG["source"] == "cohort"
LRES = RES if FROM_COHORT else "1"
USE_AARN = LCFG["aarn"] and FROM_COHORT
LABELS = LCFG["evaluation_labels"] if FROM_COHORT else None
N_AGES = len(LCFG["ages"])
LEARNED_DEVICE = "cuda" if LCFG["use_gpu"] else "auto"

if LCFG["enabled"]:
    if FROM_COHORT and IMAGES.age.isna().any():
        _stop(
            "learned.source cohort needs an age for every image; missing for "
            + ", ".join(IMAGES.img[IMAGES.age.isna()])
        )
    if FROM_COHORT and len(IMAGES) < 2:
        _stop("learned.source cohort needs at least two images")
    if not FROM_COHORT and not Path(LCFG["source"], "participants.tsv").is_file():
        _stop(f"config key learned.source: no participants.tsv in {LCFG['source']!r}")
    if LCFG["train"]["dice_weight"] > 0 and (FROM_COHORT or not LCFG["label_suffix"]):
        _stop("learned.train.dice_weight > 0 needs a dataset source with label_suffix")


def learned_cohort_path(k, suffix="T1w"):
    return f"{LDIR}/cohort-{k}/tpl-{LNAME}_cohort-{k}_res-{LRES}_{suffix}.nii.gz"


LEARNED = {
    "model": f"{OUT}/learned/model.pt",
    "losses": f"{OUT}/learned/losses.tsv",
    "loss_curve": f"{FIG}/tpl-{LNAME}_desc-loss_plot.png",
    "description": f"{LDIR}/template_description.json",
    "atlases": [learned_cohort_path(k) for k in range(1, N_AGES + 1)],
    "montage": f"{FIG}/tpl-{LNAME}_desc-ages_montage.png",
}
if USE_AARN:
    LEARNED["aarn"] = f"{OUT}/learned/aarn.pt"
    LEARNED["aarn_table"] = f"{OUT}/learned/aarn.tsv"
    LEARNED["scaled"] = [
        learned_cohort_path(k, "desc-agescaled_T1w") for k in range(1, N_AGES + 1)
    ]
if LCFG["train"]["dice_weight"] > 0:
    LEARNED["labels"] = [learned_cohort_path(k, "dseg") for k in range(1, N_AGES + 1)]
if FROM_COHORT:
    LEARNED["evaluation"] = f"{OUT}/group/desc-learned_evaluation.tsv"
    LEARNED["registration"] = f"{OUT}/group/desc-learnedregistration_table.tsv"
LEARNED_TARGETS = [
    *(v for k, v in LEARNED.items() if k not in ("atlases", "scaled", "labels")),
    *LEARNED["atlases"],
    *LEARNED.get("scaled", []),
    *LEARNED.get("labels", []),
    *(subject_files(f"space-{LNAME}_desc-preproc_T1w.nii.gz") if FROM_COHORT else []),
]
AGE = dict(zip(IMAGES.img, IMAGES.age))


def learned_train_resources():
    res = job_resources()
    return dict(res, gpu=1) if LCFG["use_gpu"] else res


def learned_train_inputs(w):
    if FROM_COHORT:
        return {"images": subject_files(f"space-{REF}_desc-preproc_T1w.nii.gz")}
    return {"participants": f"{LCFG['source']}/participants.tsv"}


def learned_label_inputs(w):
    if not LABELS:
        return {}
    return {
        "labels": f"{BIDS_DIR}/{LABELS['dir']}/{w.subdir}/anat/{w.img}_desc-{LABELS['desc']}_dseg.nii.gz",
        "normalisation": subject_file(w.img, f"from-T1w_to-{REF}_mode-image_xfm.mat"),
        "reference": rules.reference.output.out_image,
    }


def learned_label_output(method):
    if not LABELS:
        return {}
    return {"out_labels": f"{LWORK}/eval/{method}/{{subdir}}/{{img}}_dseg.nii.gz"}


def learned_eval_files(method, name):
    return [f"{LWORK}/eval/{method}/{SUBDIR[i]}/{i}_{name}" for i in IMAGES.img]
