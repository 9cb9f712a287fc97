# Multi-atlas segmentation: config access, paths and input functions of segment.smk (no rules, no
# logic: decisions are made by atlas.segmentation.plan).
import re

from atlas.segmentation.labels import TISSUE_CLASSES
from atlas.segmentation.plan import (
    evaluation_methods,
    fusion_settings,
    plan_segmentation,
    segment_targets,
)

SEG = config["segmentation"]
METHOD = SEG["fusion"]
SEGW = f"{WORK}/segmentation"

try:
    PLAN = plan_segmentation(SEG, IMAGES, BIDS_DIR)
    FUSION = fusion_settings(SEG)
    EVAL_METHODS = evaluation_methods(SEG)
except InputError as exc:
    _stop(str(exc))

SEG_ON = PLAN is not None
ATLASES = PLAN.atlases if SEG_ON else []
EVAL_IDS = PLAN.eval_ids if SEG_ON else []
LABEL_TABLE = str(PLAN.label_table) if SEG_ON else []


wildcard_constraints:
    atlas="|".join(map(re.escape, PLAN.labelled.index)) if SEG_ON else "(?!)",


def atlas_file(atlas, name):
    """Preprocessed atlas files (T1w, brain mask, dseg on its native grid)."""
    return f"{SEGW}/atlases/{atlas}_{name}"


def atlas_files(ids, name):
    return [atlas_file(a, name) for a in ids]


def to_template(atlas, name):
    """Atlas -> template registration files (template route and labelled template)."""
    return f"{SEGW}/template/{atlas}_{name}"


def direct(img, atlas, name):
    """Atlas -> image registration files (direct route)."""
    return f"{SEGW}/direct/{img}/{atlas}_{name}"


def template_transforms(img):
    """A workflow image's template -> image map from the template build."""
    return {
        "target_affine": subject_file(
            img, f"from-T1w_to-{TPL}_mode-image_desc-affine_xfm.mat"
        ),
        "target_inverse_warp": subject_file(
            img, f"from-{TPL}_to-T1w_mode-image_desc-warp_xfm.nii.gz"
        ),
    }


def atlas_inputs(ids, route):
    """Preprocessed atlases and, per route, their registrations (direct: to be given)."""
    files = {
        "table": LABEL_TABLE,
        "atlas_images": atlas_files(ids, "desc-preproc_T1w.nii.gz"),
        "atlas_dsegs": atlas_files(ids, "dseg.nii.gz"),
    }
    if route == "template":
        files |= {
            "atlas_affines": [to_template(a, "affine.mat") for a in ids],
            "atlas_warps": [to_template(a, "warp.nii.gz") for a in ids],
        }
    return files


SEG_TPL = {
    "dseg": f"{TPL_DIR}/tpl-{TPL}_res-{RES}_dseg.nii.gz",
    "table": f"{TPL_DIR}/tpl-{TPL}_dseg.tsv",
    "probseg": [
        f"{TPL_DIR}/tpl-{TPL}_res-{RES}_label-{t}_probseg.nii.gz"
        for t in TISSUE_CLASSES
    ],
}
SEG_GROUP = {
    "tidy": f"{OUT}/group/desc-{METHOD}_volumes.tsv",
    "wide": f"{OUT}/group/desc-{METHOD}wide_volumes.tsv",
    "qc": f"{OUT}/group/desc-{METHOD}_segmentationqc.tsv",
    "fig": f"{FIG}/desc-{METHOD}_volumesage.png",
}
SEG_EVAL = {
    "table": f"{OUT}/group/desc-fusion_evaluation.tsv",
    "summary": f"{OUT}/group/desc-fusionsummary_evaluation.tsv",
    "fig": f"{FIG}/desc-fusion_evaluation.png",
}
SEG_FIGURE = f"{FIG}/{{img}}_desc-{METHOD}_dseg.png"
PROBSEG = [f"label-{t}_desc-{METHOD}_probseg.nii.gz" for t in TISSUE_CLASSES]
# Everything the segmentation adds to `rule all` (nothing without atlases).
SEGMENT_TARGETS = segment_targets(
    PLAN,
    {
        "table": [f"{OUT}/desc-{METHOD}_dseg.tsv"],
        "dseg": [
            *subject_files(f"desc-{METHOD}_dseg.nii.gz"),
            *(SEG_FIGURE.format(img=i) for i in IMAGES.img),
        ],
        "probseg": [f for p in PROBSEG for f in subject_files(p)],
        "template": [SEG_TPL["dseg"], SEG_TPL["table"], *SEG_TPL["probseg"]],
        "group": list(SEG_GROUP.values()),
        "evaluation": list(SEG_EVAL.values()),
    },
    probseg=SEG["probseg"],
)


def fuse_inputs(w):
    ids = PLAN.image_atlases[w.img]
    files = {
        "image": subject_file(w.img, "desc-preproc_T1w.nii.gz"),
        "mask": subject_file(w.img, "desc-brain_mask.nii.gz"),
    } | atlas_inputs(ids, SEG["route"])
    if SEG["route"] == "direct":
        return files | {
            "atlas_affines": [direct(w.img, a, "affine.mat") for a in ids],
            "atlas_warps": [direct(w.img, a, "warp.nii.gz") for a in ids],
        }
    return files | template_transforms(w.img)


def prepare_inputs(w):
    """A labelled scan and its labels; a held-out scan that is also a workflow image brings
    that image's preprocessing (the same function of the same file), not run twice."""
    files = {
        "t1w": PLAN.labelled.loc[w.atlas, "t1w"],
        "dseg": PLAN.labelled.loc[w.atlas, "dseg"],
    }
    img = PLAN.eval_images.get(w.atlas)
    if img is None:
        return files
    return files | {
        "preprocessed_image": subject_file(img, "desc-preproc_T1w.nii.gz"),
        "preprocessed_mask": subject_file(img, "desc-brain_mask.nii.gz"),
    }


def evaluate_inputs(w):
    """A held-out scan, its own labels and the atlases labelling it. Template route: its
    template transforms are those of the template build when the scan is a workflow image
    (image and mask then that image's too), else its own registration to the template.
    """
    files = {
        "image": atlas_file(w.atlas, "desc-preproc_T1w.nii.gz"),
        "mask": atlas_file(w.atlas, "desc-brain_mask.nii.gz"),
        "dseg": atlas_file(w.atlas, "dseg.nii.gz"),
    } | atlas_inputs(PLAN.eval_atlases(w.atlas), SEG["route"])
    if SEG["route"] == "direct":
        return files
    img = PLAN.eval_images.get(w.atlas)
    if img is None:
        return files | {
            "target_affine": to_template(w.atlas, "affine.mat"),
            "target_inverse_warp": to_template(w.atlas, "inverse-warp.nii.gz"),
        }
    return (
        files
        | template_transforms(img)
        | {
            "image": subject_file(img, "desc-preproc_T1w.nii.gz"),
            "mask": subject_file(img, "desc-brain_mask.nii.gz"),
        }
    )
