"""Benchmark: learned 4D infant atlases (AARN + atlas path) against the published BCP 4D atlas.

Usage (from the project root)::

    nice -n 10 python benchmarks/learned_infant.py [--variants conditional,gan+tissue]
        [--steps 400] [--batch-size 4] [--resolution 3] [--out DIR]

Issue 13, acceptance "Infant". For each variant of the 2 x 2 design (``conditional``,
``conditional+tissue``, ``atlas-gan``, ``gan+tissue``; ``--variants``, default
``conditional,gan+tissue``), in its own output folder, the real Snakefile runs on the 8
skull-stripped scans of ``../shared/data/infant/bids`` (7 infants of 1-23 months and a
6-year-old; ages in months, ``learned.age_units: months``): preprocessing at
``--resolution`` mm (brain-only detected), affine normalisation to the BCP 12-month atlas
(``reference``), with ``learned.enabled``, ``aarn: true`` and ``ages: [0, 3, 6, 12, 24]``;
for the tissue variants the Atropos tissue map of each image (rule ``learned_tissue``), then
the training (``--steps`` steps of ``--batch-size``, one torch thread, alone), the AARN and
the atlases at the five ages (``desc-agescaled`` atlases at age-specific size).

The published BCP 4D infant atlas (Chen et al. 2022, NeuroImage;
``../shared/data/infant/templates/tpl-UNCBCP4DInfant``, brain T1w at 0, 3, 6, 12, 24
months, 0.8 mm) is the reference only: it is never trained on (its 12-month T1w is the
normalisation target, as in ``tests/integration/test_infant_aarn.py``).

Per variant and age:

* ``aarn_scale``: isotropic scale of the AARN at that age (``learned/aarn.tsv``; the same
  for every variant: same affines and seed); ``bcp_scale``: the BCP atlas's linear size
  relative to its 12-month cohort, ``(bcp_ml / bcp_ml(12)) ** (1/3)``.
* ``ours_ml``: brain volume (mL) of the sampled atlas at age-specific size: the voxels of
  the ``desc-agescaled`` atlas in its brain (:func:`atlas.metrics.foreground`: above 5 % of
  the 99.5th percentile, largest component, holes filled) times the voxel volume of its
  header affine ``M(age) @ affine`` (|det|, mm^3). ``ours_tissue_ml`` (tissue variants):
  the same with the learned tissue map's brain (``_dseg`` > 0). ``bcp_ml``: brain volume of
  the BCP cohort atlas (non-zero voxels); ``ratio`` = ``ours_ml / bcp_ml``.
* ``ncc``: NCC of our T1w atlas at that age vs the BCP T1w of that age after affine
  alignment (ANTs ``Affine`` preset through :func:`atlas.registration.register_preset`,
  BCP moving onto our atlas, centre-of-mass start, one ITK thread), inside the union of our
  brain and the BCP brain carried onto our grid (nearest neighbour), on our common-space
  grid (an affine absorbs the age scaling); mean over ``--seeds`` alignment seeds, with
  ``ncc_spread`` (max - min) the alignment's own noise. ``ncc_ours12``: the same for our
  12-month atlas against the BCP atlas of that age, the control for age specificity
  (``ncc > ncc_ours12`` at an age: conditioning on that age moved our atlas towards the
  BCP atlas of that age). Rows ``mean of training images``: the voxel-wise mean of the 8
  normalised images (iteration 0 of the iterative template: no learning, no age).

Per variant: training wall and CPU time and peak RSS of the training job (``os.wait4`` on
the Snakemake process that runs only ``learned_train``: its largest process and the CPU of
the whole tree, Snakemake's parse included, about 3 s). Writes ``benchmark.json`` and
``benchmark.tsv`` under ``--out``; rerunning with the same ``--out`` reuses what is finished
(training resumes from its checkpoint when ``--steps`` is raised; the training figures are
those of the call that trained, kept in ``<variant>/train_usage.json``).

Measured
--------
2026-11-30, the 2-core development VM shared with other benchmarks (load 4-6), ``nice -n
10``, one torch / ITK thread: ``nice -n 10 python benchmarks/learned_infant.py --variants
conditional,gan+tissue --steps 400 --batch-size 4 --out /tmp/bench_inf`` (the defaults;
common-space grid 49 x 58 x 48 at 3 mm; 400 steps of 4 = 200 passes over the 8 scans).
Training: conditional 599 s CPU / 622 s wall, peak RSS 724 MB (1.55 s per step); GAN +
tissue 812 s CPU / 838 s wall, 854 MB (2.07 s per step). Inputs of the training
(preprocessing and normalisation, 2 jobs at a time): 178 s CPU / 198 s wall; with the 8
Atropos tissue jobs 215 s / 225 s (about 5 s each); AARN + sampling 15 s.

=================  ===  =====  =====  =======  ======  ======  =====  =====  =====  ======
variant            age  AARN   BCP    ours mL  tissue  BCP mL  ratio  NCC    spr.   ours12
=================  ===  =====  =====  =======  ======  ======  =====  =====  =====  ======
conditional          0  0.699  0.811    385              586   0.66   0.538  0.014  0.517
conditional          3  0.790  0.896    556              790   0.70   0.474  0.008  0.455
conditional          6  0.912  0.947    855              932   0.92   0.459  0.017  0.448
conditional         12  1.029  1.000   1227             1097   1.12   0.408  0.022  0.413
conditional         24  0.995  1.043   1110             1243   0.89   0.406  0.004  0.407
GAN + tissue         0  0.699  0.811    436      386     586   0.74   0.577  0.023  0.565
GAN + tissue         3  0.790  0.896    620      553     790   0.78   0.540  0.012  0.539
GAN + tissue         6  0.912  0.947    942      835     932   1.01   0.522  0.030  0.522
GAN + tissue        12  1.029  1.000   1351     1180     1097   1.23   0.502  0.032  0.492
GAN + tissue        24  0.995  1.043   1226     1056     1243   0.99   0.482  0.014  0.484
mean of images       0                                   586          0.602  0.005
mean of images       3                                   790          0.569  0.093
mean of images       6                                   932          0.559  0.033
mean of images      12                                  1097          0.552  0.018
mean of images      24                                  1243          0.530  0.053
=================  ===  =====  =====  =======  ======  ======  =====  =====  =====  ======

What it shows (7 infants and a 6-year-old are a tiny training set; one seed):

* Volume: the age-specific size comes from the AARN alone (both variants share it), and it
  undershoots the BCP growth curve at 0-3 months (linear scale 0.70 / 0.79 vs BCP 0.81 /
  0.90; 0 months lies below the youngest scan, 1 month) and falls from 12 to 24 months
  (1.03 -> 0.99; two scans at 19 and 23 months and one at 72): volume ratio 0.66-0.78 at
  0-3 months, 0.92-1.01 at 6, 1.12-1.23 at 12, 0.89-0.99 at 24. The common-space atlas brain
  is larger than the BCP 12-month brain it was normalised to (by the foreground rule, 1128
  mL conditional and 1241-1278 mL GAN + tissue at 0 and 12 months vs 1097 mL: blurred
  edges); GAN + tissue's learned tissue map gives a tighter brain (``tissue`` column; ratio
  1.08 at 12 months).
* Appearance: GAN + tissue is closer to the BCP atlas than the conditional atlas at every
  age (NCC +0.04 to +0.09, above the alignment spread), but neither beats the plain mean of
  the 8 normalised scans (0.53-0.60). Age conditioning moves the atlas towards the BCP atlas
  of that age by at most 0.02 NCC (``ncc`` vs ``ours12`` at 0-6 months), within the
  alignment noise: no measurable age-specific appearance at this training size.
* Tissue maps: Atropos classes are ordered by T1w intensity; at 1-6 months (3 of the 8
  scans) white matter is darker than or as bright as grey matter, so the brightest class is
  not WM, and the learned "WM" map covers nearly the whole brain at 0-3 months (montage).
  Infant tissue guidance needs an infant-specific segmentation (T2w or age-specific
  priors), which this workflow does not provide.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"  # before ANTs loads: the
# alignments' results depend on the thread count
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
INFANT = DATA / "infant"
BCP = INFANT / "templates" / "tpl-UNCBCP4DInfant"
AGES = [0, 3, 6, 12, 24]  # months: the BCP cohorts
VARIANTS = {
    "conditional": {},
    "conditional+tissue": {"tissue_weight": 0.3},
    "atlas-gan": {"adversarial": True},
    "gan+tissue": {"adversarial": True, "tissue_weight": 0.3},
}
"""The 2 x 2 design of issue 13 (``learned`` config switches), named as in
``benchmarks/learned_oasis2d.py``; tissue weight 0.3 and the default adversarial weight 0.3,
chosen there on a validation split."""
NAME = "infant"
REF_SPACE = "UNCBCP4DInfantcohort12"  # space- label of the images normalised to BCP 12 months


def bcp_path(months: int) -> Path:
    return BCP / f"tpl-UNCBCP4DInfant_cohort-{months:02d}_desc-brain_T1w.nii.gz"


def snakemake(cfg_path: Path, targets=(), cores: int = 2, extra=()) -> dict:
    """Run the Snakefile on ``targets``; wall time (s), CPU time (s, user + system of the
    whole process tree) and peak RSS (MB, the largest process) from ``os.wait4``. Exits
    with the log tail on failure."""
    cmd = [sys.executable, "-m", "snakemake", *map(str, targets), "--cores", str(cores)]
    cmd += [*extra, "--nolock", "--configfile", str(cfg_path)]
    env = os.environ | {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    log = cfg_path.parent / "snakemake.log"
    start = time.perf_counter()
    with log.open("a") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"snakemake failed (log {log}):\n{log.read_text()[-4000:]}")
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def variant_config(variant: str, out: Path, args) -> dict:
    """Workflow config of one variant (its own output and work folders)."""
    learned = {
        "enabled": True,
        "name": NAME,
        "ages": AGES,
        "age_units": "months",
        "aarn": True,
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "checkpoint_every": max(1, args.steps // 4),
            "log_every": max(1, args.steps // 20),
        },
        # the adversarial weight ramps over the first third, as in learned_oasis2d.py
        "discriminator": {"warmup_steps": args.steps // 3},
    }
    return {
        "bids_dir": str(INFANT / "bids"),
        "output_dir": str(out / "out"),
        "work_dir": str(out / "work"),
        "resolution": args.resolution,
        "reference": str(bcp_path(12)),
        "learned": learned | VARIANTS[variant],
    }


def brain_ml(path: Path, foreground: bool, voxels_of: Path | None = None) -> float:
    """Brain volume (mL) of an image: its :func:`atlas.metrics.foreground` voxels
    (``foreground``) or non-zero voxels (those of ``voxels_of``, a map on the same voxel
    grid, when given), times the voxel volume |det| of the image's header affine (mm^3)."""
    from atlas import metrics

    img = nib.load(str(path))
    data = np.asarray(nib.load(str(voxels_of or path)).dataobj, dtype=np.float32)
    mask = metrics.foreground(data) if foreground else data != 0
    return float(mask.sum() * abs(np.linalg.det(img.affine[:3, :3])) / 1000.0)


