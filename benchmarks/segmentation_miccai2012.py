"""Benchmark: multi-atlas segmentation on MICCAI 2012 (OASIS, Neuromorphometrics labels).

Uses the challenge split of ``participants.tsv`` (``challenge_split``: the first
``--n-atlases`` ``train`` subjects are the atlases, every session of the first ``--n-targets``
``test`` subjects the target scans: by default 15 atlases -> 20 scans, 5 of them rescans;
manual labels in ``derivatives/manual``) at ``--resolution`` mm and
compares, each with majority voting and joint label fusion (JLF),

* this workflow, direct route (``segmentation.route: direct``): every atlas registered to every
  target (SyN), labels propagated and fused;
* this workflow, template route (``segmentation.route: template``): every atlas and every
  target registered once to the population template, atlas->template composed with
  template->target;
* the plain ANTsPy recipe (JLF only): pairwise ``ants.registration(type_of_transform="SyN")``
  with its defaults on the raw scans resampled to ``--resolution``, ``ants.apply_transforms``
  (``genericLabel``), then ``ants.joint_label_fusion`` with its defaults (mask: non-zero
  voxels of the target; patch radius 2 and search radius 3 voxels, chosen for 1 mm images).
  ``antspy-jlf-mm`` fuses the same registrations again with the workflow's radii
  (``patch_radius_mm: 2``, ``search_radius_mm: 3`` converted to voxels), so the effect of the
  fusion settings and of the rest of the workflow can be told apart; its time is the plain
  recipe's with the default fusion replaced by this one (the pool wall time of ``antspy-jlf``
  excludes the extra fusions: their job seconds / cores).

Both workflow routes run the real Snakefile (``python -m snakemake <targets> --cores N
--configfile <yaml> --nolock`` from the project root, one output_dir/work_dir per run under
``--out``, logs in ``--out/logs``) with ``segmentation.evaluation.mode: split`` and
``evaluation.methods: [majority, jlf]``, so the workflow itself preprocesses the scans, labels
the test scans (each route registers once and fuses with both methods) and writes the Dice
table (``group/desc-fusionsummary_evaluation.tsv``, Dice on each test scan's preprocessed
grid). The workflow's images (``bids_dir``) are the target scans, so the population template
is theirs. Work common to both routes runs once in a base run and is hard-linked (mtimes kept)
into each route's run (``--rerun-triggers mtime``; a route run fails if it redoes it):

* ``prepare``: preprocessing of the labelled scans (atlases and test scans), as the atlases
  of any segmentation run; the test scans, being workflow images, are preprocessed once, by
  the workflow's ``preprocess`` rule, and their labelled-scan jobs copy that;
* ``template-build``: the population template (reference, affine normalisation, SyGN
  iterations on the workflow's images preprocessed above), which a user builds anyway.

A route's ``wall_s`` is its labelling run: registrations (``n_atlases x n_targets`` in the
direct route; one per atlas to the template in the template route, whose test scans reuse
their template transforms from the template build, being workflow images), propagation,
fusion with both methods and scoring. The template route's atlas registrations run first as
their own call (``template-registrations``, included in its ``wall_s``). Each route's run fuses with
both methods, so per method the table also gives ``job_s_per_scan``: job seconds per scan of
that method alone (propagation, including the registrations in the direct route, plus its
fusion, as timed inside the evaluation jobs; the template route adds its registration wall x
cores / scans; ANTsPy: its per-target time), and ``speedup_per_scan`` from it.
``wall_s_end_to_end`` adds ``prepare`` (and, for the
template route, ``template-build``). ``antspy-jlf`` is the plain recipe over the targets in a
pool of ``--cores`` worker processes (one ITK thread each, like the workflow's jobs), reading
and resampling included. Workflow wall times are those of the whole snakemake process
(parsing and job start-up included: seconds).

Prints one table (mean over targets of the mean Dice over all structures present in either
map; wall times; Dice differences and speed-ups) and writes it, with the settings and
per-target scores, to ``--out/benchmark.tsv`` and ``--out/benchmark.json``. Goals (issue #3):
direct route Dice >= plain recipe; template route >= 5x faster than the plain recipe
(``wall_ratio_vs_antspy`` <= 0.2; the speed-up over the direct route is printed too) with mean
Dice within 0.02. Not a test; run from the project root, e.g.::

    python -m benchmarks.segmentation_miccai2012 --resolution 2 --cores 2 --out /tmp/bench_seg
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "miccai2012"
LABELS = "derivatives/manual"
DESC = "neuromorphometrics"
FUSIONS = ("majority", "jlf")
ROUTES = ("direct", "template")
SHARED = ("prepare", "template-build")  # work common to both routes, run once


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BIDS dataset root")
    parser.add_argument("--resolution", type=float, default=2.0, help="isotropic voxel size, mm")
    parser.add_argument("--n-atlases", type=int, default=15, help="train subjects used as atlases")
    parser.add_argument(
        "--n-targets", type=int, default=15, help="test subjects whose scans are labelled"
    )
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores / plain workers")
    parser.add_argument(
        "--out", type=Path, default=Path("/tmp/bench_seg_miccai2012"), help="fresh output folder"
    )
    parser.add_argument(
        "--template-iterations",
        type=int,
        nargs=2,
        metavar=("AFFINE", "SYN"),
        help="template.affine_iterations and syn_iterations (default: config/config.yaml)",
    )
    parser.add_argument("--seed", type=int, default=1, help="workflow seed / ANTS_RANDOM_SEED")
    parser.add_argument(
        "--backend",
        choices=("ants", "greedy", "fireants"),
        help="template.backend and segmentation.registration.backend (default: config/config.yaml)",
    )
    return parser.parse_args(argv)


# --- plain ANTsPy recipe (runs in worker processes) ------------------------------------------

_CACHE: dict = {}


def scans(data: Path, subjects: list[str]) -> list[str]:
    """Image ids ``sub-<label>_ses-<session>`` of every labelled session of ``subjects``."""
    return [
        f"sub-{s}_{ses.name}"
        for s in subjects
        for ses in sorted((data / LABELS / f"sub-{s}").glob("ses-*"))
    ]


def _load(data: Path, scan: str, resolution: float):
    import ants

    subject, session = scan.split("_")
    anat = f"{subject}/{session}/anat/{scan}"
    t1w = ants.image_read(str(data / f"{anat}_T1w.nii.gz"))
    dseg = ants.image_read(str(data / LABELS / f"{anat}_desc-{DESC}_dseg.nii.gz"))
    t1w = ants.resample_image(t1w, (resolution,) * 3, use_voxels=False, interp_type=0)
    dseg = ants.resample_image_to_target(dseg, t1w, interp_type="genericLabel")
    return t1w, dseg


def antspy_target(data: Path, atlases: list[str], target: str, resolution: float) -> dict:
    """Plain recipe for one target; atlases are read once per worker process."""
    import ants
    import numpy as np

    from atlas.metrics import mean_dice
    from atlas.segmentation import radius_voxels
    from atlas.segmentation.labels import as_labels

    start = time.perf_counter()
    key = (str(data), tuple(atlases), resolution)
    if key not in _CACHE:
        _CACHE[key] = [_load(data, a, resolution) for a in atlases]
    image, reference = _load(data, target, resolution)
    mask = image.new_image_like((image.numpy() != 0).astype(np.float32))
    # the recipe's defaults, but ANTs's files go to a private folder removed on return
    # (without a prefix antspyx leaves them in /tmp); the results do not depend on it
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        warped_images, warped_labels = [], []
        for k, (atlas_image, atlas_dseg) in enumerate(_CACHE[key]):
            reg = ants.registration(
                image, atlas_image, type_of_transform="SyN", outprefix=f"{tmp}/reg{k}_"
            )
            warped_images.append(reg["warpedmovout"])
            warped_labels.append(
                ants.apply_transforms(
                    image, atlas_dseg, reg["fwdtransforms"], interpolator="genericLabel"
                )
            )
        fusion_start = time.perf_counter()
        jlf = ants.joint_label_fusion(
            image, mask, warped_images, label_list=warped_labels, output_prefix=f"{tmp}/jlf_"
        )
        jlf_s = time.perf_counter() - fusion_start
        target_s = time.perf_counter() - start
        fusion_start = time.perf_counter()
        jlf_mm = ants.joint_label_fusion(
            image,
            mask,
            warped_images,
            label_list=warped_labels,
            rad=radius_voxels(2.0, image.spacing),
            r_search=radius_voxels(3.0, image.spacing),
            output_prefix=f"{tmp}/mm_",
        )
        jlf_mm_s = time.perf_counter() - fusion_start

    def dice(result):
        return mean_dice(as_labels(result), as_labels(reference))

    return {
        "target": target,
        "dice": dice(jlf["segmentation"]),
        "target_s": target_s,
        "jlf_s": jlf_s,
        "dice_mm": dice(jlf_mm["segmentation"]),
        "jlf_mm_s": jlf_mm_s,
    }


def run_antspy(args, atlases: list[str], targets: list[str]) -> tuple[float, pd.DataFrame]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    start = time.perf_counter()
    with ProcessPoolExecutor(
        max_workers=min(args.cores, len(targets)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = [
            pool.submit(antspy_target, args.data.resolve(), atlases, t, args.resolution)
            for t in targets
        ]
        rows = pd.DataFrame([f.result() for f in futures])
    wall = time.perf_counter() - start - rows["jlf_mm_s"].sum() / min(args.cores, len(targets))
    return wall, rows


# --- workflow routes --------------------------------------------------------------------------


def workflow_config(args, run_dir: Path, route: str, atlases, targets) -> dict:
    data = str(args.data.resolve())
    cfg = {
        "bids_dir": data,
        "participant_label": targets,
        "session": "all",
        "output_dir": str(run_dir / "output"),
        "work_dir": str(run_dir / "work"),
        "resolution": args.resolution,
        "threads_per_job": 1,
        "seed": args.seed,
        "segmentation": {
            "atlases": {
                "bids_dir": data,
                "labels": LABELS,
                "desc": DESC,
                "participant_label": [*atlases, *targets],
                "session": "all",
            },
            "route": route,
            "fusion": "jlf",
            "probseg": False,
            "evaluation": {
                "mode": "split",
                "methods": list(FUSIONS),
                "split_column": "challenge_split",
                "train": "train",
                "test": "test",
            },
        },
    }
    if args.template_iterations:
        cfg["template"] = dict(
            zip(("affine_iterations", "syn_iterations"), args.template_iterations, strict=True)
        )
    if args.backend:
        cfg["template"] = cfg.get("template", {}) | {"backend": args.backend}
        cfg["segmentation"]["registration"] = {"backend": args.backend}
    return cfg


def snakemake(args, name: str, cfg: dict, targets: list[str], extra=()) -> float:
    """Run the Snakefile for ``targets``; returns the wall time in seconds."""
    cfg_path = args.out / "configs" / f"{name}.yaml"
    log_path = args.out / "logs" / f"{name}.log"
    cfg_path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", str(args.cores)]
    cmd += ["--configfile", str(cfg_path), "--nolock", *extra]
    env = os.environ | {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        tail = log_path.read_text()[-4000:]
        sys.exit(f"snakemake run {name} failed (log {log_path}):\n{tail}")
    return wall


def link_tree(source: Path, dest: Path) -> None:
    """Hard-link (copy where linking fails) a finished run; keeps mtimes for snakemake."""

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link)


def workflow_scores(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Per-target mean Dice and job seconds (propagation, fusion) of each fusion method of a
    route's split evaluation."""
    summary = pd.read_csv(
        run_dir / "output" / "group" / "desc-fusionsummary_evaluation.tsv", sep="\t"
    ).rename(columns={"subject": "target", "mean_dice": "dice"})
    columns = ["target", "dice", "propagation_s", "fusion_s"]
    return {f: summary.loc[summary["method"] == f, columns] for f in FUSIONS}


