"""``kill -9`` of an ``atlas`` run in the middle of the template stage, then the same
command again: it clears the stale Snakemake lock and finishes with a template
bit-identical to an uninterrupted run (issue 16, 5b); and two clean runs of the same
config give bit-identical images and tables (5a).

Both runs use the repository as Snakemake's working directory, as every ``atlas`` run
does, so they share ``.snakemake/`` (and its ``locks/``); unlike ``run_workflow``
(``--nolock``) they take Snakemake's locks, which is what a kill leaves behind. Their
output and work folders differ (``tmp_path/killed`` and ``tmp_path/clean``), so their
locks never overlap, and they run one after the other (2 cores).
"""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from atlas import cli
from atlas.demo import make_demo_bids

pytestmark = pytest.mark.integration

ROOT = cli.repository_root()
TEMPLATE = "tpl-test/tpl-test_res-4_T1w.nii.gz"
MASK = "tpl-test/tpl-test_res-4_desc-brain_mask.nii.gz"


def _command(bids: Path, run: Path, config: Path) -> list[str]:
    script = Path(sys.executable).with_name("atlas")
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "atlas.cli"]
    return (
        base
        + [str(bids), str(run / "out"), "group", "--config", str(config)]
        + [
            "--cores",
            "2",
            "--work-dir",
            str(run / "work"),
        ]
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"atlas failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_kill_then_rerun_resumes_to_the_same_template(tmp_path):
    bids = make_demo_bids(tmp_path / "bids", n_subjects=3, seed=0, spacing_mm=4.0)
    config = tmp_path / "study.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "resolution": 4.0,
                "template": {"name": "test", "affine_iterations": 1, "syn_iterations": 1},
            }
        )
    )
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = _command(bids, killed, config)

    # 1. start, and kill the whole process group once the first template registration
    # of iteration 0 has written its outputs
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    iter0 = killed / "work" / "template" / "iter-0"
    deadline = time.monotonic() + 300
    while not list(iter0.glob("*_warped.nii.gz")):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no template registration output after 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert not (killed / "out" / TEMPLATE).exists()  # killed before the end
    stale = cli.lock_files_naming(
        ROOT / ".snakemake" / "locks", [killed / "out", killed / "work"], ROOT
    )
    assert stale, "the killed run left no Snakemake lock: nothing to resume from"
    record = cli.read_record(cli.record_path(ROOT, killed / "out"))
    assert record, "the killed run left no record of its processes"
    for p in record["processes"]:  # SIGKILL is delivered asynchronously
        for _ in range(100):
            if not cli.process_alive(p["pid"], p["start"]):
                break
            time.sleep(0.1)
        assert not cli.process_alive(p["pid"], p["start"]), f"PID {p['pid']} survived"

    # 2. the same command again: one line says the stale lock was cleared, then it finishes
    resumed = _run(cmd)
    cleared = [x for x in resumed.stderr.splitlines() if x.startswith("atlas: cleared the stale")]
    assert len(cleared) == 1, resumed.stderr[-3000:]
    assert not any(p.exists() for p in stale)
    assert not cli.record_path(ROOT, killed / "out").exists()

    # 3. an uninterrupted run of the same config in another folder
    _run(_command(bids, clean, config))
    for name in (TEMPLATE, MASK):
        assert _sha256(killed / "out" / name) == _sha256(clean / "out" / name), name

    # 4. a second clean run: every image and table it writes is bit-identical
    # (atlas_config.json and the manifest name the run's own folders, so they differ)
    _run(_command(bids, tmp_path / "clean2", config))
    first, second = (_results(run / "out") for run in (clean, tmp_path / "clean2"))
    # 3 subjects x (preproc, mask, 2 normalisation, 2 template-space, 2 warps) + template
    assert len(first) > 25 and first == second
    assert {k: v for k, v in first.items() if k.startswith("tpl-")} == {
        k: v for k, v in _results(killed / "out").items() if k.startswith("tpl-")
    }


def _results(out: Path) -> dict[str, str]:
    """SHA-256 of every NIfTI image and TSV table under ``out`` (except the manifest, which
    lists the run's own folders), by relative path."""
    files = [*out.rglob("*.nii.gz"), *out.rglob("*.tsv")]
    return {str(f.relative_to(out)): _sha256(f) for f in sorted(files) if f.name != "manifest.tsv"}