def aligned_ncc(ours: Path, bcp: Path, seed: int = 0) -> float:
    """NCC of our atlas vs a BCP atlas registered onto it (ANTs ``Affine`` preset), inside
    the union of both brains on our grid."""
    import ants

    from atlas import metrics
    from atlas.registration import register_preset

    fixed, moving = ants.image_read(str(ours)), ants.image_read(str(bcp))
    with tempfile.TemporaryDirectory(prefix="atlas-bench-infant-") as tmp:
        reg = register_preset(
            fixed, moving, f"{tmp}/bcp_", type_of_transform="Affine", random_seed=seed
        )
        brain = ants.apply_transforms(
            fixed,
            moving.new_image_like((moving.numpy() != 0).astype(np.float32)),
            list(reg.forward.paths),
            interpolator="nearestNeighbor",
        )
    ours_arr = fixed.numpy()
    union = metrics.foreground(ours_arr) | (brain.numpy() > 0)
    return metrics.ncc(ours_arr, reg.warped.numpy(), union)


def ncc_columns(ours: Path, months: int, seeds: int, ours12: Path | None = None) -> dict:
    """``ncc`` of ``ours`` vs the BCP atlas at ``months`` (mean over ``seeds`` alignment
    seeds), ``ncc_spread`` (max - min: the alignment's own noise, Mattes MI with random
    sampling) and, with ``ours12``, ``ncc_ours12``: the same for that atlas (mean)."""
    at_age = [aligned_ncc(ours, bcp_path(months), seed) for seed in range(seeds)]
    row = {"ncc": float(np.mean(at_age)), "ncc_spread": float(np.ptp(at_age))}
    if ours12 is not None:
        at_12 = [aligned_ncc(ours12, bcp_path(months), seed) for seed in range(seeds)]
        row["ncc_ours12"] = float(np.mean(at_12))
    return row


