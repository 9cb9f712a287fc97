"""The BIDS-App command: ``atlas BIDS_DIR OUTPUT_DIR {participant,group} [options]``.

It builds a Snakemake command line for the workflow of this repository
(:func:`build_command`, pure) and runs it as an argument list, never through a shell.
``participant`` runs the Snakefile target ``participant`` (preprocessing and affine
normalisation of the selected images), ``group`` the target ``group`` (everything
``snakemake all`` makes: the template and the group stages). Arguments the command does
not know are passed on to Snakemake, as snakebids apps do. The values the command sets
(paths, labels, ``--use-gpu``) reach Snakemake in a small config file
(:func:`cli_config_file`), so they keep their types.

Snakemake runs in the repository (``--directory``: the relative paths of
``config/config.yaml`` and of the README's examples keep their meaning), so every run of
this checkout shares ``.snakemake/``. While it runs, the command records its own process
and Snakemake's (PID, process start time, host) in ``.snakemake/atlas/`` under a name
derived from OUTPUT_DIR. On start, Snakemake lock files that name a file in OUTPUT_DIR or
the work folder belong to a previous run on the same output; :func:`lock_decision` says
whether to run, clear them (that run died on this host: a ``kill -9``) or stop with one
line naming the process and what to do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

import atlas

#: BIDS label: letters and digits only.
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
#: Snakemake options the command sets itself; passing them through would change what runs.
_RESERVED = ("--snakefile", "-s", "--directory", "-d", "--configfile", "--configfiles")
#: Folder of the command's own state inside the Snakemake working directory.
STATE_DIR = Path(".snakemake") / "atlas"


class CliError(Exception):
    """A problem the command reports in one line (``atlas: <message>``) before exiting."""


# --- arguments -------------------------------------------------------------------------
def _absolute(path: str) -> Path:
    """``path`` made absolute against the current folder (``~`` expanded, links kept)."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def _existing_dir(path: str) -> Path:
    p = _absolute(path)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is not a folder")
    return p


def _existing_file(path: str) -> Path:
    p = _absolute(path)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a file")
    return p


def _bids_label(prefix: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        label = value.removeprefix(f"{prefix}-")
        if not _LABEL.match(label):
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a BIDS label (letters and digits only, optional '{prefix}-')"
            )
        return label

    return parse


