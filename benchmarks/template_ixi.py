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
``ants.build_template`` runs in the same invocation, so the ratio compares like with like.

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


def snakemake(config_path: Path, targets=(), cores: int = 2) -> None:
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores)]
    cmd += ["--configfile", str(config_path), "--quiet", "progress", "--nolock"]
    subprocess.run(cmd, cwd=ROOT, check=True)


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
    <= 0 (:func:`atlas.registration.jacobian_determinant_image`)."""
    from atlas.preprocess import foreground_mask
    from atlas.registration import jacobian_determinant_image

    fg = foreground_mask(template).numpy() > 0
    return float(
        np.mean(
            [
                100.0 * (jacobian_determinant_image(template, w).numpy()[fg] <= 0).mean()
                for w in warps
            ]
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=10, help="first N IXI subjects")
    ap.add_argument("--resolution", type=float, default=2.0, help="mm")
    ap.add_argument("--affine-iterations", type=int, default=2)
    ap.add_argument("--syn-iterations", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_template_ixi"))
    ap.add_argument("--backend", default="greedy", help="our engine: ants | greedy")
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
    snakemake(cfg_path, [str(p) for p in template_targets])
    t_ours = time.perf_counter() - t0
    cpu_ours = cpu_seconds(resource.RUSAGE_CHILDREN) - c0
    snakemake(cfg_path)
    t_full = time.perf_counter() - t0

    syn = cfg["template"]["syn"]
    images = [ants.image_read(str(p)) for p in normalised]
    ants_dir = args.out / "ants"
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(os.cpu_count())
    c0, t0 = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    ants_template = ants.build_template(
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
    t_ants = time.perf_counter() - t0
    cpu_ants = cpu_seconds(resource.RUSAGE_SELF) - c0

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
    affine_tpl = ants.image_read(
        str(work / "template" / f"iter-{last_affine}" / "template_T1w.nii.gz")
    )
    dice_affine = mean_pairwise_dice(
        carry_labels(
            affine_tpl,
            labels,
            [
                [str(work / "template" / f"iter-{last_affine}" / f"sub-{s}_affine.mat")]
                for s in subjects
            ],
        )
    )
    dice_syn = mean_pairwise_dice(
        carry_labels(
            tpl,
            labels,
            [
                [
                    f"{anat[s]}_from-T1w_to-bench_mode-image_desc-warp_xfm.nii.gz",
                    f"{anat[s]}_from-T1w_to-bench_mode-image_desc-affine_xfm.mat",
                ]
                for s in subjects
            ],
        )
    )
    dice_ants = mean_pairwise_dice(
        carry_labels(
            ants_template,
            labels,
            [
                [
                    str(ants_dir / f"img{k:04d}" / "out1Warp.nii.gz"),
                    str(ants_dir / f"img{k:04d}" / "out0GenericAffine.mat"),
                    f"{anat[s]}_from-T1w_to-{ref}_mode-image_xfm.mat",
                ]
                for k, s in enumerate(subjects)
            ],
        )
    )
    ours_warps = [f"{anat[s]}_from-T1w_to-bench_mode-image_desc-warp_xfm.nii.gz" for s in subjects]
    ants_warps = [str(ants_dir / f"img{k:04d}" / "out1Warp.nii.gz") for k in range(len(subjects))]
    result = {
        "backend": args.backend,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "subjects": len(subjects),
        "resolution_mm": args.resolution,
        "syn_iterations": args.syn_iterations,
        "ours_affine_iterations": args.affine_iterations,
        "wall_s_ours": round(t_ours, 1),
        "wall_s_ants_build_template": round(t_ants, 1),
        "ratio_ours_over_ants": round(t_ours / t_ants, 3),
        "cpu_s_ours": round(cpu_ours, 1),
        "cpu_s_ants_build_template": round(cpu_ants, 1),
        "wall_s_ours_full_run": round(t_full, 1),
        "ratio_full_run_over_ants": round(t_full / t_ants, 3),
        "dice_ours_affine_stage": round(dice_affine, 4),
        "dice_ours_syn_stage": round(dice_syn, 4),
        "dice_ants_build_template": round(dice_ants, 4),
        "nonpositive_jacobian_pct_ours": round(folding_pct(tpl, ours_warps), 4),
        "nonpositive_jacobian_pct_ants": round(folding_pct(ants_template, ants_warps), 4),
    }
    print(json.dumps(result, indent=2))
    (args.out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