def score(variant: str, out: Path, res: str, seeds: int) -> list:
    """Rows (one per age) of a variant: volumes, ratio, NCC vs the BCP atlas of that age
    and vs the BCP 12-month atlas. ``ours_tissue_ml`` (tissue variants): the brain of the
    learned tissue map (``_dseg`` > 0) at age-specific size."""
    tpl = out / "out" / f"tpl-{NAME}Learned"

    def stem(k):
        return tpl / f"cohort-{k}" / f"tpl-{NAME}Learned_cohort-{k}_res-{res}"

    ours12 = Path(f"{stem(AGES.index(12) + 1)}_T1w.nii.gz")
    scale = pd.read_csv(out / "out" / "learned" / "aarn.tsv", sep="\t").set_index("age").scale
    bcp12_ml = brain_ml(bcp_path(12), False)
    rows = []
    for k, months in enumerate(AGES, start=1):
        ours = Path(f"{stem(k)}_T1w.nii.gz")
        scaled, dseg = Path(f"{stem(k)}_desc-agescaled_T1w.nii.gz"), Path(f"{stem(k)}_dseg.nii.gz")
        ours_ml, bcp_ml = brain_ml(scaled, True), brain_ml(bcp_path(months), False)
        rows.append(
            {
                "variant": variant,
                "age_months": months,
                "aarn_scale": float(scale[months]),
                "bcp_scale": (bcp_ml / bcp12_ml) ** (1 / 3),
                "ours_ml": ours_ml,
                "ours_tissue_ml": brain_ml(scaled, False, dseg) if dseg.is_file() else np.nan,
                "bcp_ml": bcp_ml,
                "ratio": ours_ml / bcp_ml,
                **ncc_columns(ours, months, seeds, ours12),
            }
        )
    return rows