def _cores(value: str) -> str:
    if value == "all" or (value.isdigit() and int(value) >= 1):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not 'all' or a positive integer")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``atlas`` (every option documented in ``atlas --help``)."""
    p = argparse.ArgumentParser(
        prog="atlas",
        description=(
            "Population brain MRI template from a BIDS dataset (BIDS-App command). "
            "participant: preprocessing and affine normalisation of each T1w image; "
            "group: the template and the group stages (everything `snakemake all` makes)."
        ),
        epilog=(
            "Options this command does not know are passed to Snakemake (put them after "
            "the three positional arguments), e.g. --keep-going, --rerun-triggers mtime, "
            "--unlock, --printshellcmds. --snakefile, --directory and --configfile are set "
            "by the command. A run killed with kill -9 is resumed by running the same "
            "command again: its stale Snakemake lock is cleared when the recorded process "
            "is dead on this host; otherwise the command stops and says what to do."
        ),
        allow_abbrev=False,
    )
    p.add_argument(
        "bids_dir", metavar="BIDS_DIR", type=_existing_dir, help="input BIDS dataset (a folder)"
    )
    p.add_argument(
        "output_dir",
        metavar="OUTPUT_DIR",
        type=_absolute,
        help="BIDS-Derivatives output folder (created)",
    )
    p.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="participant: per-image preprocessing and normalisation; group: template and "
        "group stages (runs the participant steps it needs)",
    )
    _add_selection_options(p)
    _add_run_options(p)
    return p


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    """Which images and which config: labels, session, config file."""
    p.add_argument(
        "--participant-label",
        nargs="+",
        type=_bids_label("sub"),
        metavar="LABEL",
        help="process only these subjects (labels with or without 'sub-'); "
        "default: all, or participant_label of --config",
    )
    p.add_argument(
        "--exclude-participant-label",
        nargs="+",
        type=_bids_label("sub"),
        metavar="LABEL",
        help="leave out these subjects",
    )
    p.add_argument(
        "--session",
        type=_bids_label("ses"),
        metavar="SESSION",
        help="'first' (the default of config/config.yaml), 'all', or one session label",
    )
    p.add_argument(
        "--config",
        type=_existing_file,
        metavar="FILE",
        help="YAML config merged over config/config.yaml (Snakemake --configfile); "
        "BIDS_DIR, OUTPUT_DIR and --work-dir take precedence over its bids_dir, "
        "output_dir and work_dir; relative paths in it are relative to the repository",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """How Snakemake runs: cores, profile, dry run, report, GPU, work folder."""
    p.add_argument(
        "--cores",
        type=_cores,
        default="all",
        help="CPU cores Snakemake may use: a number or 'all' (default: all)",
    )
    p.add_argument(
        "--profile",
        metavar="PROFILE",
        help="Snakemake profile: a folder, or a profile name Snakemake looks up "
        "(e.g. config/profiles/slurm of the repository)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="show the jobs that would run, run nothing"
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="after a successful run, write OUTPUT_DIR/report.html (snakemake --report)",
    )
    p.add_argument(
        "--use-gpu",
        action="store_true",
        help="set learned.use_gpu: the learned-atlas training job requests gpu=1 and runs on CUDA",
    )
    p.add_argument(
        "--work-dir",
        type=_absolute,
        metavar="DIR",
        help="intermediate files (template iterations); default OUTPUT_DIR/work",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; unknown arguments go to ``args.snakemake_args``.

    Paths come back absolute and labels without their ``sub-``/``ses-`` prefix;
    ``work_dir`` defaults to ``OUTPUT_DIR/work`` and a ``--profile`` folder that exists
    relative to the current folder is made absolute.

    Errors
    ------
    Exits with status 2 and one ``atlas: error: argument <name>: ...`` line (after the
    usage) for a missing BIDS_DIR or --config file, a label that is not a BIDS label,
    bad --cores, OUTPUT_DIR equal to BIDS_DIR, or a reserved Snakemake option.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    for arg in extra:
        name = arg.split("=", 1)[0]
        if name in _RESERVED:
            parser.error(f"argument {name}: set by atlas, not accepted (use --config FILE)")
    if args.output_dir == args.bids_dir:
        parser.error("argument OUTPUT_DIR: must differ from BIDS_DIR")
    args.snakemake_args = extra
    if args.work_dir is None:
        args.work_dir = args.output_dir / "work"
    if args.profile and Path(args.profile).expanduser().is_dir():
        args.profile = str(_absolute(args.profile))
    return args


# --- the Snakemake command -------------------------------------------------------------
def repository_root() -> Path:
    """The folder holding the ``atlas`` package (an editable install: the repository)."""
    return Path(atlas.__file__).resolve().parents[1]


def find_snakefile(root: Path | None = None) -> Path:
    """The workflow's ``Snakefile`` in ``root`` (default :func:`repository_root`).

    Raises
    ------
    CliError when it is not there (atlas installed from a wheel, not from a clone).
    """
    root = repository_root() if root is None else Path(root)
    snakefile = root / "Snakefile"
    if not snakefile.is_file():
        raise CliError(
            f"the workflow is not installed: {snakefile} does not exist; install atlas "
            "from a clone of its repository (pip install -e <clone>)"
        )
    return snakefile


def cli_config(args: argparse.Namespace) -> dict:
    """The config values set by the command line (merged over the other config files).

    ``bids_dir``, ``output_dir``, ``work_dir`` always; ``participant_label``,
    ``exclude_participant_label`` and ``session`` when given; ``learned.use_gpu`` with
    ``--use-gpu``. Values keep their types (labels stay strings).
    """
    config = {
        "bids_dir": str(args.bids_dir),
        "output_dir": str(args.output_dir),
        "work_dir": str(args.work_dir),
    }
    if args.participant_label:
        config["participant_label"] = list(args.participant_label)
    if args.exclude_participant_label:
        config["exclude_participant_label"] = list(args.exclude_participant_label)
    if args.session is not None:
        config["session"] = args.session
    if args.use_gpu:
        config["learned"] = {"use_gpu": True}
    return config


def cli_config_file(args: argparse.Namespace, root: Path) -> tuple[Path, str]:
    """Path and YAML text of the config file holding :func:`cli_config`.

    The file is ``root/.snakemake/atlas/config-<hash of its text>.yaml``: two runs never
    write the same name with different contents. A file rather than ``--config
    key=value``: Snakemake strips quotes and reads such values as numbers or YAML
    (``01`` -> 1, a path with ``": "`` -> a mapping) and nested values only as strings.
    """
    text = yaml.safe_dump(cli_config(args), sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Path(root) / STATE_DIR / f"config-{key}.yaml", text


def build_command(args: argparse.Namespace, snakefile: Path, report: bool = False) -> list[str]:
    """The Snakemake argument list for parsed ``args`` (no file is read or written).

    ``python -m snakemake <participant|group> --snakefile S --directory <S's folder>
    --cores N --rerun-incomplete [--profile P] [--dry-run] [<passed-through args>]
    --configfile [<--config FILE>] <the command's config file>`` (Snakemake merges them,
    in this order, over ``config/config.yaml``; see :func:`cli_config_file`). With
    ``report``, the same command with ``--report OUTPUT_DIR/report.html`` (which only
    writes the report). ``--rerun-incomplete`` makes a rerun after a kill redo the jobs
    that were running when it died.
    """
    snakefile = Path(snakefile)
    root = snakefile.parent
    cmd = [sys.executable, "-m", "snakemake", args.analysis_level]
    cmd += ["--snakefile", str(snakefile), "--directory", str(root)]
    cmd += ["--cores", str(args.cores), "--rerun-incomplete"]
    if args.profile:
        cmd += ["--profile", str(args.profile)]
    if args.dry_run:
        cmd.append("--dry-run")
    if report:
        cmd += ["--report", str(Path(args.output_dir) / "report.html")]
    cmd += list(args.snakemake_args)
    cmd.append("--configfile")
    if args.config:
        cmd.append(str(args.config))
    cmd.append(str(cli_config_file(args, root)[0]))
    return cmd


# --- stale locks -----------------------------------------------------------------------
@dataclass(frozen=True)
class LockDecision:
    """What to do before starting Snakemake.

    ``reason``: ``free`` (no lock names this output, and a recorded run, if any, is
    over), ``stale`` (locks left by a run that died on this host),
    ``alive`` (the recorded run is still running on this host), ``other-host`` (the
    recorded run is on another host: its liveness cannot be checked), ``unknown-owner``
    (locks name this output but no run of this command recorded itself).
    ``action``: ``run``, ``clear`` (remove the stale locks, then run) or ``stop``.
    """

    reason: str
    message: str = ""

    @property
    def action(self) -> str:
        """``run``, ``clear`` or ``stop``, from the reason."""
        return {"free": "run", "stale": "clear"}.get(self.reason, "stop")


def lock_decision(
    record: dict | None,
    locked: bool,
    host: str,
    alive: Callable[[int, str | None], bool],
    output_dir: str = "OUTPUT_DIR",
) -> LockDecision:
    """Decide from the recorded run and the locks whether this run may start.

    ``record``: what a previous ``atlas`` run on the same output wrote (``host``,
    ``processes``: ``[{"pid", "start"}]``, ``started``) or ``None``; ``locked``: whether
    Snakemake lock files name a file of this output or work folder; ``alive(pid,
    start)``: whether that process still runs (:func:`process_alive`). Pure: no file,
    process or clock is read.

    =================  ===============  ===============
    record             locked           decision
    =================  ===============  ===============
    none               no               free (run)
    none               yes              unknown-owner (stop)
    other host         any              other-host (stop)
    this host, alive   any              alive (stop)
    this host, dead    yes              stale (clear, run)
    this host, dead    no               free (run)
    =================  ===============  ===============
    """
    unlock = f"if no other run is writing {output_dir}, run this command once with --unlock"
    if record is None:
        if not locked:
            return LockDecision("free")
        return LockDecision(
            "unknown-owner",
            f"{output_dir} is locked by a Snakemake run that atlas did not start "
            f"(.snakemake/locks); {unlock}, then again without it",
        )
    procs = record.get("processes", [])
    pids = ", ".join(str(p["pid"]) for p in procs) or "?"
    started = record.get("started", "?")
    if record.get("host") != host:
        return LockDecision(
            "other-host",
            f"{output_dir} is in use by an atlas run on host {record.get('host')} (PID "
            f"{pids}, started {started}) that cannot be checked from {host}; {unlock}, "
            "then again without it",
        )
    running = [p for p in procs if alive(int(p["pid"]), p.get("start"))]
    if running:
        pid = running[0]["pid"]
        return LockDecision(
            "alive",
            f"{output_dir} is in use by another atlas run (PID {pid}, started {started}); "
            f"wait for it to finish or stop it (kill {pid}), then run this command again",
        )
    if locked:
        return LockDecision(
            "stale",
            f"cleared the stale Snakemake lock of a run that died (PID {pids}, started "
            f"{started}); resuming",
        )
    return LockDecision("free")


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) from ``/proc/<pid>/stat``; None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], fields[19]


def process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, Linux), or None."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host is running.

    False when there is no such process, when it is a zombie (killed, not yet reaped by
    its parent), or when ``start`` is given and differs from its start time (the PID was
    reused by another process). A process of another user counts as alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    if state in ("Z", "X"):
        return False
    return start is None or started == start


