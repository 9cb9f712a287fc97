"""Benchmark: the learned age-conditional atlas in 3D on IXI, against the iterative template.

Usage (from the project root)::

    python benchmarks/learned_ixi3d.py [--subjects 10] [--resolution 2] [--steps 1500]
                                       [--batch-size 2] [--tissue-weight W] [--adversarial]
                                       [--out DIR]

``--tissue-weight`` > 0 and ``--adversarial`` pick the variant of issue 13 (GAN + tissue: both;
the tissue maps are Atropos CSF/GM/WM of each image, rule ``learned_tissue``); run each
variant into its own ``--out``.

Runs the real Snakefile on the first ``--subjects`` IXI subjects, or with ``--age-spread``
on that many at evenly spaced age ranks (skull stripped with Colin27, ``--resolution`` mm,
ages from ``participants.tsv``) with ``learned.enabled``:
preprocessing, affine normalisation to MNI152, the iterative SyGN template, training of the
conditional template on CPU, one-pass registration of every subject to the atlas of its
age, and the workflow's evaluation table (``group/desc-learned_evaluation.tsv``): mean
pairwise Dice of the DLMUSE labels (``derivatives/dlmuse``, silver standard) carried into
template space, % voxels with non-positive Jacobian determinant, centrality, sharpness and
seconds per registration (one forward pass on CPU vs ANTs affine + SyN to the iterative
template, same normalised inputs, 1 ITK / torch thread per job). Prints that table, the
Dice difference, the registration-time ratio and the training wall time (the table's
``sharpness`` is in the subjects' intensity units, ``sharpness_raw`` in the template's); writes
them to
``--out/benchmark.json``. Rerunning with the same ``--out`` reuses what is finished
(training resumes from its checkpoint when ``--steps`` is raised).

Targets (issue 4): one-pass registration of a 2 mm subject <= 2 s on CPU; mean Dice within
0.03 of SyN. Not a test.

Measured on the 2-core development VM with the defaults (10 subjects, 23-51 y, 2 mm grid
82 x 99 x 82, 1500 steps of batch 2): template 12.3 min, training 36 min (1.2-1.4 s per step
on 2 threads), evaluation 2.7 min.

=========  =========  ============  ===========  ====  ===========  ======  ===========
method     sharpness  centrality    % det <= 0   NCC   NCC before   Dice    s / subject
=========  =========  ============  ===========  ====  ===========  ======  ===========
learned    0.0456     0.33 mm       0.0          0.94  0.81         0.579   0.38
iterative  0.0434     0.45 mm       0.0          0.98  0.54         0.577   20.5
=========  =========  ============  ===========  ====  ===========  ======  ===========

(Dice: mean pairwise Dice of the DLMUSE labels in template space; NCC before: subject vs
the template before the deformable step, i.e. the learned atlas of the subject's age vs the
iterative template after affine normalisation only.) With ``--age-spread`` (23-74 y,
training 31 min): Dice 0.565 learned vs 0.564 SyN, 0.37 s vs 20.4 s per subject, 0 %
folding, sharpness 0.0488 vs 0.0418, centrality 0.26 vs 0.45 mm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def snakemake(cfg_path: Path, targets=(), cores: int = 2, extra=()) -> float:
    """Run the Snakefile; returns the wall time (s). Exits with the log tail on failure."""
    cmd = [sys.executable, "-m", "snakemake", *map(str, targets), "--cores", str(cores)]
    cmd += list(extra)
    cmd += ["--nolock", "--configfile", str(cfg_path)]
    env = os.environ | {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    log = cfg_path.parent / "snakemake.log"
    start = time.perf_counter()
    with log.open("a") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        sys.exit(f"snakemake failed (log {log}):\n{log.read_text()[-4000:]}")
    return time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=10, help="first N IXI subjects")
    ap.add_argument(
        "--age-spread",
        action="store_true",
        help="instead of the first N, take N subjects at evenly spaced age ranks",
    )
    ap.add_argument("--resolution", type=float, default=2.0, help="mm")
    ap.add_argument("--steps", type=int, default=1500, help="learned.train.steps")
    ap.add_argument("--batch-size", type=int, default=2, help="learned.train.batch_size")
    ap.add_argument("--affine-iterations", type=int, default=2)
    ap.add_argument("--syn-iterations", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument(
        "--tissue-weight",
        type=float,
        default=0.0,
        help="learned.tissue_weight (> 0: tissue maps from Atropos of each image)",
    )
    ap.add_argument(
        "--adversarial",
        action="store_true",
        help="learned.adversarial (Atlas-GAN; discriminator warm-up over a third of the steps)",
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_learned_ixi3d"))
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    parts = pd.read_csv(DATA / "ixi" / "participants.tsv", sep="\t")
    ids = parts.sort_values("participant_id").participant_id.str.removeprefix("sub-")
    if args.age_spread:
        by_age = parts.sort_values(["age", "participant_id"]).participant_id
        ranks = np.linspace(0, len(by_age) - 1, args.subjects).round().astype(int)
        ids = by_age.iloc[ranks].str.removeprefix("sub-")
    subjects = sorted(ids)[: args.subjects]
    colin = DATA / "templates" / "tpl-Colin27"
    ages = parts.set_index("participant_id").loc[[f"sub-{s}" for s in subjects], "age"]
    sample_ages = sorted({int(round(a, -1)) for a in ages})
    cfg = {
        "bids_dir": str(DATA / "ixi"),
        "participant_label": subjects,
        "output_dir": str(args.out / "out"),
        "work_dir": str(args.out / "work"),
        "resolution": args.resolution,
        "skull_strip_template": {
            "head": str(colin / "tpl-Colin27_res-1_T1w.nii.gz"),
            "mask": str(colin / "tpl-Colin27_res-1_desc-brain_mask.nii.gz"),
        },
        "template": {
            "name": "bench",
            "affine_iterations": args.affine_iterations,
            "syn_iterations": args.syn_iterations,
        },
        "learned": {
            "enabled": True,
            "name": "bench",
            "ages": sample_ages,
            "evaluation_labels": {"dir": "derivatives/dlmuse", "desc": "dlmuse"},
            "train": {"steps": args.steps, "batch_size": args.batch_size},
            "tissue_weight": args.tissue_weight,
            "adversarial": args.adversarial,
            "discriminator": {"warmup_steps": args.steps // 3},
        },
    }
    cfg_path = args.out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = args.out / "out"
    print(
        f"{len(subjects)} IXI subjects (ages {ages.min():.0f}-{ages.max():.0f} y) at "
        f"{args.resolution:g} mm, {args.steps} training steps; output under {args.out}",
        flush=True,
    )

    res = f"{args.resolution:g}".replace(".", "p")
    template = out / "tpl-bench" / f"tpl-bench_res-{res}_T1w.nii.gz"
    walls = {"template": snakemake(cfg_path, [template], args.cores)}
    # training runs alone: give it every core (the registrations timed later use 1 thread)
    walls["learned_train"] = snakemake(
        cfg_path,
        [out / "learned" / "model.pt"],
        args.cores,
        ["--set-threads", f"learned_train={args.cores}"],
    )
    walls["evaluation"] = snakemake(
        cfg_path, [out / "group" / "desc-learned_evaluation.tsv"], args.cores
    )
    table = pd.read_csv(out / "group" / "desc-learned_evaluation.tsv", sep="\t")
    table = table.set_index("method")
    learned, iterative = table.loc["learned"], table.loc["iterative"]
    summary = {
        "dice_learned_minus_iterative": learned.get("dice") - iterative.get("dice"),
        "registration_time_ratio": learned.seconds_per_subject / iterative.seconds_per_subject,
    }
    pd.set_option("display.width", 200)
    print(table.round(4).to_string())
    print(json.dumps(summary | {"wall_s": walls}, indent=2))
    (args.out / "benchmark.json").write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "subjects": subjects,
                "table": json.loads(table.reset_index().to_json(orient="records")),
                "summary": summary,
                "wall_s": walls,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
