# Multi-atlas segmentation: config, atlas discovery (at parse time: a bad atlas stops the
# run with one message) and input functions; the rules are in segment.smk. With no
# atlases, `snakemake segmentation` gives Atropos tissue maps of the template only.
import re
from pathlib import Path

from atlas.segmentation import find_atlases, same_scan_or_subject

SEG = config["segmentation"]
SEG_ON = bool(SEG["atlases"])
METHOD = SEG["fusion"]
SEGW = f"{WORK}/segmentation"
SEG_STEP = "segmentation.{}"
TISSUES = ["CSF", "GM", "WM"]

if SEG_ON:
    try:
        LABELLED, LABEL_TABLE = find_atlases(
            SEG["atlases"], SEG["label_table"], SEG["evaluation"]
        )
    except InputError as exc:
        _stop(str(exc))
    LABELLED = LABELLED.set_index("id", drop=False)
    ATLASES = list(LABELLED.index[LABELLED.role == "atlas"])
    EVAL_MODE = SEG["evaluation"]["mode"]
    EVAL_IDS = {
        "none": [],
        "loo": ATLASES,
        "split": list(LABELLED.index[LABELLED.role == "test"]),
    }[EVAL_MODE]
    if EVAL_MODE == "loo" and len(ATLASES) < 2:
        _stop("config key segmentation.evaluation.mode: loo needs at least two atlases")
    _bids_root = str(Path(BIDS_DIR).resolve())
    _row = IMAGES.set_index("img")
    # Atlases allowed to label each image: never its own scan or another session of its subject.
    IMG_ATLASES = {
        img: [
            a
            for a in ATLASES
            if not same_scan_or_subject(
                LABELLED.loc[a],
                _bids_root,
                _row.loc[img, "subject"],
                _row.loc[img, "path"],
            )
        ]
        for img in IMAGES.img
    }
    for _img, _ids in IMG_ATLASES.items():
        if not _ids:
            _stop(f"config key segmentation.atlases: no atlas left to label {_img}")
    # Held-out labelled scans that are also workflow images (same file): in the template
    # route their evaluation reuses the image's template transforms from the template build
    # (the preprocessing is the same function of the same file) instead of registering again.
    _by_path = {Path(p).resolve(): i for i, p in zip(IMAGES.img, IMAGES.path)}
    _eval_paths = {a: Path(LABELLED.loc[a, "t1w"]).resolve() for a in EVAL_IDS}
    EVAL_IMG = {a: _by_path[p] for a, p in _eval_paths.items() if p in _by_path}
else:
    LABELLED, ATLASES, EVAL_IDS, IMG_ATLASES, LABEL_TABLE = None, [], [], {}, None
    EVAL_IMG = {}


wildcard_constraints:
    atlas="|".join(map(re.escape, LABELLED.index)) if SEG_ON else "(?!)",


def atlas_file(atlas, name):
    return f"{SEGW}/atlases/{atlas}_{name}"


def atlas_files(ids, name):
    return [atlas_file(a, name) for a in ids]


def to_template(atlas, name):
    """Atlas -> template registration files (template route and labelled template)."""
    return f"{SEGW}/template/{atlas}_{name}"


SEG_TPL = {
    "dseg": f"{TPL_DIR}/tpl-{TPL}_res-{RES}_dseg.nii.gz",
    "table": f"{TPL_DIR}/tpl-{TPL}_dseg.tsv",
    "probseg": [
        f"{TPL_DIR}/tpl-{TPL}_res-{RES}_label-{t}_probseg.nii.gz" for t in TISSUES
    ],
}
SEG_GROUP = {
    "tidy": f"{OUT}/group/desc-{METHOD}_volumes.tsv",
    "wide": f"{OUT}/group/desc-{METHOD}wide_volumes.tsv",
    "qc": f"{OUT}/group/desc-{METHOD}_segmentationqc.tsv",
    "fig": f"{FIG}/desc-{METHOD}_volumesage.png",
}
# Evaluation scores every method of segmentation.evaluation.methods (default: the fusion).
EVAL_METHODS = SEG["evaluation"].get("methods") or [METHOD]
SEG_EVAL = {
    "table": f"{OUT}/group/desc-fusion_evaluation.tsv",
    "summary": f"{OUT}/group/desc-fusionsummary_evaluation.tsv",
    "fig": f"{FIG}/desc-fusion_evaluation.png",
}
PROBSEG = [f"label-{t}_desc-{METHOD}_probseg.nii.gz" for t in TISSUES]
PREPROCESS_KW = {
    "resolution": config["resolution"],
    "skull_strip": config["skull_strip"],
    "head_template": config["skull_strip_template"]["head"],
    "head_mask": config["skull_strip_template"]["mask"],
    "intensity": config["intensity_normalisation"],
    "max_brain_ml": config["brain_only_max_volume_ml"],
    "margin_mm": config["fov_margin_mm"],
    "seed": config["seed"],
}
FUSION = {
    "method": METHOD,
    "min_ncc": SEG["qc"]["min_ncc"],
    "min_atlases": SEG["qc"]["min_atlases"],
    "label_interpolation": SEG["label_interpolation"],
    "patch_radius_mm": SEG["patch_radius_mm"],
    "search_radius_mm": SEG["search_radius_mm"],
}
# Everything the segmentation adds to `rule all` (nothing without atlases).
SEGMENT_TARGETS = (
    [
        f"{OUT}/desc-{METHOD}_dseg.tsv",
        *subject_files(f"desc-{METHOD}_dseg.nii.gz"),
        *[f for p in PROBSEG if SEG["probseg"] for f in subject_files(p)],
        SEG_TPL["dseg"],
        SEG_TPL["table"],
        *SEG_TPL["probseg"],
        *SEG_GROUP.values(),
        *(SEG_EVAL.values() if EVAL_IDS else []),
    ]
    if SEG_ON
    else []
)