# --- main -------------------------------------------------------------------------------------


def summarise(walls: dict, scores: dict, cores: int) -> pd.DataFrame:
    runs = [f"{r}-{f}" for r in ROUTES for f in FUSIONS]
    plain = ("antspy-jlf", "antspy-jlf-mm")
    table = pd.DataFrame(index=pd.Index([*runs, *plain, *SHARED], name="route"))
    table["mean_dice"] = pd.Series({k: v["dice"].mean() for k, v in scores.items()})
    table["wall_s"] = pd.Series(
        {k: walls[k.split("-")[0]] for k in runs} | {k: walls[k] for k in (*plain, *SHARED)}
    )
    # Job seconds per scan of one fusion method alone: propagation (with the registrations in
    # the direct route) + that fusion; the template route adds its share of the atlas ->
    # template registrations (wall x cores / scans).
    for k in runs:
        per_scan = scores[k]["propagation_s"] + scores[k]["fusion_s"]
        table.loc[k, "job_s_per_scan"] = per_scan.mean()
        table.loc[k, "fusion_s_per_scan"] = scores[k]["fusion_s"].mean()
    for k in plain:
        table.loc[k, "job_s_per_scan"] = scores[k]["target_s"].mean()
    shared_registrations = walls["template-registrations"] * cores / len(scores[runs[0]])
    table.loc[[f"template-{f}" for f in FUSIONS], "job_s_per_scan"] += shared_registrations
    table["wall_s_end_to_end"] = table["wall_s"]
    table.loc[runs, "wall_s_end_to_end"] += walls["prepare"]
    table.loc[[f"template-{f}" for f in FUSIONS], "wall_s_end_to_end"] += walls["template-build"]
    table.loc[list(SHARED), "wall_s_end_to_end"] = float("nan")
    table["dice_minus_antspy"] = table["mean_dice"] - table.loc["antspy-jlf", "mean_dice"]
    for f in FUSIONS:
        direct, tpl = table.loc[f"direct-{f}"], f"template-{f}"
        table.loc[tpl, "dice_minus_direct"] = table.loc[tpl, "mean_dice"] - direct["mean_dice"]
        table.loc[tpl, "speedup_vs_direct"] = direct["wall_s"] / table.loc[tpl, "wall_s"]
        table.loc[tpl, "speedup_per_scan"] = (
            direct["job_s_per_scan"] / table.loc[tpl, "job_s_per_scan"]
        )
        table.loc[tpl, "speedup_vs_direct_end_to_end"] = (
            direct["wall_s_end_to_end"] / table.loc[tpl, "wall_s_end_to_end"]
        )
    table["wall_ratio_vs_antspy"] = table["wall_s"] / table.loc["antspy-jlf", "wall_s"]
    table.loc[list(SHARED), "wall_ratio_vs_antspy"] = float("nan")
    table["end_to_end_ratio_vs_antspy"] = (
        table["wall_s_end_to_end"] / table.loc["antspy-jlf", "wall_s"]
    )
    return table


