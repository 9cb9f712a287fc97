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
    assert train_params(ds, IMAGES) == {"image_suffix": "desc-norm_T1w", "label_suffix": None}
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
    assert params == {
        "affine_metric": "mattes",
        "affine_iterations": [10],
        "metric": "CC",
        "iterations": [5],
        "transform": "SyN",
    }