def mean_image_rows(out: Path, seeds: int) -> list:
    """Baseline rows: the voxel-wise mean of the normalised training images (the iterative
    template's iteration 0: no learning, no age) against the BCP atlas of each age, scored
    like :func:`score` (NCC only: it has no age-specific size)."""
    images = sorted((out / "out").rglob(f"sub-*_space-{REF_SPACE}_desc-preproc_T1w.nii.gz"))
    first = nib.load(str(images[0]))
    mean = np.mean([np.asarray(nib.load(str(p)).dataobj, dtype=np.float32) for p in images], 0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="atlas-bench-infant-") as tmp:
        path = Path(tmp) / "mean_T1w.nii.gz"
        nib.save(nib.Nifti1Image(mean, first.affine), str(path))
        for months in AGES:
            rows.append(
                {
                    "variant": "mean of training images",
                    "age_months": months,
                    "bcp_ml": brain_ml(bcp_path(months), False),
                    **ncc_columns(path, months, seeds),
                }
            )
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--variants",
        default="conditional,gan+tissue",
        help=f"comma-separated, of {', '.join(VARIANTS)}",
    )
    ap.add_argument("--steps", type=int, default=400, help="learned.train.steps")
    ap.add_argument("--batch-size", type=int, default=4, help="learned.train.batch_size")
    ap.add_argument("--resolution", type=float, default=3.0, help="mm")
    ap.add_argument("--cores", type=int, default=2, help="parallel jobs outside training")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training")
    ap.add_argument("--seeds", type=int, default=3, help="affine alignments per NCC")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_learned_infant"))
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    args.out = args.out.resolve()
    res = f"{args.resolution:g}".replace(".", "p")

    rows, runs = [], {}
    for variant in variants:
        out = args.out / variant.replace("+", "-")
        out.mkdir(parents=True, exist_ok=True)
        cfg_path = out / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(variant_config(variant, out, args)))
        print(f"{variant}: {args.steps} steps of batch {args.batch_size}, {out}", flush=True)
        learned = out / "out" / "learned"
        # inputs of the training first (preprocessing, normalisation, Atropos tissue maps):
        # then the training runs alone and its resources are its own
        prep = snakemake(
            cfg_path, [learned / "model.pt"], args.cores, ["--omit-from", "learned_train"]
        )
        model = learned / "model.pt"
        before = model.stat().st_mtime if model.is_file() else None
        train = snakemake(
            cfg_path, [model], args.threads, ["--set-threads", f"learned_train={args.threads}"]
        )
        usage = out / "train_usage.json"  # the figures of the call that trained
        if before is None or model.stat().st_mtime != before:
            usage.write_text(json.dumps(train))
        train = json.loads(usage.read_text())
        sample = snakemake(
            cfg_path, [out / "out" / f"tpl-{NAME}Learned" / "template_description.json"]
        )
        runs[variant] = {"inputs": prep, "train": train, "sample": sample}
        print(f"  training: {json.dumps(train)}", flush=True)
        rows += score(variant, out, res, args.seeds)

    first = args.out / variants[0].replace("+", "-")
    table = pd.DataFrame(rows + mean_image_rows(first, args.seeds))
    timing = pd.DataFrame(
        [
            {"variant": v, **{f"train_{k}": x for k, x in r["train"].items()}}
            for v, r in runs.items()
        ]
    )
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))
    print(timing.round(1).to_string(index=False))
    table.merge(timing, on="variant", how="left").to_csv(
        args.out / "benchmark.tsv", sep="\t", index=False
    )
    (args.out / "benchmark.json").write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "table": table.to_dict(orient="records"),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
