"""The template convergence criterion: met / not met on convergence tables, its default
is the one in config/config.yaml, and the schema checks it."""

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from atlas.template.convergence import DEFAULT_CRITERION, evaluate_convergence

ROOT = Path(__file__).resolve().parents[2]


def _table(changes, n_affine=2):
    """Convergence table: ``n_affine`` affine rows then SyN rows, template change per row."""
    return pd.DataFrame(
        {
            "iteration": range(len(changes)),
            "stage": ["affine"] * n_affine + ["syn"] * (len(changes) - n_affine),
            "mean_warp_mm": [math.nan] * n_affine + [0.2] * (len(changes) - n_affine),
            "template_change": changes,
            "mean_ncc": 0.9,
        }
    )


def test_met_when_the_last_syn_iterations_are_below_the_threshold():
    """IXI-like: 0.30 after the first affine iteration, then 1e-3 .. 3e-5."""
    out = evaluate_convergence(_table([0.30, 2e-3, 1.2e-3, 1.5e-4, 3e-5]))
    assert out["met"] is True
    assert out["values"] == [1.5e-4, 3e-5] and out["iterations_checked"] == [3, 4]
    assert out["criterion"] == {
        "measure": "template_change",
        "stage": "syn",
        "max_template_change": 1e-3,
        "iterations": 2,
    }
    assert out["message"] == (
        "convergence criterion met: template change < 0.001 in each of the last 2 SyN "
        "iterations (0.00015, 3e-05)"
    )


def test_not_met_names_the_fix():
    out = evaluate_convergence(_table([0.30, 2e-3, 1.8e-3, 1.5e-4]))
    assert out["met"] is False and out["values"] == [1.8e-3, 1.5e-4]
    assert out["message"].endswith(
        "got 0.0018, 0.00015; the template is still changing: raise "
        "template.syn_iterations (now 2) and check the convergence figure"
    )


def test_affine_iterations_do_not_count_and_too_few_syn_iterations_fail():
    """Tiny affine changes do not make up for missing SyN iterations."""
    out = evaluate_convergence(_table([1e-5, 1e-5, 1e-5], n_affine=2))
    assert out["met"] is False and out["values"] == [1e-5]
    assert out["message"].endswith(
        "but only 1 SyN iteration(s) ran; raise template.syn_iterations to at least 2"
    )
    assert evaluate_convergence(_table([1e-5, 1e-5], n_affine=2))["values"] == []


def test_custom_criterion_strict_threshold_and_nan():
    table = _table([0.3, 5e-4, 1e-4, 1e-3], n_affine=1)
    assert evaluate_convergence(table, {"max_template_change": 2e-3, "iterations": 3})["met"]
    # the threshold is strict: a change equal to it is not below it
    assert not evaluate_convergence(table, {"max_template_change": 1e-3, "iterations": 1})["met"]
    nan = _table([0.3, 1e-4, math.nan], n_affine=1)
    out = evaluate_convergence(nan, {"max_template_change": 1e-3, "iterations": 2})
    assert not out["met"] and out["values"] == [1e-4, None] and "got 0.0001, n/a;" in out["message"]
    # rows in any order: the last iterations by number
    shuffled = _table([0.3, 2e-3, 1.5e-4, 3e-5]).iloc[::-1]
    assert evaluate_convergence(shuffled)["values"] == [1.5e-4, 3e-5]


@pytest.mark.parametrize(
    "criterion",
    [{"max_template_change": 0, "iterations": 2}, {"max_template_change": 1e-3, "iterations": 0}],
)
def test_bad_criterion_or_table(criterion):
    with pytest.raises(ValueError, match="convergence criterion"):
        evaluate_convergence(_table([0.3, 1e-4, 1e-4]), criterion)
    with pytest.raises(ValueError, match=r"lacks columns \['template_change'\]"):
        evaluate_convergence(pd.DataFrame({"iteration": [0], "stage": ["syn"]}))


