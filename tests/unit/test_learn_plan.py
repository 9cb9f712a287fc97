"""Parse-time decisions and checks of the learned-atlas rules (atlas.learn.plan)."""

import copy

import numpy as np
import pandas as pd
import pytest

from atlas.io import InputError
from atlas.learn.plan import (
    check_learned_config,
    iterative_registration_params,
    plan_learned,
    train_hyper,
    train_params,
    train_resources,
)

LCFG = {
    "enabled": True,
    "use_gpu": False,
    "name": "atlas",
    "source": "cohort",
    "image_suffix": "desc-norm_T1w",
    "label_suffix": None,
    "ages": [30, 50],
    "age_units": "years",
    "aarn": True,
    "evaluation_labels": {"dir": "derivatives/dlmuse", "desc": "dlmuse"},
    "tissue_weight": 0.0,
    "tissue_suffix": None,
    "adversarial": False,
    "discriminator": {
        "weight": 0.3,
        "lr": 0.0002,
        "loss": "lsgan",
        "penalty": "r1",
        "penalty_weight": 1.0,
        "warmup_steps": 500,
        "channels": [16, 32, 64],
    },
    "train": {"dice_weight": 0.0, "use_sex": False, "seed": 0},
}
IMAGES = pd.DataFrame({"img": ["sub-01", "sub-02"], "age": [30.0, 60.0], "sex": ["F", None]})


def cfg(**changes):
    out = copy.deepcopy(LCFG)
    for key, value in changes.items():
        if key in out["train"]:
            out["train"][key] = value
        else:
            out[key] = value
    return out


def test_plan_of_a_cohort_and_of_a_dataset_source():
    plan = plan_learned(LCFG, "2")
    assert (plan.name, plan.from_cohort, plan.res_label) == ("atlasLearned", True, "2")
    assert plan.use_aarn and not plan.learns_labels and plan.device == "auto"
    assert plan.eval_labels == LCFG["evaluation_labels"]
    ds = plan_learned(cfg(source="/data/oasis", use_gpu=True, dice_weight=1.0), "2")
    assert (ds.from_cohort, ds.res_label, ds.use_aarn, ds.eval_labels) == (False, "1", False, None)
    assert ds.learns_labels and ds.device == "cuda"


def test_check_accepts_a_valid_cohort_and_dataset(tmp_path):
    check_learned_config(LCFG, IMAGES)
    (tmp_path / "participants.tsv").write_text("participant_id\tage\n")
    source = str(tmp_path)
    check_learned_config(cfg(source=source, label_suffix="desc-seg_dseg", dice_weight=1.0), IMAGES)


@pytest.mark.parametrize(
    ("changes", "images", "key"),
    [
        ({}, IMAGES.assign(age=[30.0, np.nan]), "learned.source: .* age .* sub-02"),
        ({}, IMAGES.iloc[:1], "learned.source: .* two images"),
        ({"use_sex": True}, IMAGES, "learned.train.use_sex"),
        ({"source": "/nonexistent"}, IMAGES, "learned.source: no participants.tsv"),
        ({"dice_weight": 0.5}, IMAGES, "learned.train.dice_weight"),
    ],
)
def test_check_names_the_config_key(changes, images, key):
    with pytest.raises(InputError, match=f"config key {key}"):
        check_learned_config(cfg(**changes), images)


