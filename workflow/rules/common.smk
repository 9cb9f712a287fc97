# Inputs, paths and config access shared by all rules. Everything here runs when the
# workflow is parsed, before any job: a bad dataset stops the run with one message.
import sys

from atlas.bids import find_t1w, validate_images
from atlas.demo import make_demo_bids
from atlas.io import InputError
from atlas.preprocess.plan import preprocess_settings
from atlas.preprocess.reference import check_reference, reference_space
from atlas.template.plan import check_template_config, stage, stage_params

OUT = config["output_dir"]
WORK = config["work_dir"]
TPL = config["template"]["name"]
REF = reference_space(config["reference"])  # space- label of the normalised images
RES = f"{config['resolution']:g}".replace(".", "p")
N_AFFINE = config["template"]["affine_iterations"]
N_SYN = config["template"]["syn_iterations"]
N_ITER = N_AFFINE + N_SYN
RUN = "../scripts/run.py"
ENV = "../../envs/atlas.yaml"


def _stop(msg):
    sys.stderr.write(f"\natlas: {msg}\n\n")
    sys.exit(1)


try:
    check_template_config(config["template"])
    check_reference(config["reference"], config["reference_mask"])
    BIDS_DIR = config["bids_dir"] or str(
        make_demo_bids(
            config["demo"]["dir"], config["demo"]["n_subjects"], config["demo"]["seed"]
        )
    )
    IMAGES = validate_images(
        find_t1w(
            BIDS_DIR,
            config["participant_label"],
            config["exclude_participant_label"],
            config["session"],
        ),
        config["on_bad_subject"],
    )
except InputError as exc:
    _stop(str(exc))

for _img, _why in IMAGES.attrs.get("excluded", {}).items():
    logger.warning(f"atlas: excluded {_img}: {_why}")

SOURCE = dict(zip(IMAGES.img, IMAGES.path))
PREPROCESS_SETTINGS = preprocess_settings(config)
SUBDIR = dict(zip(IMAGES.img, IMAGES.subdir))


wildcard_constraints:
    subdir=r"sub-[A-Za-z0-9]+(/ses-[A-Za-z0-9]+)?",
    img=r"sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?",
    k=r"\d+",


def subject_path(suffix):
    """Pattern of a per-image derivative: OUT/sub-X[/ses-Y]/anat/sub-X[_ses-Y]_<suffix>."""
    return f"{OUT}/{{subdir}}/anat/{{img}}_{suffix}"


def subject_file(img, suffix):
    """Concrete per-image derivative path for one image id."""
    return subject_path(suffix).format(subdir=SUBDIR[img], img=img)


def subject_files(suffix):
    """That derivative for every selected image."""
    return [subject_file(i, suffix.format(tpl=TPL, ref=REF)) for i in IMAGES.img]


def iter_path(k, name):
    """Work file of template iteration k."""
    return f"{WORK}/template/iter-{k}/{name}"


def job_resources(factor=1):
    return {
        "mem_mb": config["mem_mb"] * factor,
        "runtime": config["runtime_min"] * factor,
    }


# --- template iterations (stage and stage_params: atlas.template.plan) ---
def registration_inputs(w):
    return {
        "template": iter_path(w.k, "template_T1w.nii.gz"),
        "image": subject_file(w.img, "desc-preproc_T1w.nii.gz"),
        "initial_affine": subject_file(w.img, f"from-T1w_to-{REF}_mode-image_xfm.mat"),
    }


def update_inputs(w):
    k = int(w.k) - 1
    imgs = list(IMAGES.img)
    return {
        "template": iter_path(k, "template_T1w.nii.gz"),
        "warped": [iter_path(k, f"{i}_warped.nii.gz") for i in imgs],
        "affines": [iter_path(k, f"{i}_affine.mat") for i in imgs],
        "warps": (
            [iter_path(k, f"{i}_warp.nii.gz") for i in imgs]
            if stage(k, N_AFFINE) == "syn"
            else []
        ),
    }
