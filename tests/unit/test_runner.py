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
    out = tmp_path / "m.tsv"
    kwargs = {"out_manifest": out}
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(TypeError, match=r"unknown names \['file'\].*lacks.*\['files'\]"):
        run_job("provenance.manifest", file=[tmp_path / "a.txt"], **kwargs)
    assert not out.exists()
    run_job("provenance.manifest", files=[tmp_path / "a.txt"], **kwargs)
    assert out.is_file()
