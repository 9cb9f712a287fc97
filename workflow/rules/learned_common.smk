# Learned atlas: config access, paths and input functions of learned.smk (no rules, no
# logic: decisions are made by atlas.learn.plan).
from atlas.learn.plan import (
    check_learned_config,
    iterative_registration_params,
    plan_learned,
    train_hyper,
    train_params,
    train_resources,
)

LEARNED_CFG = config["learned"]
LPLAN = plan_learned(LEARNED_CFG, RES)
LNAME = LPLAN.name
LDIR = f"{OUT}/tpl-{LNAME}"
LWORK = f"{WORK}/learned"
FROM_COHORT = LPLAN.from_cohort
LABELS = LPLAN.eval_labels
N_AGES = len(LEARNED_CFG["ages"])
AGE = dict(zip(IMAGES.img, IMAGES.age))

if LEARNED_CFG["enabled"]:
    try:
        check_learned_config(LEARNED_CFG, IMAGES)
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
if LPLAN.tissue_names:
    LEARNED["probseg"] = [
        path
        for k in range(N_AGES)
        for path in (
            learned_cohort_paths(f"label-{t}_probseg")[k] for t in LPLAN.tissue_names
        )
    ]
    LEARNED["tissue_dseg"] = learned_cohort_paths("dseg")
    LEARNED["tissue_table"] = f"{LDIR}/tpl-{LNAME}_dseg.tsv"
if FROM_COHORT:
    LEARNED["evaluation"] = f"{OUT}/group/desc-learned_evaluation.tsv"
    LEARNED["registration"] = f"{OUT}/group/desc-learnedregistration_table.tsv"
LEARNED_TARGETS = [
    *(
        v
        for k, v in LEARNED.items()
        if k not in ("atlases", "scaled", "labels", "probseg", "tissue_dseg")
    ),
    *LEARNED["atlases"],
    *LEARNED.get("scaled", []),
    *LEARNED.get("labels", []),
    *LEARNED.get("probseg", []),
    *LEARNED.get("tissue_dseg", []),
    *(subject_files(f"space-{LNAME}_desc-preproc_T1w.nii.gz") if FROM_COHORT else []),
]


# Atropos tissue map of each normalised training image (cohort source, tissue_weight > 0)
LEARNED_TISSUE = (
    f"{LWORK}/tissue/{{subdir}}/{{img}}_space-{REF}_desc-atropos_dseg.nii.gz"
)


def learned_train_inputs(w):
    if not FROM_COHORT:
        return {"participants": f"{LEARNED_CFG['source']}/participants.tsv"}
    inputs = {"images": subject_files(f"space-{REF}_desc-preproc_T1w.nii.gz")}
    if LPLAN.tissue_names:
        inputs["tissues"] = [
            LEARNED_TISSUE.format(subdir=SUBDIR[i], img=i) for i in IMAGES.img
        ]
    return inputs


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
