"""Benchmark: multi-atlas segmentation on MICCAI 2012 (OASIS, Neuromorphometrics labels).

Uses the challenge split of ``participants.tsv`` (``challenge_split``: ``train`` subjects are
the atlases, ``test`` subjects the targets, session 1), resampled to ``--resolution`` mm, and
compares

* our pipeline, direct route (:func:`atlas.segmentation.register_atlas` atlas->target, labels
  propagated with ``genericLabel``, QC gate) fused by majority voting and by joint label
  fusion (:func:`atlas.segmentation.segment_target`), and
* the plain ANTsPy recipe: pairwise ``ants.registration(type_of_transform="SyN")`` with its
  defaults, ``ants.apply_transforms``, then ``ants.joint_label_fusion`` with its defaults and
  its own segmentation output.

It prints per-target and mean Dice (over the labels present in either map, at the benchmark
resolution) and the wall time of each route, with the ratio ours / plain. Not a test; run from
the project root, e.g.::

    python -m benchmarks.segmentation_miccai2012 --resolution 3 --n-atlases 4 --n-targets 2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "miccai2012"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BIDS dataset root")
    parser.add_argument("--resolution", type=float, default=3.0, help="isotropic voxel size, mm")
    parser.add_argument("--n-atlases", type=int, default=4, help="train subjects used as atlases")
    parser.add_argument("--n-targets", type=int, default=2, help="test subjects to label")
    parser.add_argument("--threads", type=int, default=1, help="ITK threads")
    parser.add_argument("--seed", type=int, default=42, help="ANTS_RANDOM_SEED")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # ITK reads these when it first starts, so set them before importing ants.
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    os.environ["ANTS_RANDOM_SEED"] = str(args.seed)
    import ants
    import numpy as np
    import pandas as pd

    from atlas import segmentation as seg
    from atlas.metrics import mean_dice

    def load(subject: str) -> seg.Atlas:
        anat = f"{subject}/ses-1/anat/{subject}_ses-1"
        t1w = ants.image_read(str(args.data / f"{anat}_T1w.nii.gz"))
        dseg = ants.image_read(
            str(args.data / "derivatives/manual" / f"{anat}_desc-neuromorphometrics_dseg.nii.gz")
        )
        t1w = ants.resample_image(t1w, (args.resolution,) * 3, use_voxels=False, interp_type=0)
        dseg = ants.resample_image_to_target(dseg, t1w, interp_type="genericLabel")
        return seg.Atlas(subject, t1w, dseg)

    def as_labels(image) -> np.ndarray:
        return image.numpy().round().astype(np.int64)

    participants = pd.read_csv(args.data / "participants.tsv", sep="\t")
    split = participants.groupby("challenge_split")["participant_id"].apply(list)
    atlases = [load(s) for s in split["train"][: args.n_atlases]]
    targets = [load(s) for s in split["test"][: args.n_targets]]
    print(
        f"{len(atlases)} atlases -> {len(targets)} targets at {args.resolution} mm, "
        f"{args.threads} thread(s); grid of first target {targets[0].image.shape}"
    )

    rows = []
    for target in targets:
        reference = as_labels(target.dseg)
        mask = target.image.new_image_like((target.image.numpy() != 0).astype(np.float32))

        start = time.perf_counter()
        chains = [seg.register_atlas(target.image, a.image).forward for a in atlases]
        registration_s = time.perf_counter() - start
        for method in ("majority", "jlf"):
            start = time.perf_counter()
            result = seg.segment_target(
                target.image, atlases, method=method, mask=mask, transforms=chains
            )
            rows.append(
                {
                    "target": target.subject,
                    "route": f"ours-{method}",
                    "dice": mean_dice(as_labels(result.dseg), reference),
                    "seconds": registration_s + time.perf_counter() - start,
                }
            )

        start = time.perf_counter()
        warped_images, warped_labels = [], []
        for atlas in atlases:
            reg = ants.registration(target.image, atlas.image, type_of_transform="SyN")
            warped_images.append(reg["warpedmovout"])
            warped_labels.append(
                ants.apply_transforms(
                    target.image, atlas.dseg, reg["fwdtransforms"], interpolator="genericLabel"
                )
            )
        jlf = ants.joint_label_fusion(target.image, mask, warped_images, label_list=warped_labels)
        rows.append(
            {
                "target": target.subject,
                "route": "antspy-jlf",
                "dice": mean_dice(as_labels(jlf["segmentation"]), reference),
                "seconds": time.perf_counter() - start,
            }
        )
        for row in rows[-3:]:
            print(f"  {row['target']} {row['route']:<13} Dice {row['dice']:.3f}", end=" ")
            print(f"{row['seconds']:.1f} s")

    results = pd.DataFrame(rows)
    summary = results.groupby("route", sort=False).agg(
        mean_dice=("dice", "mean"), wall_s=("seconds", "sum")
    )
    summary["time_ratio_vs_antspy"] = summary["wall_s"] / summary.loc["antspy-jlf", "wall_s"]
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
