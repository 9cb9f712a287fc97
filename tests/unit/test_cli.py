"""The ``atlas`` BIDS-App command: arguments -> Snakemake command, stale-lock decisions.

Nothing here runs Snakemake: the process that would run it is replaced by a fake.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from atlas import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bids(tmp_path):
    d = tmp_path / "bids"
    d.mkdir()
    return d


def _parse(capsys, *argv):
    """parse_args on a bad command line: the exit status and stderr's last line."""
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(list(map(str, argv)))
    return exc.value.code, capsys.readouterr().err.strip().splitlines()[-1]


# --- arguments --------------------------------------------------------------------------
def test_defaults_and_absolute_paths(bids, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = cli.parse_args(["bids", "out", "participant"])
    assert args.bids_dir == bids and args.output_dir == tmp_path / "out"
    assert args.work_dir == tmp_path / "out" / "work"
    assert args.cores == "all" and args.analysis_level == "participant"
    assert args.snakemake_args == [] and not (args.dry_run or args.report or args.use_gpu)
    assert args.participant_label is None and args.session is None and args.config is None


def test_labels_and_passed_through_arguments(bids, tmp_path):
    args = cli.parse_args(
        [str(bids), str(tmp_path / "o"), "group", "--participant-label", "sub-01", "02"]
        + ["--exclude-participant-label", "sub-03", "--session", "ses-1", "--cores", "2"]
        + ["--keep-going", "--rerun-triggers", "mtime"]
    )
    assert args.participant_label == ["01", "02"]
    assert args.exclude_participant_label == ["03"] and args.session == "1"
    assert args.cores == "2"
    assert args.snakemake_args == ["--keep-going", "--rerun-triggers", "mtime"]


@pytest.mark.parametrize(
    "extra, argument",
    [
        (["--participant-label", "x;touch INJECTED"], "--participant-label"),
        (["--participant-label", "sub-a_b"], "--participant-label"),
        (["--exclude-participant-label", "$(id)"], "--exclude-participant-label"),
        (["--session", "ses-1 2"], "--session"),
        (["--cores", "0"], "--cores"),
        (["--cores", "many"], "--cores"),
        (["--config", "no_such.yaml"], "--config"),
        (["--directory", "/tmp"], "--directory"),
        (["--snakefile=/tmp/Snakefile"], "--snakefile"),
        (["--configfile", "a.yaml"], "--configfile"),
    ],
)
def test_bad_options_give_one_line_naming_the_argument(bids, tmp_path, capsys, extra, argument):
    code, line = _parse(capsys, bids, tmp_path / "o", "participant", *extra)
    assert code == 2
    assert line.startswith(f"atlas: error: argument {argument}")


def test_bad_positionals(bids, tmp_path, capsys):
    code, line = _parse(capsys, tmp_path / "missing", tmp_path / "o", "participant")
    assert code == 2 and line.startswith("atlas: error: argument BIDS_DIR:")
    code, line = _parse(capsys, bids, bids, "group")
    assert code == 2 and line == "atlas: error: argument OUTPUT_DIR: must differ from BIDS_DIR"
    code, line = _parse(capsys, bids, tmp_path / "o", "everything")
    assert code == 2 and "argument analysis_level" in line


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    out = capsys.readouterr().out
    for opt in (
        "--participant-label",
        "--exclude-participant-label",
        "--session",
        "--config",
        "--cores",
        "--profile",
        "--dry-run",
        "--report",
        "--use-gpu",
        "--work-dir",
        "BIDS_DIR",
        "OUTPUT_DIR",
        "passed to Snakemake",
    ):
        assert opt in out


def test_profile_folder_is_made_absolute_names_are_kept(bids, tmp_path, monkeypatch):
    (tmp_path / "prof").mkdir()
    monkeypatch.chdir(tmp_path)
    args = cli.parse_args([str(bids), "o", "group", "--profile", "prof"])
    assert args.profile == str(tmp_path / "prof")
    args = cli.parse_args([str(bids), "o", "group", "--profile", "config/profiles/slurm"])
    assert args.profile == "config/profiles/slurm"  # looked up by Snakemake in the repo


# --- the command ------------------------------------------------------------------------
def test_build_command_maps_every_option(bids, tmp_path):
    user_cfg = tmp_path / "study.yaml"
    user_cfg.write_text("resolution: 4\n")
    args = cli.parse_args(
        [str(bids), str(tmp_path / "out"), "participant", "--participant-label", "01"]
        + ["--config", str(user_cfg), "--cores", "3", "--profile", "slurm", "--dry-run"]
        + ["--use-gpu", "--work-dir", str(tmp_path / "w"), "--keep-going"]
    )
    snakefile = tmp_path / "repo" / "Snakefile"
    cmd = cli.build_command(args, snakefile)
    cfg_path, text = cli.cli_config_file(args, snakefile.parent)
    assert cmd == [
        sys.executable,
        "-m",
        "snakemake",
        "participant",
        "--snakefile",
        str(snakefile),
        "--directory",
        str(snakefile.parent),
        "--cores",
        "3",
        "--rerun-incomplete",
        "--profile",
        "slurm",
        "--dry-run",
        "--keep-going",
        "--configfile",
        str(user_cfg),
        str(cfg_path),
    ]
    assert cfg_path.parent == snakefile.parent / ".snakemake" / "atlas"
    assert yaml.safe_load(text) == {
        "bids_dir": str(bids),
        "output_dir": str(tmp_path / "out"),
        "work_dir": str(tmp_path / "w"),
        "participant_label": ["01"],
        "learned": {"use_gpu": True},
    }
    assert all(isinstance(a, str) for a in cmd)


def test_report_command_and_minimal_command(bids, tmp_path):
    args = cli.parse_args([str(bids), str(tmp_path / "out"), "group", "--report"])
    cmd = cli.build_command(args, Path("/repo/Snakefile"))
    assert cmd[3] == "group" and "--report" not in cmd and "--dry-run" not in cmd
    assert cmd[-2] == "--configfile" and "--profile" not in cmd
    report = cli.build_command(args, Path("/repo/Snakefile"), report=True)
    i = report.index("--report")
    assert report[i + 1] == str(tmp_path / "out" / "report.html")
    assert [a for a in report if a not in ("--report", report[i + 1])] == cmd


def test_config_values_keep_their_types(bids, tmp_path):
    """Labels that look like numbers and paths with ': ' stay strings (Snakemake's
    --config key=value would read 01 as 1 and 'a: b' as a mapping)."""
    odd = tmp_path / "my: study #1"
    odd.mkdir()
    args = cli.parse_args(
        [str(odd), str(tmp_path / "o"), "participant", "--participant-label", "01", "1e3"]
        + ["--session", "02"]
    )
    _, text = cli.cli_config_file(args, tmp_path)
    cfg = yaml.safe_load(text)
    assert cfg["bids_dir"] == str(odd)
    assert cfg["participant_label"] == ["01", "1e3"] and cfg["session"] == "02"
    assert "learned" not in cfg
    other = cli.parse_args([str(odd), str(tmp_path / "o"), "participant"])
    assert cli.cli_config_file(other, tmp_path)[0] != cli.cli_config_file(args, tmp_path)[0]


def test_snakefile_is_found_in_the_repository_or_a_clear_error(tmp_path):
    assert cli.find_snakefile() == ROOT / "Snakefile"
    with pytest.raises(cli.CliError, match=r"Snakefile does not exist.*pip install -e"):
        cli.find_snakefile(tmp_path)


def test_targets_and_console_script_exist():
    preprocess = (ROOT / "workflow" / "rules" / "preprocess.smk").read_text()
    assert re.search(r"^rule participant:", preprocess, re.M)
    assert re.search(r"^rule group:", (ROOT / "Snakefile").read_text(), re.M)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["atlas"] == "atlas.cli:main"


# --- stale-lock decision ----------------------------------------------------------------
HOST = "node1"


def _record(host=HOST, pids=(111, 112)):
    return {
        "host": host,
        "processes": [{"pid": p, "start": "99"} for p in pids],
        "started": "2026-11-30 10:00:00",
    }


def _alive(*pids):
    return lambda pid, start: pid in pids


@pytest.mark.parametrize(
    "record, locked, alive, reason, action",
    [
        (None, False, _alive(), "free", "run"),
        (None, True, _alive(), "unknown-owner", "stop"),
        (_record(), True, _alive(111), "alive", "stop"),
        (_record(), False, _alive(112), "alive", "stop"),  # Snakemake outlived atlas
        (_record(), True, _alive(), "stale", "clear"),
        (_record(), False, _alive(), "free", "run"),
        (_record(host="node2"), True, _alive(111, 112), "other-host", "stop"),
        (_record(host="node2"), True, _alive(), "other-host", "stop"),
    ],
)
def test_lock_decision(record, locked, alive, reason, action):
    d = cli.lock_decision(record, locked, HOST, alive, "/out")
    assert (d.reason, d.action) == (reason, action)
    if action != "run":
        assert "\n" not in d.message and d.message
    if reason == "alive":
        pid = 111 if alive(111, None) else 112
        assert f"PID {pid}" in d.message and f"kill {pid}" in d.message
    if reason in ("other-host", "unknown-owner"):
        assert "--unlock" in d.message and "/out" in d.message
    if reason == "other-host":
        assert "node2" in d.message


def test_lock_decision_passes_start_times_to_the_liveness_check():
    seen = []
    cli.lock_decision(_record(), True, HOST, lambda pid, start: seen.append((pid, start)), "/o")
    assert seen == [(111, "99"), (112, "99")]


_POPEN = subprocess.Popen  # the real one (tests below replace subprocess.Popen)


def _dead_pid() -> int:
    proc = _POPEN([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_process_alive():
    me = os.getpid()
    assert cli.process_alive(me) and cli.process_alive(me, cli.process_start(me))
    assert not cli.process_alive(me, "1")  # same PID, other start time: reused PID
    assert not cli.process_alive(_dead_pid())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_killed_unreaped_process_is_dead():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        proc.kill()
        for _ in range(200):  # until it is a zombie
            if Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] == "Z":
                break
            time.sleep(0.01)
        assert not cli.process_alive(proc.pid)
    finally:
        proc.wait()


def test_lock_files_naming(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "0.output.lock").write_text("/data/out/sub-01/a.nii.gz\n/data/out/b.tsv\n")
    (locks / "0.input.lock").write_text("/data/bids/sub-01/anat/x.nii.gz\n/data/work/r.nii\n")
    (locks / "1.output.lock").write_text("/data/outside/c.tsv\n/data/out_other/d\n")
    (locks / "2.output.lock").write_text("rel/out/e.tsv\n")
    folders = [Path("/data/out"), Path("/data/work")]
    found = cli.lock_files_naming(locks, folders, tmp_path)
    assert [f.name for f in found] == ["0.input.lock", "0.output.lock"]
    rel = cli.lock_files_naming(locks, [tmp_path / "rel" / "out"], tmp_path)
    assert [f.name for f in rel] == ["2.output.lock"]
    assert cli.lock_files_naming(tmp_path / "none", folders, tmp_path) == []


def test_record_roundtrip(tmp_path):
    path = cli.record_path(tmp_path, Path("/data/out"))
    assert path != cli.record_path(tmp_path, Path("/data/out2"))
    rec = cli.write_record(path, Path("/data/out"), [os.getpid()])
    assert cli.read_record(path) == rec
    assert rec["host"] == socket.gethostname()
    assert rec["processes"] == [{"pid": os.getpid(), "start": cli.process_start(os.getpid())}]
    path.write_text("{torn")
    assert cli.read_record(path) is None
    assert cli.read_record(tmp_path / "absent.json") is None


# --- execute: the lock check around a fake Snakemake --------------------------------------
class FakeSnakemake:
    """Stands in for subprocess.Popen: records the command and the run record it saw."""

    calls = []

    def __init__(self, cmd, cwd=None):
        self.pid = _dead_pid()
        self.cmd = cmd
        record = cli.record_path(Path(cwd), Path(cmd_output_dir(cmd)))
        FakeSnakemake.calls.append((cmd, cli.read_record(record)))

    def wait(self):
        return 0

    def send_signal(self, sig):
        pass


def cmd_output_dir(cmd):
    return yaml.safe_load(Path(cmd[-1]).read_text())["output_dir"]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A fake repository (Snakefile, .snakemake/locks) and a fake Snakemake."""
    root = tmp_path / "repo"
    (root / ".snakemake" / "locks").mkdir(parents=True)
    (root / "Snakefile").write_text("")
    FakeSnakemake.calls = []
    monkeypatch.setattr(cli.subprocess, "Popen", FakeSnakemake)
    return root


def _args(bids, out, *extra):
    return cli.parse_args([str(bids), str(out), "group", *extra])


def test_execute_clears_the_stale_lock_of_a_dead_run(repo, bids, tmp_path, capsys):
    out = tmp_path / "out"
    locks = repo / ".snakemake" / "locks"
    (locks / "0.output.lock").write_text(f"{out}/tpl-atlas/t.nii.gz\n")
    (locks / "0.input.lock").write_text(f"{out}/work/template/iter-0/t.nii.gz\n")
    (locks / "1.output.lock").write_text(f"{tmp_path}/other/x.tsv\n")  # another live run
    record = cli.record_path(repo, out)
    cli.write_record(record, out, [_dead_pid()])
    assert cli.execute(_args(bids, out), repo / "Snakefile") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("atlas: cleared the stale Snakemake lock")
    assert sorted(p.name for p in locks.iterdir()) == ["1.output.lock"]
    ((cmd, seen),) = FakeSnakemake.calls
    assert cmd[3] == "group"
    assert not Path(cmd[-1]).exists()  # the command's config file: read, then removed
    assert [p["pid"] for p in seen["processes"]][0] == os.getpid()  # recorded while running
    assert not record.exists()  # removed after the run


def test_execute_stops_while_the_recorded_run_lives(repo, bids, tmp_path):
    out = tmp_path / "out"
    (repo / ".snakemake" / "locks" / "0.output.lock").write_text(f"{out}/a\n")
    cli.write_record(cli.record_path(repo, out), out, [os.getpid()])
    with pytest.raises(cli.CliError, match=rf"another atlas run \(PID {os.getpid()}"):
        cli.execute(_args(bids, out), repo / "Snakefile")
    with pytest.raises(cli.CliError, match="another atlas run"):  # --unlock too
        cli.execute(_args(bids, out, "--unlock"), repo / "Snakefile")
    assert FakeSnakemake.calls == []
    assert (repo / ".snakemake" / "locks" / "0.output.lock").exists()


def test_execute_unknown_owner_stops_until_unlock(repo, bids, tmp_path):
    out = tmp_path / "out"
    (repo / ".snakemake" / "locks" / "0.output.lock").write_text(f"{out}/a\n")
    with pytest.raises(cli.CliError, match="not start.*--unlock"):
        cli.execute(_args(bids, out), repo / "Snakefile")
    assert FakeSnakemake.calls == []
    assert cli.execute(_args(bids, out, "--unlock"), repo / "Snakefile") == 0
    ((cmd, seen),) = FakeSnakemake.calls
    assert "--unlock" in cmd and seen is None  # an unlock run records nothing


def test_execute_other_host_stops(repo, bids, tmp_path):
    out = tmp_path / "out"
    record = cli.record_path(repo, out)
    cli.write_record(record, out, [os.getpid()])
    rec = cli.read_record(record)
    record.write_text(json.dumps({**rec, "host": "elsewhere"}))
    with pytest.raises(cli.CliError, match="host elsewhere"):
        cli.execute(_args(bids, out), repo / "Snakefile")


def test_dry_run_neither_checks_nor_records(repo, bids, tmp_path):
    out = tmp_path / "out"
    (repo / ".snakemake" / "locks" / "0.output.lock").write_text(f"{out}/a\n")
    assert cli.execute(_args(bids, out, "--dry-run"), repo / "Snakefile") == 0
    ((cmd, seen),) = FakeSnakemake.calls
    assert "--dry-run" in cmd and seen is None
    assert Path(cmd[-1]).is_file()  # kept: a run of the same config may be reading it


def test_main_reports_one_line(bids, tmp_path, monkeypatch, capsys):
    def missing(root=None):
        raise cli.CliError("the workflow is not installed: X")

    monkeypatch.setattr(cli, "find_snakefile", missing)
    assert cli.main([str(bids), str(tmp_path / "o"), "participant"]) == 2
    assert capsys.readouterr().err == "atlas: the workflow is not installed: X\n"
