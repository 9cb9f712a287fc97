"""Workflow start-up at scale: `snakemake -n` on a synthetic 1000-subject BIDS cohort.

The cohort is made of real IXI T1w images (../shared/data/ixi) downsampled to 8 mm and
copied under new subject names (sub-S0001 ...), with ages, in /tmp. The dry run is
timed twice: cold (no image-validation cache: every image's voxels are read) and warm
(the cache in .snakemake/atlas/ answers; this is what every cluster job pays when it re-parses
the workflow). Prints wall and CPU time, peak memory (max RSS of the Snakemake process),
the number of jobs planned and the load average before each run (the machine is shared:
CPU seconds are the figure to compare). ``--slurm`` also times the dry run of the SLURM
profile, which groups the per-image jobs (``groups:`` in config/profiles/slurm): Snakemake
checks every group against the whole DAG, minutes at this size, paid once per run by the
submit host (local runs and a plain ``snakemake -n`` have no groups). ``--floor`` also
times Snakemake alone on the same DAG shape (benchmarks/startup_floor.smk: the same jobs,
O(1) input functions, no BIDS query, no validation), the floor of ``snakemake -n``.

    python benchmarks/startup_1000.py [--n 1000] [--dir /tmp/atlas_startup] [--slurm] [--floor]

Targets (issue 14): warm < 30 s and < 2 GB; cold < 5 min.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from nibabel.processing import resample_to_output

ROOT = Path(__file__).resolve().parents[1]
IXI = ROOT.parent / "shared" / "data" / "ixi"


def make_cohort(out: Path, n: int, voxel_mm: float = 8.0) -> Path:
    """``n`` subjects cycling through the IXI images, downsampled to ``voxel_mm``."""
    if (out / "participants.tsv").is_file() and len(
        pd.read_csv(out / "participants.tsv", sep="\t")
    ) == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    src = pd.read_csv(IXI / "participants.tsv", sep="\t")
    small = []
    for pid in src.participant_id:
        img = nib.load(IXI / pid / "anat" / f"{pid}_T1w.nii.gz")
        low = resample_to_output(img, voxel_sizes=voxel_mm, order=1)
        data = np.asarray(low.dataobj, dtype=np.float32)
        small.append(nib.Nifti1Image(data, low.affine))
    rows = []
    for i in range(n):
        k = i % len(small)
        sub = f"sub-S{i + 1:04d}"
        path = out / sub / "anat" / f"{sub}_T1w.nii.gz"
        path.parent.mkdir(parents=True)
        nib.save(small[k], str(path))
        rows.append({"participant_id": sub, "age": src.age[k], "sex": src.sex[k]})
    pd.DataFrame(rows).to_csv(out / "participants.tsv", sep="\t", index=False)
    desc = {"Name": f"synthetic {n}-subject cohort (IXI copies)", "BIDSVersion": "1.9.0"}
    (out / "dataset_description.json").write_text(json.dumps(desc))
    return out


def dry_run(config: Path, args=("-n",)) -> dict:
    """One `snakemake -n` under /usr/bin/time: wall and CPU (user + system) seconds, peak
    RSS, jobs planned. CPU seconds are what the run costs on a machine of its own."""
    rss = config.parent / "maxrss_kb"
    load = os.getloadavg()[0]
    cmd = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss), sys.executable, "-m", "snakemake"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd + [*args, "--nolock", "--configfile", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stdout[-2000:] + proc.stderr[-3000:])
    peak_kb, user, system = rss.read_text().split()[-3:]
    total = re.search(r"^total\s+(\d+)$", proc.stdout + proc.stderr, re.M)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(float(user) + float(system), 1),
        "peak_mb": round(int(peak_kb) / 1024),
        "jobs": int(total.group(1)) if total else None,
        "load": round(load, 1),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/atlas_startup"))
    ap.add_argument("--slurm", action="store_true", help="also the SLURM profile's dry run")
    ap.add_argument("--floor", action="store_true", help="also Snakemake alone, same DAG")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    bids = make_cohort(args.dir / "bids", args.n)
    print(f"cohort: {args.n} subjects in {bids} ({time.perf_counter() - t0:.0f} s)")
    work = args.dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    (ROOT / ".snakemake" / "atlas" / "image_validation.json").unlink(missing_ok=True)  # cold
    config = args.dir / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"bids_dir": str(bids), "output_dir": str(args.dir / "out"), "work_dir": str(work)}
        )
    )
    cold = dry_run(config)
    warm = dry_run(config)
    # what each cluster job pays before its own small DAG: parsing the workflow (BIDS
    # query + validation, from the cache) without planning the whole cohort
    parse = dry_run(config, ("--list-rules",))
    runs = {"snakemake -n cold": cold, "snakemake -n warm": warm, "parse only, warm": parse}
    if args.floor:
        runs["Snakemake alone, same DAG (startup_floor.smk)"] = dry_run(
            config, ("-n", "-s", "benchmarks/startup_floor.smk")
        )
    if args.slurm:
        runs["snakemake -n --profile config/profiles/slurm, warm"] = dry_run(
            config, ("-n", "--profile", "config/profiles/slurm")
        )
    for name, r in runs.items():
        print(
            f"{name}: {r['wall_s']} s wall, {r['cpu_s']} s CPU, "
            f"peak RSS {r['peak_mb']} MB, {r['jobs'] or '-'} jobs planned "
            f"(load average {r['load']} before)"
        )


if __name__ == "__main__":
    main()