def test_default_is_the_config_default_and_the_schema_checks_it():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert config["template"]["convergence"] == DEFAULT_CRITERION
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema = str(ROOT / "config" / "config.schema.yaml")
    validate(config, schema)
    for bad in ({"iterations": 0}, {"max_template_change": 0}, {"threshold": 1e-3}):
        broken = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        broken["template"]["convergence"].update(bad)
        with pytest.raises(WorkflowError):
            validate(broken, schema)


def test_final_job_reports_the_verdict(tmp_path, caplog):
    """template.final writes the verdict to template_description.json and one log line,
    on tiny 8^3 images (no registration)."""
    import json
    import logging

    import ants
    import numpy as np

    from atlas.template import jobs

    rng = np.random.default_rng(0)
    imgs = ["sub-a", "sub-b"]
    files = {}
    for name in ("t0", "t1", "t2", "t3", *imgs, *(f"{i}_mask" for i in imgs)):
        arr = (rng.random((8, 8, 8)) + 0.5).astype("float32")
        files[name] = tmp_path / f"{name}.nii.gz"
        ants.image_write(ants.from_numpy(arr, spacing=(2.0, 2.0, 2.0)), str(files[name]))
    rows = []
    for k, (stage, change) in enumerate([("affine", 0.3), ("syn", 2e-3), ("syn", 1.5e-3)]):
        rows.append(tmp_path / f"conv{k}.tsv")
        row = {"iteration": k, "stage": stage, "mean_warp_mm": 0.2, "max_warp_mm": 0.5}
        row |= {"template_change": change, "mean_ncc": 0.9}
        pd.DataFrame([row]).to_csv(rows[-1], sep="\t", index=False)
    subject_rows = []
    for i in imgs:
        subject_rows.append(tmp_path / f"{i}_row.tsv")
        pd.DataFrame([{"img": i, "ncc": 0.9}]).to_csv(subject_rows[-1], sep="\t", index=False)
    participants = pd.DataFrame(
        {"img": imgs, "subject": ["a", "b"], "session": None, "age": [30.0, 40.0], "sex": "F"}
    )
    config = {"template": {"name": "tiny"}, "reference": "MNI152NLin2009aSym"}
    config |= {"resolution": 2.0, "skull_strip": "skip", "seed": 1}
    out = {k: tmp_path / "out" / k for k in ("t.nii.gz", "m.nii.gz", "d.json", "c.tsv", "s.tsv")}
    out |= {k: tmp_path / "out" / k for k in ("v.nii.gz", "fm.png", "fc.png", "fs.png")}
    with caplog.at_level(logging.INFO, logger="atlas.template.jobs"):
        jobs.final(
            templates=[files[f"t{k}"] for k in range(4)],
            masks=[files[f"{i}_mask"] for i in imgs],
            subject_rows=subject_rows,
            convergence_rows=rows,
            warped=[files[i] for i in imgs],
            participants=participants,
            config=config,
            res_label="2",
            out_template=out["t.nii.gz"],
            out_mask=out["m.nii.gz"],
            out_description=out["d.json"],
            out_convergence=out["c.tsv"],
            out_subjects=out["s.tsv"],
            out_variance=out["v.nii.gz"],
            out_fig_mosaic=out["fm.png"],
            out_fig_convergence=out["fc.png"],
            out_fig_subjects=out["fs.png"],
            convergence={"max_template_change": 1e-3, "iterations": 2},
        )
    desc = json.loads(out["d.json"].read_text())
    assert desc["convergence"]["met"] is False
    assert desc["convergence"]["values"] == [2e-3, 1.5e-3]
    assert desc["convergence"]["criterion"]["max_template_change"] == 1e-3
    messages = [r.getMessage() for r in caplog.records if "convergence criterion" in r.getMessage()]
    assert len(messages) == 1 and "raise template.syn_iterations (now 2)" in messages[0]
    assert caplog.records[-1].levelname == "WARNING"