def main(argv=None) -> None:
    args = parse_args(argv)
    # Inherited by the workflow jobs and the spawned ANTsPy workers (ITK reads them at start-up).
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    os.environ["ANTS_RANDOM_SEED"] = str(args.seed)
    args.out = args.out.resolve()
    if any((args.out / r).exists() for r in ("base", *ROUTES)):
        sys.exit(f"{args.out} holds runs of an earlier benchmark; give a fresh --out")
    for sub in ("configs", "logs"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)

    participants = pd.read_csv(args.data / "participants.tsv", sep="\t")
    split = participants.groupby("challenge_split")["participant_id"].apply(list)
    atlases = [s.removeprefix("sub-") for s in split["train"][: args.n_atlases]]
    targets = [s.removeprefix("sub-") for s in split["test"][: args.n_targets]]
    print(
        f"{len(atlases)} atlases -> {len(scans(args.data, targets))} scans of {len(targets)} "
        f"test subjects at {args.resolution:g} mm, "
        f"--cores {args.cores} (1 ITK thread per job); output under {args.out}",
        flush=True,
    )

    walls: dict[str, float] = {}
    scores: dict[str, pd.DataFrame] = {}
    res = f"{args.resolution:g}".replace(".", "p")
    base = args.out / "base"
    template = base / "output" / "tpl-atlas" / f"tpl-atlas_res-{res}_T1w.nii.gz"
    prepared = [
        base / "work" / "segmentation" / "atlases" / f"{scan}_desc-preproc_T1w.nii.gz"
        for scan in scans(args.data, [*atlases, *targets])
    ]
    cfg = workflow_config(args, base, "template", atlases, targets)
    for name, files in (("prepare", prepared), ("template-build", [template])):
        walls[name] = snakemake(args, name, cfg, [str(f) for f in files])
        print(f"  {name:<18} {walls[name]:8.1f} s", flush=True)

    for route in ROUTES:
        run_dir = args.out / route
        link_tree(base / "output", run_dir / "output")
        link_tree(base / "work", run_dir / "work")
        shared = [run_dir / f.relative_to(base) for f in (template, *prepared)]
        before = [f.stat().st_mtime for f in shared]
        cfg = workflow_config(args, run_dir, route, atlases, targets)
        summary = run_dir / "output" / "group" / "desc-fusionsummary_evaluation.tsv"
        extra = ("--rerun-triggers", "mtime")
        walls[route] = 0.0
        if route == "template":  # atlas -> template registrations, timed apart
            registrations = [
                str(run_dir / "work" / "segmentation" / "template" / f"{scan}_affine.mat")
                for scan in scans(args.data, atlases)
            ]
            name = "template-registrations"
            walls[name] = snakemake(args, name, cfg, registrations, extra)
            walls[route] = walls[name]
        walls[route] += snakemake(args, route, cfg, [str(summary)], extra)
        if [f.stat().st_mtime for f in shared] != before:
            sys.exit(f"{route}: shared work was redone, so its time is not comparable")
        for fusion, table in workflow_scores(run_dir).items():
            scores[f"{route}-{fusion}"] = table
            print(
                f"  {route}-{fusion:<10} {walls[route]:8.1f} s  "
                f"mean Dice {table['dice'].mean():.3f}",
                flush=True,
            )

    walls["antspy-jlf"], plain = run_antspy(
        args, scans(args.data, atlases), scans(args.data, targets)
    )
    scores["antspy-jlf"] = plain
    # the same registrations fused with the workflow's mm radii instead of JLF's defaults
    scores["antspy-jlf-mm"] = plain.assign(
        dice=plain["dice_mm"], target_s=plain["target_s"] - plain["jlf_s"] + plain["jlf_mm_s"]
    )
    walls["antspy-jlf-mm"] = walls["antspy-jlf"] * (
        scores["antspy-jlf-mm"]["target_s"].sum() / plain["target_s"].sum()
    )
    for k in ("antspy-jlf", "antspy-jlf-mm"):
        print(f"  {k:<18} {walls[k]:8.1f} s  mean Dice {scores[k]['dice'].mean():.3f}", flush=True)

    table = summarise(walls, scores, args.cores)
    pd.set_option("display.width", 200)
    print()
    print(table.round(3).to_string())
    per_target = pd.concat(
        [s.assign(route=k)[["route", "target", "dice"]] for k, s in scores.items()],
        ignore_index=True,
    )
    table.to_csv(args.out / "benchmark.tsv", sep="\t", na_rep="n/a")
    per_target.to_csv(args.out / "benchmark_targets.tsv", sep="\t", index=False)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {
        "atlases": atlases,
        "targets": targets,
    }
    (args.out / "benchmark.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "table": json.loads(table.reset_index().to_json(orient="records")),
                "per_target": per_target.to_dict(orient="records"),
            },
            indent=2,
        )
    )
    print(f"\nwritten: {args.out / 'benchmark.tsv'}, {args.out / 'benchmark.json'}")


if __name__ == "__main__":
    main()
