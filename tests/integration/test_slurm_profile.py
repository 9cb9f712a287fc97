"""The SLURM profile's requests, from a dry run of the Snakefile (no daemons needed).

The dry run plans the demo cohort with the learned atlas and the template's FireANTs
registrations on a GPU; the resources it prints for the training job are turned into the
sbatch arguments by the plugin's own functions (snakemake-executor-plugin-slurm), as a
submission would.
"""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(tmp: Path, config: dict) -> str:
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--profile", "config/profiles/slurm"]
    proc = subprocess.run(
        cmd + ["--nolock", "--configfile", str(cfg)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _resources(out: str, rule: str) -> dict:
    """The resources Snakemake planned for the first job of ``rule`` (alone, or indented
    inside a group job of the profile's ``groups``)."""
    start = re.search(rf"^\s*rule {rule}:$", out, re.M).end()
    line = re.search(r"^\s+resources: (.*)$", out[start:], re.M).group(1)
    pairs = (kv.split("=", 1) for kv in line.split(", "))
    return {k: int(v) if v.isdigit() else v for k, v in pairs}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profile")
    config = {
        "demo": {"dir": str(tmp / "bids"), "n_subjects": 4, "seed": 0},
        "output_dir": str(tmp / "out"),
        "work_dir": str(tmp / "work"),
        "learned": {"enabled": True, "use_gpu": True},
        "template": {"backend": "fireants", "fireants": {"device": "cuda"}},
        "cluster": {"partition": "cpu", "gpu_partition": "gpu", "cpus_per_gpu": 6},
    }
    return _dry_run(tmp, config)


def test_gpu_training_job_asks_slurm_for_a_gpu(planned):
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    res = _resources(planned, "learned_train")
    assert res["gpu"] == 1 and res["cpus_per_gpu"] == 6 and res["slurm_partition"] == "gpu"
    job = SimpleNamespace(resources=SimpleNamespace(get=res.get, **res), threads=1, rule="x")
    params = {
        "run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "workdir": ".",
        "account": "", "partition": f"-p {res['slurm_partition']}",
    }  # fmt: skip
    sbatch = get_submit_command(job, params) + set_gres_string(job)
    for arg in ("--gpus=1", "--cpus-per-gpu=6", "-p gpu", f"--mem {res['mem_mb']}"):
        assert arg in sbatch, sbatch
    assert "--cpus-per-task" not in sbatch
    # the template's registrations with fireants.device: cuda ask for a GPU too
    reg = _resources(planned, "template_register_affine")
    assert reg["gpu"] == 1 and reg["slurm_partition"] == "gpu" and reg["cpus_per_gpu"] == 6


def test_cpu_jobs_use_the_cpu_partition_and_family_sizes(planned):
    families = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["cluster"]["families"]
    for rule, family in (("reference", "preprocess"), ("template_update", "template")):
        res = _resources(planned, rule)
        assert res["slurm_partition"] == "cpu"
        assert "gpu" not in res
        size = families[family]
        # 4 demo images on the default 2 mm grid: template jobs add mem_mb_per_image each
        assert res["mem_mb"] == round(size["mem_mb"] + 4 * size.get("mem_mb_per_image", 0))
        assert res["runtime"] == size["runtime"]
