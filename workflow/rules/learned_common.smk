# Learned atlas: config access, paths and input functions of learned.smk (no rules, no
# logic: decisions are made by atlas.learn.plan).
from atlas.learn.plan import (
    check_learned_config,
    iterative_registration_params,
    plan_learned,
    train_params,
    train_resources,
)

LCFG = config["learned"]
LPLAN = plan_learned(LCFG, RES)
LNAME = LPLAN.name
LDIR = f"{OUT}/tpl-{LNAME}"
LWORK = f"{WORK}/learned"
FROM_COHORT = LPLAN.from_cohort
LABELS = LPLAN.eval_labels
N_AGES = len(LCFG["ages"])
AGE = dict(zip(IMAGES.img, IMAGES.age))

if LCFG["enabled"]:
    try:
        check_learned_config(LCFG, IMAGES)
    except InputError as exc:
        _stop(str(exc))


def learned_cohort_paths(suffix="T1w"):
    return [
        f"{LDIR}/cohort-{k}/tpl-{LNAME}_cohort-{k}_res-{LPLAN.res_label}_{suffix}.nii.gz"
        for k in range(1, N_AGES + 1)
    ]


LEARNED = {
    "model": f"{OUT}/learned/model.pt",
    "losses": f"{OUT}/learned/losses.tsv",
    "loss_curve": f"{FIG}/tpl-{LNAME}_desc-loss_plot.png",
    "description": f"{LDIR}/template_description.json",
    "atlases": learned_cohort_paths(),
    "montage": f"{FIG}/tpl-{LNAME}_desc-ages_montage.png",
}
if LPLAN.use_aarn:
    LEARNED["aarn"] = f"{OUT}/learned/aarn.pt"
    LEARNED["aarn_table"] = f"{OUT}/learned/aarn.tsv"
    LEARNED["scaled"] = learned_cohort_paths("desc-agescaled_T1w")
if LPLAN.learns_labels:
    LEARNED["labels"] = learned_cohort_paths("dseg")
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
