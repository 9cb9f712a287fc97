"""Benchmark: this workflow's SyGN template vs ``ants.build_template`` on real IXI subjects.

Both start from the same preprocessed, affinely normalised images (made by this
workflow, not timed), use the same number of SyN iterations, the same SyN metric,
schedule and gradient step, and run on this machine in one process tree. Printed:
wall time of each (ours: the template and every subject's transforms to it, what
``ants.build_template`` returns; and the full run with the per-image QC figures, methods
and provenance), the ratios ours/ANTs, and the mean pairwise Dice of the DLMUSE
labels (``derivatives/dlmuse``) carried into each template space, for our affine stage,
our SyN stage and ANTs' template, and the % of template-foreground voxels where a
subject's final warp has a non-positive Jacobian determinant (mean over subjects).
``--backend`` picks our registration engine (config ``template.backend``); ANTs'
``ants.build_template`` runs in the same invocation, so the ratio compares like with like
(``--no-ants`` skips it, for scaling points where it does not fit the time). For scaling
(issue 15: 10, 25, 50 subjects) it also prints seconds per subject per iteration and the
peak memory of each side (largest resident set of any one process: a workflow job, or the
process running ``ants.build_template``).

    nice -n 5 python benchmarks/template_ixi.py --subjects 10 --backend greedy --out /tmp/bench_ixi

Not a test: it takes tens of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def snakemake(config_path: Path, targets=(), cores: int = 2) -> float:
    """Run the workflow; returns the peak resident set (MB) of its largest process (GNU
    time's %M: the maximum over Snakemake and every job it waited for)."""
    rss = config_path.parent / "maxrss_kb"
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss)]
    cmd += [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores)]
    cmd += ["--configfile", str(config_path), "--quiet", "progress", "--nolock"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return int(rss.read_text().split()[-1]) / 1024


def cpu_seconds(who) -> float:
    """User + system CPU seconds of this process (``RUSAGE_SELF``) or of its finished
    children (``RUSAGE_CHILDREN``): the cost on a machine of its own, whatever the load."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def mean_pairwise_dice(label_maps: list[np.ndarray]) -> float:
    from atlas.metrics import mean_dice

    return float(np.mean([mean_dice(a, b) for a, b in itertools.combinations(label_maps, 2)]))


def carry_labels(template, label_paths, transform_lists) -> list[np.ndarray]:
    import ants

    return [
        ants.apply_transforms(
            template, ants.image_read(str(p)), tx, interpolator="genericLabel"
        ).numpy()
        for p, tx in zip(label_paths, transform_lists, strict=True)
    ]


def folding_pct(template, warps) -> float:
    """Mean over subjects of the % of template-foreground voxels with Jacobian determinant
    <= 0 (:func:`atlas.registration.jacobian_determinant_sitk`)."""
    from atlas.preprocess import foreground_mask
    from atlas.registration import jacobian_determinant_sitk

    fg = foreground_mask(template).numpy() > 0
    return float(np.mean([100.0 * (jacobian_determinant_sitk(w).T[fg] <= 0).mean() for w in warps]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=10, help="first N IXI subjects")
    ap.add_argument("--resolution", type=float, default=2.0, help="mm")
    ap.add_argument("--affine-iterations", type=int, default=2)
    ap.add_argument("--syn-iterations", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_template_ixi"))
    ap.add_argument("--backend", default="greedy", help="our engine: ants | greedy | fireants")
    ap.add_argument("--no-ants", action="store_true", help="skip ants.build_template")
    args = ap.parse_args()

    import ants

    parts = pd.read_csv(DATA / "ixi" / "participants.tsv", sep="\t")
    subjects = sorted(parts.participant_id.str.removeprefix("sub-"))[: args.subjects]
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    colin = DATA / "templates" / "tpl-Colin27"
    cfg.update(
        bids_dir=str(DATA / "ixi"),
        participant_label=subjects,
        output_dir=str(args.out / "out"),
        work_dir=str(args.out / "work"),
        resolution=args.resolution,
        skull_strip_template={
            "head": str(colin / "tpl-Colin27_res-1_T1w.nii.gz"),
            "mask": str(colin / "tpl-Colin27_res-1_desc-brain_mask.nii.gz"),
        },
    )
    cfg["template"].update(
        name="bench",
        backend=args.backend,
        affine_iterations=args.affine_iterations,
        syn_iterations=args.syn_iterations,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    cfg_path = args.out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out, work = args.out / "out", args.out / "work"
    ref = "MNI152NLin2009aSym"
    anat = {s: out / f"sub-{s}" / "anat" / f"sub-{s}" for s in subjects}
    normalised = [Path(f"{anat[s]}_space-{ref}_desc-preproc_T1w.nii.gz") for s in subjects]

    # shared, untimed: preprocessing and affine normalisation
    snakemake(cfg_path, [str(p) for p in normalised])

    # timed: the template and every subject's transforms to it (what ants.build_template
    # returns), then the rest of a full run (per-image QC figures, methods, provenance)
    tpl_dir = out / "tpl-bench"
    template_targets = [tpl_dir / "template_description.json"] + [
        Path(f"{anat[s]}_space-bench_desc-preproc_T1w.nii.gz") for s in subjects
    ]
    c0, t0 = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    peak_ours = snakemake(cfg_path, [str(p) for p in template_targets])
    t_ours = time.perf_counter() - t0
    cpu_ours = cpu_seconds(resource.RUSAGE_CHILDREN) - c0
    snakemake(cfg_path)
    t_full = time.perf_counter() - t0
    n_iterations = args.affine_iterations + args.syn_iterations
    result = {
        "backend": args.backend,
        "subjects": len(subjects),
        "resolution_mm": args.resolution,
        "syn_iterations": args.syn_iterations,
        "ours_affine_iterations": args.affine_iterations,
        "wall_s_ours": round(t_ours, 1),
        "cpu_s_ours": round(cpu_ours, 1),
        "wall_s_ours_full_run": round(t_full, 1),
        "s_per_subject_per_iteration_ours": round(t_ours / len(subjects) / n_iterations, 2),
        "peak_rss_mb_ours": round(peak_ours),
    }

    labels = [
        DATA
        / "ixi"
        / "derivatives"
        / "dlmuse"
        / f"sub-{s}"
        / "anat"
        / f"sub-{s}_desc-dlmuse_dseg.nii.gz"
        for s in subjects
    ]
    tpl = ants.image_read(str(out / "tpl-bench" / f"tpl-bench_res-{args.resolution:g}_T1w.nii.gz"))
    last_affine = args.affine_iterations - 1
    affine_dir = work / "template" / f"iter-{last_affine}"
    affine_tpl = ants.image_read(str(affine_dir / "template_T1w.nii.gz"))
    affines = [[str(affine_dir / f"sub-{s}_affine.mat")] for s in subjects]
    final = [
        [
            f"{anat[s]}_from-T1w_to-bench_mode-image_desc-warp_xfm.nii.gz",
            f"{anat[s]}_from-T1w_to-bench_mode-image_desc-affine_xfm.mat",
        ]
        for s in subjects
    ]
    result |= {
        "dice_ours_affine_stage": round(
            mean_pairwise_dice(carry_labels(affine_tpl, labels, affines)), 4
        ),
        "dice_ours_syn_stage": round(mean_pairwise_dice(carry_labels(tpl, labels, final)), 4),
        "nonpositive_jacobian_pct_ours": round(folding_pct(tpl, [f[0] for f in final]), 4),
    }
    if not args.no_ants:
        to_ref = [f"{anat[s]}_from-T1w_to-{ref}_mode-image_xfm.mat" for s in subjects]
        result |= run_ants(args, cfg, normalised, labels, to_ref)
        result["ratio_ours_over_ants"] = round(t_ours / result["wall_s_ants_build_template"], 3)
        result["ratio_full_run_over_ants"] = round(t_full / result["wall_s_ants_build_template"], 3)
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    (args.out / "result.json").write_text(json.dumps(result, indent=2))


def run_ants(args, cfg: dict, normalised, labels, to_ref) -> dict:
    """``ants.build_template`` on the same normalised images with the same SyN settings
    (2 ITK threads, this process): wall and CPU seconds, peak RSS of this process, and
    the same Dice and folding measures as ours (labels carried through the subject's
    normalisation affine ``to_ref``, ANTs' affine and warp)."""
    import ants

    syn = cfg["template"]["syn"]
    images = [ants.image_read(str(p)) for p in normalised]
    ants_dir = args.out / "ants"
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(os.cpu_count())
    c0, t0 = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    template = ants.build_template(
        image_list=images,
        iterations=args.syn_iterations,
        gradient_step=cfg["template"]["gradient_step"],
        output_dir=str(ants_dir),
        type_of_transform="SyN",
        syn_metric=syn["metric"],
        syn_sampling=syn["metric_param"],
        reg_iterations=tuple(syn["iterations"]),
        grad_step=syn["syn_gradient_step"],
        flow_sigma=syn["flow_sigma"],
        total_sigma=syn["total_sigma"],
    )
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(resource.RUSAGE_SELF) - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = [ants_dir / f"img{k:04d}" for k in range(len(images))]
    transforms = [
        [str(o / "out1Warp.nii.gz"), str(o / "out0GenericAffine.mat"), r]
        for o, r in zip(out, to_ref, strict=True)
    ]
    return {
        "wall_s_ants_build_template": round(wall, 1),
        "cpu_s_ants_build_template": round(cpu, 1),
        "s_per_subject_per_iteration_ants": round(wall / len(images) / args.syn_iterations, 2),
        "peak_rss_mb_ants": round(peak),
        "dice_ants_build_template": round(
            mean_pairwise_dice(carry_labels(template, labels, transforms)), 4
        ),
        "nonpositive_jacobian_pct_ants": round(
            folding_pct(template, [str(o / "out1Warp.nii.gz") for o in out]), 4
        ),
    }


if __name__ == "__main__":
    main()
