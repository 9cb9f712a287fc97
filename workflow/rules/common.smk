# Inputs, paths and config access shared by all rules. Everything here runs when the
# workflow is parsed, before any job: a bad dataset stops the run with one message.
import sys

from atlas.bids import find_t1w, validate_images
from atlas.demo import make_demo_bids
from atlas.io import InputError
from atlas.preprocess.plan import preprocess_settings
from atlas.preprocess.reference import check_reference, reference_space
from atlas.registration import uses_gpu
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
# Software environment of each rule family (`--sdm conda`), relative to the rule files
ENV_ANTS = "../../envs/registration.yaml"  # ANTs registration, preprocessing, fusion
ENV_TORCH = "../../envs/torch.yaml"  # learned atlases
ENV_REPORT = "../../envs/reporting.yaml"  # tables, figures, provenance


container: config["container"]  # --sdm apptainer: the image built from Containerfile


def _stop(msg):
    sys.stderr.write(f"\natlas: {msg}\n\n")
    sys.exit(1)


# Parse-time caches (every cluster job re-parses the workflow): in Snakemake's own folder,
# so that a run stopped by bad input before any job leaves output_dir and work_dir untouched.
PARSE_CACHE = ".snakemake/atlas"

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
            cache=f"{PARSE_CACHE}/bids_t1w.json",  # pybids queried once per dataset state
        ),
        config["on_bad_subject"],
        cache=f"{PARSE_CACHE}/image_validation.json",  # voxels read once, not per job
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


def job_resources(family="registration", gpu=False):
    """Scheduler resources of a job of rule ``family`` (a key of ``cluster.families``).

    ``mem_mb`` and ``runtime`` (minutes) are the family's measured sizes (README,
    "Running on a cluster") times ``cluster.scale``; ``slurm_partition`` and
    ``slurm_account`` are added when set; ``gpu`` jobs (the GPU request itself is
    ``gpu=1``, added by the learned rules) go to ``cluster.gpu_partition`` with
    ``cluster.cpus_per_gpu`` CPUs. Local runs ignore all but ``mem_mb``.
    """
    ccfg = config["cluster"]
    size = ccfg["families"][family]
    # jobs that hold every image at once (template averages) grow with the cohort and
    # with the grid's voxel count (mem_mb_per_image is for a 2 mm grid)
    per_image = size.get("mem_mb_per_image", 0) * (2.0 / config["resolution"]) ** 3
    mem_mb = (size["mem_mb"] + per_image * len(IMAGES)) * ccfg["scale"]
    res = {
        "mem_mb": int(round(mem_mb)),
        "runtime": max(1, int(round(size["runtime"] * ccfg["scale"]))),
    }
    partition = (ccfg["gpu_partition"] if gpu else None) or ccfg["partition"]
    if partition:
        res["slurm_partition"] = partition
    if ccfg["account"]:
        res["slurm_account"] = ccfg["account"]
    if gpu:
        res["cpus_per_gpu"] = ccfg["cpus_per_gpu"]
    return res


def registration_resources(block):
    """:func:`job_resources` of a registration rule whose engine is set by config ``block``
    (``template``, ``segmentation.registration``), with ``gpu=1`` when it runs FireANTs on
    CUDA (:func:`atlas.registration.uses_gpu`)."""
    gpu = uses_gpu(block)
    res = job_resources("registration", gpu=gpu)
    return dict(res, gpu=1) if gpu else res


# --- template iterations (stage and stage_params: atlas.template.plan) ---
def registration_inputs(w):
    # iteration 0 starts from the affine normalisation, iteration k from iteration k-1's
    # affine (the template moved little since: the affine optimisation converges sooner)
    k = int(w.k)
    return {
        "template": iter_path(k, "template_T1w.nii.gz"),
        "image": subject_file(w.img, "desc-preproc_T1w.nii.gz"),
        "initial_affine": (
            iter_path(k - 1, f"{w.img}_affine.mat")
            if k
            else subject_file(w.img, f"from-T1w_to-{REF}_mode-image_xfm.mat")
        ),
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