def test_dice_on_a_dataset_needs_a_label_suffix(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tage\n")
    with pytest.raises(InputError, match="learned.label_suffix"):
        check_learned_config(cfg(source=str(tmp_path), dice_weight=1.0), IMAGES)


def test_train_params_by_source():
    assert train_params(LCFG, IMAGES) == {
        "ages": [30.0, 60.0],
        "sex": ["F", "n/a"],
        "subjects": ["sub-01", "sub-02"],
    }
    ds = cfg(source="/data", label_suffix="desc-seg_dseg")
    assert train_params(ds, IMAGES) == {
        "image_suffix": "desc-norm_T1w",
        "label_suffix": None,
        "tissue_suffix": None,
    }
    ds["train"]["dice_weight"] = 1.0
    assert train_params(ds, IMAGES)["label_suffix"] == "desc-seg_dseg"


def test_train_resources_and_registration_params():
    base = {"mem_mb": 4000, "runtime": 60}
    assert train_resources(LCFG, base) == base
    assert train_resources(cfg(use_gpu=True), base) == dict(base, gpu=1)
    tcfg = {
        "affine_iterations": 2,
        "syn_iterations": 3,
        "affine": {"affine_metric": "mattes", "affine_iterations": [10]},
        "syn": {"metric": "CC", "iterations": [5]},
    }
    params = iterative_registration_params(tcfg)
    expected = {
        "affine_metric": "mattes",
        "affine_iterations": [10],
        "metric": "CC",
        "iterations": [5],
        "transform": "SyN",
    }
    # The template's last SyN stage settings (backend-specific keys may come with them).
    assert {k: params[k] for k in expected} == expected


def test_variant_switches_reach_the_training_config():
    from atlas.learn.training import DEFAULT_CONFIG

    hyper = train_hyper(cfg(adversarial=True, tissue_weight=0.5))
    assert set(hyper) <= set(DEFAULT_CONFIG)
    assert hyper["adversarial"] and hyper["tissue_weight"] == 0.5
    assert (hyper["disc_lr"], hyper["disc_warmup_steps"], hyper["adversarial_weight"]) == (
        0.0002,
        500,
        0.3,
    )


def test_tissue_variant_of_a_cohort_learns_the_atropos_classes():
    """Cohort source: tissue maps from Atropos (CSF, GM, WM), no tissue_suffix; the cohort
    train params are unchanged (the tissue maps are rule inputs)."""
    tissue = cfg(tissue_weight=1.0)
    check_learned_config(tissue, IMAGES)
    assert plan_learned(tissue, "3").tissue_names == ("CSF", "GM", "WM")
    assert plan_learned(LCFG, "3").tissue_names == ()
    assert train_params(tissue, IMAGES) == train_params(LCFG, IMAGES)
    with pytest.raises(InputError, match="config key learned.tissue_suffix: dataset source"):
        check_learned_config(cfg(tissue_weight=1.0, tissue_suffix="desc-seg4_dseg"), IMAGES)
    check_learned_config(cfg(tissue_suffix="desc-seg4_dseg"), IMAGES)  # unused: weight 0


def test_tissue_variant_of_a_dataset_needs_a_tissue_table(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tage\n")
    with pytest.raises(
        InputError, match="config key learned.tissue_weight: .*learned.tissue_suffix"
    ):
        check_learned_config(cfg(source=str(tmp_path), tissue_weight=1.0), IMAGES)
    ds = cfg(source=str(tmp_path), tissue_weight=1.0, tissue_suffix="desc-seg4_dseg")
    with pytest.raises(InputError, match="learned.tissue_suffix"):
        check_learned_config(ds, IMAGES)  # no desc-seg4_dseg.tsv
    (tmp_path / "desc-seg4_dseg.tsv").write_text(
        "index\tname\n0\tUnknown\n1\tCortex\n2\tWhite-Matter\n3\tCSF\n"
    )
    check_learned_config(ds, IMAGES)
    assert plan_learned(ds, "1").tissue_names == ("GM", "WM", "CSF")
    assert train_params(ds, IMAGES)["tissue_suffix"] == "desc-seg4_dseg"
    with pytest.raises(InputError, match="dice_weight"):
        both = cfg(source=str(tmp_path), tissue_weight=1.0, tissue_suffix="desc-seg4_dseg")
        both["train"]["dice_weight"] = 1.0
        check_learned_config(both | {"label_suffix": "desc-seg4_dseg"}, IMAGES)