def lock_files_naming(lock_dir: Path, folders: Iterable[Path], workdir: Path) -> list[Path]:
    """Snakemake lock files in ``lock_dir`` naming a file inside one of ``folders``.

    Snakemake's file backend writes ``<n>.input.lock`` / ``<n>.output.lock``, one path a
    line (relative paths are relative to ``workdir``, the Snakemake working directory).
    """
    lock_dir = Path(lock_dir)
    if not lock_dir.is_dir():
        return []
    prefixes = tuple(os.path.join(os.path.abspath(f), "") for f in folders)
    found = []
    for lock in sorted(lock_dir.glob("*.lock")):
        try:
            lines = lock.read_text().splitlines()
        except OSError:
            continue
        paths = (os.path.abspath(os.path.join(workdir, x.strip())) for x in lines if x.strip())
        if any(p.startswith(prefixes) for p in paths):
            found.append(lock)
    return found


def record_path(root: Path, output_dir: Path) -> Path:
    """Where a run on ``output_dir`` records its processes: ``root/.snakemake/atlas/``."""
    key = hashlib.sha256(str(output_dir).encode()).hexdigest()[:16]
    return Path(root) / STATE_DIR / f"run-{key}.json"


def read_record(path: Path) -> dict | None:
    """The run record at ``path``, or None when absent or unreadable (a torn write)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, output_dir: Path, pids: Iterable[int]) -> dict:
    """Write (atomically) the record of this run: host, processes with start times."""
    record = {
        "host": socket.gethostname(),
        "processes": [{"pid": pid, "start": process_start(pid)} for pid in pids],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "output_dir": str(output_dir),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return record


def _remove_own_record(path: Path) -> None:
    record = read_record(path)
    if record and any(p.get("pid") == os.getpid() for p in record.get("processes", [])):
        Path(path).unlink(missing_ok=True)


# --- running ---------------------------------------------------------------------------
def _say(message: str) -> None:
    print(f"atlas: {message}", file=sys.stderr, flush=True)


def _run_recorded(cmd: list[str], root: Path, record: Path | None, output_dir: Path) -> int:
    """Run ``cmd`` in ``root``; while it runs, ``record`` names this process and Snakemake.
    SIGTERM is passed on to Snakemake (which stops its jobs and releases its locks)."""
    if record is not None:
        write_record(record, output_dir, [os.getpid()])
    proc = subprocess.Popen(cmd, cwd=root)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        if record is not None:
            write_record(record, output_dir, [os.getpid(), proc.pid])
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # Snakemake got the same SIGINT: let it clean up
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
        if record is not None:
            _remove_own_record(record)


def execute(args: argparse.Namespace, snakefile: Path) -> int:
    """Run the workflow for parsed ``args``; returns Snakemake's exit status.

    Before starting, checks the locks of this output (:func:`lock_decision`): clears the
    stale locks of a run that died on this host (one line says so), or stops. A dry run
    neither checks nor records. With ``--unlock`` passed through, the record of a run
    that is not running here is removed and Snakemake unlocks. ``--report`` writes
    OUTPUT_DIR/report.html after a successful run. The config file of the command
    (:func:`cli_config_file`) is written before and, except after a dry run, removed
    after the run.

    Raises
    ------
    CliError when another run is using OUTPUT_DIR or its liveness cannot be checked.
    """
    root = Path(snakefile).parent
    cmd = build_command(args, snakefile)
    record = None
    if not args.dry_run:
        record = record_path(root, args.output_dir)
        locks = lock_files_naming(
            root / ".snakemake" / "locks", [args.output_dir, args.work_dir], root
        )
        decision = lock_decision(
            read_record(record),
            bool(locks),
            socket.gethostname(),
            process_alive,
            str(args.output_dir),
        )
        unlocking = "--unlock" in args.snakemake_args
        if decision.reason == "alive" or (decision.action == "stop" and not unlocking):
            raise CliError(decision.message)
        if unlocking:
            record.unlink(missing_ok=True)
            record = None
        elif decision.action == "clear":
            for lock in locks:
                lock.unlink(missing_ok=True)
            _say(decision.message)
    config, text = cli_config_file(args, root)
    if not config.is_file():
        config.parent.mkdir(parents=True, exist_ok=True)
        tmp = config.with_name(f".{config.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, config)
    try:
        rc = _run_recorded(cmd, root, record, args.output_dir)
        if rc == 0 and args.report and not args.dry_run:
            rc = subprocess.run(build_command(args, snakefile, report=True), cwd=root).returncode
    finally:
        if not args.dry_run:  # a dry run may share it with a run of the same config
            config.unlink(missing_ok=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    """Console script ``atlas``: parse, check, run Snakemake; returns the exit status
    (2 and one ``atlas: ...`` line for a problem found before Snakemake starts)."""
    args = parse_args(argv)
    try:
        return execute(args, find_snakefile())
    except CliError as exc:
        _say(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
