"""Benchmark: learned age-conditional atlas on the OASIS 2D slices, vs iterative ANTs templates.

Usage (from the project root)::

    python benchmarks/learned_oasis2d.py [--steps 2000] [--threads 2] [--out DIR]
                                         [--no-baseline]

Protocol
--------
* Subjects are split 80/20 (seed 0) into training and test sets. The conditional
  template (Dalca et al. 2019) is trained on the training set on CPU with the default
  config of :mod:`atlas.learn.training` (local NCC, diffusion regulariser); a rerun with
  the same ``--out`` resumes or reuses the trained model.
* Atlas label map at age ``a``: the seg4 (and seg24) labels of a fixed random set of
  ``--k`` training subjects (the same set at every age and for both methods) are carried
  into the atlas at ``a`` (one forward pass each; labels pulled back with ``exp(-v)``,
  nearest neighbour) and majority-voted. Using the same subjects at every age makes
  differences between the label maps at two ages a property of the atlases alone.
* Dice: each test subject is registered to the atlas of its age (rounded to 5 y), its
  seg4 labels carried into atlas space and compared with the atlas label map
  (mean over labels 1-4, :func:`atlas.metrics.mean_dice`).
* Folding: % voxels with a non-positive Jacobian determinant of the subject -> atlas
  map (:func:`atlas.metrics.jacobian_determinant` / ``jacobian_stats``), all voxels
  (ANTs: Jacobian of the SyN warp field).
* Time: wall time of one registration (forward pass) per test subject.
* Ventricles: area (mm^2) of the seg4 CSF label (4) and of the seg24 lateral + inferior
  lateral ventricles (3, 4, 16, 17) in the atlas label maps at 20 y and 90 y.
* Baseline: ``ants.build_template`` (SyN, CC radius 4, 3 iterations) on the
  ``--baseline-n`` training subjects closest to 20 y and to 90 y; its label maps and
  Dice use the same protocol (same voters) with ANTs SyN registrations, on test subjects
  within 10 y of 20 or 90 y (the learned atlas is scored on the same subset too).

Measured on the 2-core development VM (shared with other jobs, 1 torch/ITK thread,
0.4-0.6 s per training step), ``--steps 1400 --threads 1`` (trained as two resumed
calls of 700 steps, ~13 min of training; the loss plateaus after ~1000 steps, hence the
default of 2000 steps, <= 20 min):

====================================  ==============  ===============  ================
measure                               learned (all)   learned (bins)   ANTs SyN (bins)
====================================  ==============  ===============  ================
test subjects                         83              40               40
mean Dice seg4 subject -> atlas       0.843           0.837            0.868
% voxels with Jacobian det <= 0       0.0000          0.0000           0.0000
registration time per subject (s)     0.015           0.015            1.405
====================================  ==============  ===============  ================

With ``--dice-weight 1.0`` (Dice of the training subjects' seg4 labels added to the loss;
test labels never used), ``--steps 5000 --threads 2`` in one call (17.1 min of training,
0.20 s per step): mean Dice 0.872 (all test) / 0.870 on the bins vs 0.868 for ANTs; 0 %
folding; 0.013 s vs 0.68 s per subject. The same recipe trained in three resumed calls gave
0.869 vs 0.867 (the ANTs baseline varies by 0.001 between runs); on the bins 0.863 after
2000 steps and 0.867 after 3000 (the loss plateaus from ~3000 steps).

Atlas label maps at 20 y vs 90 y: seg4 CSF 312 vs 542 mm^2, seg24 lateral ventricles
262 vs 469 mm^2 (learned); 240 vs 690 and 202 vs 594 mm^2 (ANTs templates built from
the 10 subjects nearest each age, ~32 s each). After 700 steps: Dice 0.838 (all test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF_AGES = np.arange(20, 96, 5)  # ages (y) of the atlas label maps
VENTRICLES_SEG24 = [3, 4, 16, 17]
CSF_SEG4 = 4


def majority_vote(label_maps: np.ndarray) -> np.ndarray:
    """Voxel-wise most frequent label of ``(n, *S)`` int maps (ties -> smallest label)."""
    from atlas.segmentation import majority_vote as fuse

    return fuse(label_maps)[0]


def nearest_in_age(ages: np.ndarray, age: float, k: int) -> np.ndarray:
    return np.argsort(np.abs(ages - age), kind="stable")[:k]


def label_maps_learned(atlas, cohort, seg24, voters):
    """seg4 and seg24 label maps of the learned atlas at each of REF_AGES."""
    maps = {}
    for age in REF_AGES:
        carried = [
            atlas.register(
                cohort.images[i], age, labels=np.stack([cohort.labels[i], seg24[i]])
            ).warped_labels
            for i in voters
        ]
        carried = np.stack(carried)
        maps[int(age)] = (majority_vote(carried[:, 0]), majority_vote(carried[:, 1]))
    return maps


def score_learned(atlas, cohort, test_idx, maps):
    """Per-test-subject Dice, folding, time and NCC with the atlas of the subject's age."""
    from atlas import metrics

    rows = []
    for i in test_idx:
        ref = int(REF_AGES[np.abs(REF_AGES - cohort.ages[i]).argmin()])
        reg = atlas.register(cohort.images[i], ref, labels=cohort.labels[i])
        det = metrics.jacobian_determinant(reg.inverse_displacement * atlas.spacing, atlas.spacing)
        rows.append(
            {
                "age": float(cohort.ages[i]),
                "dice": metrics.mean_dice(reg.warped_labels, maps[ref][0], labels=[1, 2, 3, 4]),
                "pct_nonpositive_jac": metrics.jacobian_stats(det)["pct_nonpositive"],
                "seconds": reg.seconds,
                "ncc_before": metrics.ncc(reg.atlas, cohort.images[i]),
                "ncc_after": metrics.ncc(reg.atlas, reg.warped),
            }
        )
    return rows


