"""The workflow on a real single-node SLURM (``.ci/slurm.sh``) with the SLURM profile.

2 real IXI subjects at 6 mm, 1 affine + 1 SyN template iteration, run twice: locally and
through ``--profile config/profiles/slurm`` (executor ``slurm``, grouped jobs). Every job
must reach SLURM through ``sbatch`` and end COMPLETED in ``sacct``, and the outputs must
equal the local run's. When the daemons cannot run (not root, no apt, a daemon fails),
the test fails with the reason; it never skips.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SLURM_SH = ROOT / ".ci" / "slurm.sh"
# snakemake-executor-plugin-slurm 1.4 waits 40 s after each finished job before it asks
# sacct again (hard-coded); this launcher caps that wait at 3 s so the ~12 sequential
# stages take seconds, not minutes. Submission and sacct tracking are the plugin's own.
FAST_POLL = """
import sys
import snakemake_executor_plugin_slurm as plugin
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
prop = RemoteExecutor.next_seconds_between_status_checks
plugin.Executor.next_seconds_between_status_checks = property(
    prop.fget, lambda self, v: prop.fset(self, min(v, 3))
)
from snakemake.cli import main
sys.argv[0] = "snakemake"
main()
"""


def _cluster_up() -> bool:
    return subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def slurm():
    """The SLURM daemons: used when already up, else started by ``.ci/slurm.sh`` and
    stopped again whatever happens."""
    if _cluster_up() and subprocess.run(["sinfo", "-h"], capture_output=True).stdout:
        yield
        return
    start = subprocess.run(
        ["bash", str(SLURM_SH), "start"], capture_output=True, text=True, timeout=900
    )
    try:
        if start.returncode:
            pytest.fail(
                "SLURM daemons could not be started by .ci/slurm.sh:\n"
                f"{start.stdout[-2000:]}\n{start.stderr[-3000:]}"
            )
        yield
    finally:
        subprocess.run(["bash", str(SLURM_SH), "stop"], capture_output=True, timeout=120)


def _config(ixi_config, tmp: Path) -> dict:
    config = ixi_config(tmp)
    config["participant_label"] = ["IXI012", "IXI013"]
    config["resolution"] = 6.0
    # exercise the account path: .ci/slurm.sh creates the association root -> atlasci
    config["cluster"] = {"account": "atlasci"}
    return config


def _run_slurm(workdir: Path, config: dict) -> subprocess.CompletedProcess:
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    env.setdefault("USER", "root" if os.geteuid() == 0 else str(os.getuid()))
    cmd = [
        sys.executable, "-c", FAST_POLL,
        "--profile", "config/profiles/slurm",
        "--nolock",
        "--slurm-logdir", str(workdir / "slurm_logs"),
        "--slurm-keep-successful-logs",
        "--slurm-init-seconds-before-status-checks", "1",
        "--configfile", str(cfg),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        pytest.fail(f"SLURM run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def runs(slurm, ixi_config, tmp_path_factory):
    """(local output dir, SLURM output dir, SLURM run's Snakemake log, SLURM log dir).

    The local run (2 cores) goes on while the SLURM run waits for its jobs."""
    local, remote = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("slurm")
    cfg = local / "config.yaml"
    cfg.write_text(yaml.safe_dump(_config(ixi_config, local)))
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--nolock", "--configfile"]
    local_run = subprocess.Popen(
        cmd + [str(cfg)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        proc = _run_slurm(remote, _config(ixi_config, remote))
    finally:
        local_log = local_run.communicate()[0]
    if local_run.returncode:
        pytest.fail(f"local run failed:\n{local_log[-5000:]}")
    return local / "out", remote / "out", proc.stdout + proc.stderr, remote / "slurm_logs"


def _sacct(job_ids) -> pd.DataFrame:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State,Account,Comment",
         "-j", ",".join(job_ids)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("|", 3) for line in out.splitlines() if line]
    return pd.DataFrame(rows, columns=["id", "state", "account", "comment"])


def _rules_run_in(slurm_logs: Path) -> list[str]:
    """Rule names of the jobs that Snakemake ran inside the SLURM jobs: the job step
    prints ``localrule <name>:`` when it executes a job (plans are indented or
    ``rule <name>:``)."""
    rules = []
    for log in slurm_logs.rglob("*.log"):
        rules += re.findall(r"^localrule (\w+):$", log.read_text(), re.M)
    return rules


def test_every_job_went_through_sbatch(runs):
    _, _, log, slurm_logs = runs
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    planned = re.search(r"Job stats:\n(.*?)\n\n", log, re.S).group(1)
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", planned, re.M)}
    acct = _sacct(submitted)
    assert len(acct) == len(submitted) > 0
    assert (acct.state == "COMPLETED").all(), acct
    assert (acct.account == "atlasci").all()
    # every planned job but the input-only target `all` ran inside a SLURM job ...
    ran = pd.Series(_rules_run_in(slurm_logs)).value_counts().to_dict()
    expected = {r: n for r, n in counts.items() if r not in ("all", "total")}
    assert ran == expected
    # ... and grouping packed the per-image steps: fewer submissions than jobs
    assert len(submitted) < sum(expected.values())
    assert any(p.name.startswith("group_subject") for p in slurm_logs.iterdir())


def test_outputs_equal_the_local_run(runs):
    """Same seed and ITK threads (threads_per_job) on both: ANTs is deterministic, so
    images must match exactly; the only slack allowed is float32 rounding (1e-6
    relative) in case a library sums in another order."""
    local, remote, _, _ = runs
    images = sorted(p.relative_to(local) for p in local.rglob("*.nii.gz"))
    assert len(images) > 10
    assert images == sorted(p.relative_to(remote) for p in remote.rglob("*.nii.gz"))
    for rel in images:
        a, b = nib.load(local / rel), nib.load(remote / rel)
        np.testing.assert_array_equal(a.affine, b.affine)
        np.testing.assert_allclose(
            a.get_fdata(), b.get_fdata(), rtol=1e-6, atol=1e-6, err_msg=str(rel)
        )
    tables = sorted(p.relative_to(local) for p in local.rglob("*.tsv") if "logs" not in p.parts)
    assert tables
    for rel in tables:
        a = pd.read_csv(local / rel, sep="\t")
        b = pd.read_csv(remote / rel, sep="\t")
        if rel.name == "manifest.tsv":
            # atlas_config.json records the run's folders and command line, which differ
            a, b = (t[t.path != "atlas_config.json"].reset_index(drop=True) for t in (a, b))
        # paths differ between the two runs' folders; every other value must match
        a, b = (t.replace(str(d), "", regex=True) for t, d in ((a, local), (b, remote)))
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)