def fuse_inputs(w):
    ids = IMG_ATLASES[w.img]
    common = {
        "image": subject_file(w.img, "desc-preproc_T1w.nii.gz"),
        "mask": subject_file(w.img, "desc-brain_mask.nii.gz"),
        "table": LABEL_TABLE,
        "atlas_images": atlas_files(ids, "desc-preproc_T1w.nii.gz"),
        "atlas_dsegs": atlas_files(ids, "dseg.nii.gz"),
    }
    if SEG["route"] == "direct":
        return common | {
            "atlas_affines": [f"{SEGW}/direct/{w.img}/{a}_affine.mat" for a in ids],
            "atlas_warps": [f"{SEGW}/direct/{w.img}/{a}_warp.nii.gz" for a in ids],
        }
    return common | {
        "atlas_affines": [to_template(a, "affine.mat") for a in ids],
        "atlas_warps": [to_template(a, "warp.nii.gz") for a in ids],
        "target_affine": subject_file(
            w.img, f"from-T1w_to-{TPL}_mode-image_desc-affine_xfm.mat"
        ),
        "target_inverse_warp": subject_file(
            w.img, f"from-{TPL}_to-T1w_mode-image_desc-warp_xfm.nii.gz"
        ),
    }


def eval_atlases(held_out):
    """Atlases that label a held-out scan: all others except rescans of its subject."""
    row = LABELLED.loc[held_out]
    return [
        a
        for a in ATLASES
        if not same_scan_or_subject(
            LABELLED.loc[a], row["dataset"], row["subject"], row["t1w"]
        )
    ]


def evaluate_inputs(w):
    others = eval_atlases(w.atlas)
    files = {
        "image": atlas_file(w.atlas, "desc-preproc_T1w.nii.gz"),
        "mask": atlas_file(w.atlas, "desc-brain_mask.nii.gz"),
        "dseg": atlas_file(w.atlas, "dseg.nii.gz"),
        "table": LABEL_TABLE,
        "atlas_images": atlas_files(others, "desc-preproc_T1w.nii.gz"),
        "atlas_dsegs": atlas_files(others, "dseg.nii.gz"),
    }
    if SEG["route"] == "template":
        files |= {
            "atlas_affines": [to_template(a, "affine.mat") for a in others],
            "atlas_warps": [to_template(a, "warp.nii.gz") for a in others],
        }
        files |= target_to_template(w.atlas)
    return files


def target_to_template(atlas):
    """Template route: the held-out scan's image, mask and template transforms: those of the
    template build when the scan is a workflow image, else its own registration."""
    if atlas not in EVAL_IMG:
        return {
            "target_affine": to_template(atlas, "affine.mat"),
            "target_inverse_warp": to_template(atlas, "inverse-warp.nii.gz"),
        }
    img = EVAL_IMG[atlas]
    return {
        "image": subject_file(img, "desc-preproc_T1w.nii.gz"),
        "mask": subject_file(img, "desc-brain_mask.nii.gz"),
        "target_affine": subject_file(
            img, f"from-T1w_to-{TPL}_mode-image_desc-affine_xfm.mat"
        ),
        "target_inverse_warp": subject_file(
            img, f"from-{TPL}_to-T1w_mode-image_desc-warp_xfm.nii.gz"
        ),
    }
