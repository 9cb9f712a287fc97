"""Rules reach job functions through ``params.step``; names are checked before any work."""

import re
from pathlib import Path

import pytest

from atlas.runner import job_function, run_job

RULES = Path(__file__).resolve().parents[2] / "workflow" / "rules"


def test_every_rule_step_names_a_job_function():
    steps = set()
    for smk in RULES.glob("*.smk"):
        steps |= set(re.findall(r'step="([^"]+)"', smk.read_text()))
    assert len(steps) > 10
    for step in sorted(steps):
        fn = job_function(step)
        assert fn.__module__ == f"atlas.{step.split('.')[0]}.jobs"
        assert fn.__doc__, f"{step} has no docstring"


def test_unknown_steps_are_refused():
    for bad in ("template", "template.jobs.init", "nosuchstage.init", "template._read"):
        with pytest.raises(ValueError, match="params.step"):
            job_function(bad)
    with pytest.raises(ValueError, match="no job 'nosuchjob'"):
        job_function("template.nosuchjob")


def test_misspelled_or_missing_names_fail_before_the_job_runs(tmp_path):
    out = tmp_path / "dd.json"
    kwargs = {"out_json": out, "out_config": tmp_path / "c.json", "name": "x", "config": {}}
    with pytest.raises(TypeError, match=r"unknown names \['bids_dri'\].*lacks.*\['bids_dir'\]"):
        run_job("provenance.dataset_files", bids_dri=tmp_path, **kwargs)
    assert not out.exists()
    run_job("provenance.dataset_files", bids_dir=tmp_path, **kwargs)
    assert out.is_file()