@contextlib.contextmanager
def native_stdout_silenced():
    """Silence C++-level stdout (ants.build_template prints every averaged affine)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def ants_baseline(cohort, seg24, train_idx, test_idx, voters, n_template):
    """Iterative SyN templates at 20 y and 90 y (ants.build_template) and their scores."""
    import ants

    from atlas import metrics

    syn = {"type_of_transform": "SyN", "syn_metric": "CC", "syn_sampling": 4}

    def to_ants(array):
        return ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def register(template, i):
        with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
            tic = time.perf_counter()
            reg = ants.registration(
                template, to_ants(cohort.images[i]), outprefix=f"{tmp}/r", **syn
            )
            seconds = time.perf_counter() - tic
            fwd = reg["fwdtransforms"]
            carried = [
                ants.apply_transforms(
                    template, to_ants(lab[i]), fwd, interpolator="genericLabel"
                ).numpy()
                for lab in (cohort.labels, seg24)
            ]
            jac = ants.create_jacobian_determinant_image(template, fwd[0]).numpy()
        return carried, seconds, jac

    out = {"templates": {}, "maps": {}, "rows": []}
    for age in (20, 90):
        members = train_idx[nearest_in_age(cohort.ages[train_idx], age, n_template)]
        tic = time.perf_counter()
        with native_stdout_silenced():
            template = ants.build_template(
                image_list=[to_ants(cohort.images[i]) for i in members], iterations=3, **syn
            )
        out["templates"][age] = {"seconds": time.perf_counter() - tic}
        carried = [register(template, i)[0] for i in voters]
        out["maps"][age] = tuple(majority_vote(np.stack([c[j] for c in carried])) for j in (0, 1))
        bin_test = test_idx[np.abs(cohort.ages[test_idx] - age) <= 10]
        for i in bin_test:
            (lab4, _), seconds, jac = register(template, i)
            out["rows"].append(
                {
                    "index": int(i),
                    "dice": metrics.mean_dice(lab4, out["maps"][age][0], labels=[1, 2, 3, 4]),
                    "pct_nonpositive_jac": metrics.jacobian_stats(jac)["pct_nonpositive"],
                    "seconds": seconds,
                }
            )
    return out


def ventricle_areas(maps: dict, pixel_area: float) -> dict:
    """CSF (seg4) and lateral-ventricle (seg24) areas in mm^2 at 20 and 90 y."""
    return {
        age: {
            "csf_seg4_mm2": float((maps[age][0] == CSF_SEG4).sum() * pixel_area),
            "ventricles_seg24_mm2": float(
                np.isin(maps[age][1], VENTRICLES_SEG24).sum() * pixel_area
            ),
        }
        for age in (20, 90)
    }


def summarise(rows: list) -> dict:
    keys = ("dice", "pct_nonpositive_jac", "seconds")
    return {key: float(np.mean([r[key] for r in rows])) for key in keys} | {"n": len(rows)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "oasis2d"))
    parser.add_argument("--out", default="/tmp/learned_oasis2d")
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--reg-weight", type=float, default=None, help="train.reg_weight (default: config)"
    )
    parser.add_argument(
        "--dice-weight",
        type=float,
        default=0.0,
        help="train.dice_weight: > 0 also fits the training subjects' seg4 labels (the test "
        "subjects' labels are never used for training)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and ITK threads")
    parser.add_argument("--k", type=int, default=40, help="voters per atlas label map")
    parser.add_argument("--baseline-n", type=int, default=10, help="subjects per ANTs template")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from atlas.learn import LearnedAtlas, export_templateflow, load_bids_cohort, montage, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    cohort = load_bids_cohort(args.data)
    seg24 = load_bids_cohort(args.data, label_suffix="desc-seg24_dseg").labels
    order = np.random.default_rng(0).permutation(len(cohort.ages))
    n_train = int(round(0.8 * len(order)))
    train_idx, test_idx = np.sort(order[:n_train]), np.sort(order[n_train:])
    training = type(cohort)(
        images=cohort.images[train_idx],
        ages=cohort.ages[train_idx],
        affine=cohort.affine,
        disk_shape=cohort.disk_shape,
        labels=cohort.labels[train_idx] if args.dice_weight > 0 else None,
    )
    options = {"steps": args.steps, "batch_size": args.batch_size, "dice_weight": args.dice_weight}
    if args.reg_weight is not None:
        options["reg_weight"] = args.reg_weight

    tic = time.perf_counter()
    result = train(options, training, out / "model")
    train_seconds = time.perf_counter() - tic
    atlas = LearnedAtlas(result["model"])
    montage(atlas, [20, 35, 50, 65, 80, 90], out / "montage.png")
    export_templateflow(result["model"], [20, 50, 90], out, "OASIS2Dlearned")

    voters = np.sort(np.random.default_rng(1).choice(train_idx, args.k, replace=False))
    maps = label_maps_learned(atlas, cohort, seg24, voters)
    rows = score_learned(atlas, cohort, test_idx, maps)
    pixel_area = float(np.prod(atlas.spacing))
    report = {
        "command": " ".join(sys.argv),
        "train_seconds_this_call": train_seconds,
        "final_loss": result["final_loss"],
        "learned_all_test": summarise(rows),
        "ncc_before_after": [
            float(np.mean([r["ncc_before"] for r in rows])),
            float(np.mean([r["ncc_after"] for r in rows])),
        ],
        "learned_ventricles": ventricle_areas(maps, pixel_area),
    }
    if not args.no_baseline:
        base = ants_baseline(cohort, seg24, train_idx, test_idx, voters, args.baseline_n)
        subset = {r["index"] for r in base["rows"]}
        report["learned_bins"] = summarise(
            [r for r, i in zip(rows, test_idx, strict=True) if int(i) in subset]
        )
        report["ants_bins"] = summarise(base["rows"])
        report["ants_template_seconds"] = {a: t["seconds"] for a, t in base["templates"].items()}
        report["ants_ventricles"] = ventricle_areas(base["maps"], pixel_area)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, result)
    return report


def print_report(report: dict, result: dict) -> None:
    learned = report["learned_all_test"]
    print(
        f"\nlearned conditional atlas: final loss {report['final_loss']:.4f}, "
        f"loss curve {result['loss_curve']}"
    )
    print(
        f"NCC atlas vs subject, affine only -> after warp: "
        f"{report['ncc_before_after'][0]:.3f} -> {report['ncc_before_after'][1]:.3f}"
    )
    header = f"{'measure':42s} {'learned (all test)':>20s}"
    cols = [learned]
    if "ants_bins" in report:
        header += f" {'learned (20/90 bins)':>21s} {'ANTs SyN (20/90 bins)':>22s}"
        cols += [report["learned_bins"], report["ants_bins"]]
    print(header)
    for key, label, fmt in (
        ("n", "test subjects", "{:.0f}"),
        ("dice", "mean Dice seg4 subject->atlas", "{:.3f}"),
        ("pct_nonpositive_jac", "% voxels with Jacobian det <= 0", "{:.4f}"),
        ("seconds", "registration time per subject (s)", "{:.3f}"),
    ):
        print(f"{label:42s}" + "".join(f" {fmt.format(c[key]):>20s}" for c in cols))
    for name in ("learned_ventricles", "ants_ventricles"):
        if name in report:
            v = report[name]
            print(
                f"{name}: seg4 CSF {v[20]['csf_seg4_mm2']:.0f} mm2 (20 y) vs "
                f"{v[90]['csf_seg4_mm2']:.0f} mm2 (90 y); seg24 lateral ventricles "
                f"{v[20]['ventricles_seg24_mm2']:.0f} vs {v[90]['ventricles_seg24_mm2']:.0f} mm2"
            )
    if "ants_template_seconds" in report:
        print(f"ANTs build_template time per template (s): {report['ants_template_seconds']}")


if __name__ == "__main__":
    main()
