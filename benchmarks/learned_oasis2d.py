"""Benchmark: learned age-conditional atlas on the OASIS 2D slices, vs iterative ANTs templates.

Usage (from the project root)::

    python benchmarks/learned_oasis2d.py [--steps 2000] [--threads 2] [--out DIR]
                                         [--no-baseline]
    python benchmarks/learned_oasis2d.py --design [--steps N] [--downsample F] [--jobs J] ...

``--design`` (issue 13) trains and evaluates the 2 x 2 design of one model family —
``conditional``, ``conditional+tissue`` (``tissue_weight`` ``--tissue-weight``),
``atlas-gan`` (``adversarial``, weight ``--adversarial-weight``; Dey et al. 2021) and
``gan+tissue`` (both; the defaults 0.3 / 0.3 were chosen with ``--validation``, README) —
each in its own process (same split, seed, steps and batch; the training subjects' seg4 maps
give the tissues GM (cortex), SGM, WM, CSF; test subjects' labels are used only for
scoring), on the grid coarsened ``--downsample`` times. Per held-out subject: Dice per
tissue (WM, cortical GM, CSF) of the atlas tissue map carried to the subject vs its seg4
tissues (the learned tissue maps, argmax, of the tissue variants; else the majority vote of
``--k`` training subjects' tissue maps carried into the atlas, also reported for every
variant as ``vote_mean_dice``), atlas sharpness (mean gradient magnitude inside the mean
training brain mask, in the subjects' intensity units: times the least-squares slope of the
subject carried into the atlas on the atlas, :func:`atlas.learn.evaluation.intensity_slope`,
since the local NCC leaves an atlas's intensity scale free; ``sharpness_raw`` without),
centrality (mean over the mask of the norm of the mean atlas->subject displacement, mm), %
non-positive Jacobian and one-pass registration time; plus training wall and CPU time, peak
memory (max RSS of the variant's process, data loading included) and the atlas CSF area at
20 / 50 / 90 y. The ``iterative`` row is the ANTs baseline below (SyGN templates at 20 and
90 y, ``--baseline-n`` subjects each) on the same grid, scored the same way (voted tissue
map carried back to each subject by the inverse SyN) on the test subjects within 10 y of 20
/ 90 y; a second table scores every variant on that subset. ``--jobs`` runs that many
variants at a time.

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


def montage(atlas, ages, png):
    from atlas.learn import montage as draw

    return draw(atlas, ages, png)


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


def ants_baseline(cohort, seg24, train_idx, test_idx, voters, n_template, tissues=None):
    """Iterative SyN templates at 20 y and 90 y (ants.build_template) and their scores.

    Label maps: ``cohort.labels`` (seg4) and ``seg24``. With ``tissues`` (a dict with the
    ``maps`` ``(N, *S)``, ``names`` and brain ``mask`` on the grid; the ``--design`` row),
    the voted tissue map is carried back to each test subject (inverse SyN, nearest) and
    scored per tissue like the learned atlases, with the template's sharpness (subject
    intensity units, :func:`atlas.learn.evaluation.intensity_slope`), the centrality per
    template and the warp fields' folding.
    """
    import ants

    from atlas import metrics
    from atlas.learn.evaluation import centrality, sharpness, tissue_dice

    syn = {"type_of_transform": "SyN", "syn_metric": "CC", "syn_sampling": 4}
    first = cohort.labels if tissues is None else tissues["maps"]

    def to_ants(array):
        return ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def register(template, i, back=None):
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
                for lab in (first, seg24)
            ]
            jac = ants.create_jacobian_determinant_image(template, fwd[0]).numpy()
            extra = {}
            if back is not None:  # template map -> subject, subject -> template image, warp
                subject = to_ants(cohort.images[i])
                extra["to_subject"] = ants.apply_transforms(
                    subject,
                    to_ants(back),
                    reg["invtransforms"],
                    interpolator="nearestNeighbor",
                    whichtoinvert=[True, False],
                ).numpy()
                extra["warped"] = reg["warpedmovout"].numpy()
                extra["field_mm"] = ants.image_read(fwd[0]).numpy() * cohort.spacing
        return carried, seconds, jac, extra

    out = {"templates": {}, "maps": {}, "rows": [], "centrality": {}}
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
        back = None if tissues is None else out["maps"][age][0]
        fields = []
        for i in bin_test:
            (lab4, _), seconds, jac, extra = register(template, i, back)
            row = {
                "index": int(i),
                "dice": metrics.mean_dice(lab4, out["maps"][age][0], labels=[1, 2, 3, 4]),
                "pct_nonpositive_jac": metrics.jacobian_stats(jac)["pct_nonpositive"],
                "seconds": seconds,
            }
            if tissues is not None:
                own, names = extra["to_subject"].astype(int), tissues["names"]
                row |= tissue_dice(own, tissues["maps"][i], names, TISSUES)
                row |= {"age": float(cohort.ages[i])} | sharpness(
                    template.numpy(), extra["warped"], cohort.spacing, tissues["mask"]
                )
                fields.append(extra["field_mm"])
            out["rows"].append(row)
        if fields:
            out["centrality"][age] = centrality(iter(fields), tissues["mask"])
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


VARIANTS = {
    "conditional": (False, False),
    "conditional+tissue": (True, False),
    "atlas-gan": (False, True),
    "gan+tissue": (True, True),
}
"""The 2 x 2 design of issue 13: one model family, two switches (tissue maps, adversarial)."""
TISSUES = ("WM", "GM", "CSF")
ITERATIVE = "iterative"
"""The iterative (SyGN) template row of ``--design``: :func:`ants_baseline` templates at 20
and 90 y scored on the test subjects within 10 y of those ages."""


def split(n: int, validation: bool = False):
    """The 80/20 split by subject (seed 0) shared by every mode of this benchmark; with
    ``validation`` the training subjects split again 80/20 (seed 1) into training and
    validation subjects, so that settings are chosen without the test subjects."""
    order = np.random.default_rng(0).permutation(n)
    n_train = int(round(0.8 * n))
    train_idx, test_idx = np.sort(order[:n_train]), np.sort(order[n_train:])
    if not validation:
        return train_idx, test_idx
    order = np.random.default_rng(1).permutation(train_idx)
    n_fit = int(round(0.8 * n_train))
    return np.sort(order[:n_fit]), np.sort(order[n_fit:])


def variant_config(name: str, args) -> dict:
    """Train config keys of design variant ``name``: its switches, with ``--tissue-weight``
    and ``--adversarial-weight`` for the variants that have a tissue or adversarial term."""
    tissue, adversarial = VARIANTS[name]
    config = {"tissue_weight": args.tissue_weight if tissue else 0.0, "adversarial": adversarial}
    return config | ({"adversarial_weight": args.adversarial_weight} if adversarial else {})


def downsample(cohort, seg24, factor: int):
    """Cohort (images block-averaged, tissue maps and seg24 by block majority) and seg24
    on a grid ``factor`` times coarser (voxel size x factor, same field of view)."""
    if factor == 1:
        return cohort, seg24
    from atlas.learn import Cohort

    n, x, y = cohort.images.shape
    nx, ny = x // factor, y // factor

    def blocks(a):
        return a[:, : nx * factor, : ny * factor].reshape(n, nx, factor, ny, factor)

    def majority(maps):
        counts = [(blocks(maps) == k).sum((2, 4)) for k in range(int(maps.max()) + 1)]
        return np.argmax(np.stack(counts), axis=0).astype(np.int16)

    affine = cohort.affine.copy()
    affine[:3, :2] *= factor
    affine[:3, 3] += cohort.affine[:3, :2] @ np.full(2, (factor - 1) / 2)
    small = Cohort(
        images=blocks(cohort.images).mean((2, 4)),
        ages=cohort.ages,
        affine=affine,
        disk_shape=(nx, ny, 1),
        tissues=majority(cohort.tissues),
        tissue_names=cohort.tissue_names,
        subjects=cohort.subjects,
    )
    return small, majority(seg24)


def atlas_tissue_maps(atlas, cohort, seg24, voters, ages):
    """Per age (y): (tissue map, seg24 map) of the atlas by majority vote of the
    ``voters``' maps carried into it (the protocol of the single-model benchmark), and the
    learned tissue map (argmax) when the atlas has one, else None."""
    maps = {}
    for age in ages:
        carried = np.stack(
            [
                atlas.register(
                    cohort.images[i], age, labels=np.stack([cohort.tissues[i], seg24[i]])
                ).warped_labels
                for i in voters
            ]
        )
        learned = atlas.tissue_maps(age)
        learned = None if learned is None else learned[0].argmax(0)
        maps[int(age)] = (majority_vote(carried[:, 0]), majority_vote(carried[:, 1]), learned)
    return maps


def score_variant(atlas, cohort, test_idx, maps, mask):
    """Per held-out subject: Dice per tissue of the atlas tissue map (learned if any, else
    voted) carried to the subject vs its seg4 tissues, the same for the voted map, atlas
    sharpness, % non-positive Jacobian, registration time; and the centrality (mm)."""
    from atlas import metrics
    from atlas.learn.evaluation import centrality, sharpness, tissue_dice

    rows, fields = [], []
    for i in test_idx:
        ref = int(REF_AGES[np.abs(REF_AGES - cohort.ages[i]).argmin()])
        reg = atlas.register(cohort.images[i], ref)
        voted = atlas.to_subject(maps[ref][0], reg.displacement, nearest=True).astype(int)
        own = voted if reg.warped_tissues is None else reg.warped_tissues.argmax(0)
        det = metrics.jacobian_determinant(reg.inverse_displacement * atlas.spacing, atlas.spacing)
        vote_dice = tissue_dice(voted, cohort.tissues[i], cohort.tissue_names, TISSUES)
        rows.append(
            {"subject": cohort.subjects[i], "age": float(cohort.ages[i])}
            | tissue_dice(own, cohort.tissues[i], cohort.tissue_names, TISSUES)
            | {f"vote_{k}": v for k, v in vote_dice.items()}
            | sharpness(reg.atlas, reg.warped, atlas.spacing, mask)  # subject in atlas space
            | {
                "pct_nonpositive_jac": metrics.jacobian_stats(det)["pct_nonpositive"],
                "seconds": reg.seconds,
            }
        )
        fields.append(reg.displacement * atlas.spacing)
    return rows, centrality(iter(fields), mask)


def design_variant(args, name: str) -> dict:
    """Train and evaluate one variant of the 2 x 2 design, or build and score the iterative
    templates (``name`` ``iterative``), in its own process so that its peak memory is its
    own; returns and writes ``<out>/<name>/report.json``."""
    import resource

    from atlas.learn import LearnedAtlas, load_bids_cohort, train

    full = load_bids_cohort(args.data, label_suffix=None, tissue_suffix="desc-seg4_dseg")
    seg24 = load_bids_cohort(args.data, label_suffix="desc-seg24_dseg").labels
    cohort, seg24 = downsample(full, seg24, args.downsample)
    train_idx, test_idx = split(len(cohort.ages), args.validation)
    training = type(cohort)(
        images=cohort.images[train_idx],
        ages=cohort.ages[train_idx],
        affine=cohort.affine,
        disk_shape=cohort.disk_shape,
        tissues=cohort.tissues[train_idx],  # test subjects' tissues: evaluation only
        tissue_names=cohort.tissue_names,
    )
    voters = np.sort(np.random.default_rng(1).choice(train_idx, args.k, replace=False))
    mask = (training.tissues > 0).mean(0) > 0.5
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    pixel = float(np.prod(cohort.spacing))
    csf = cohort.tissue_names.index("CSF") + 1
    tic, cpu = time.perf_counter(), time.process_time()
    if name == ITERATIVE:
        tissues = {"maps": cohort.tissues, "names": cohort.tissue_names, "mask": mask}
        base = ants_baseline(cohort, seg24, train_idx, test_idx, voters, args.baseline_n, tissues)
        maps = {a: (*m, None) for a, m in base["maps"].items()}
        rows = [r | {"subject": cohort.subjects[r.pop("index")]} for r in base["rows"]]
        weights = {a: sum(abs(r["age"] - a) <= 10 for r in rows) for a in (20, 90)}
        centrality_mm = sum(base["centrality"][a] * w for a, w in weights.items()) / len(rows)
        result = {"final_loss": float("nan")}
    else:
        options = {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "disc_warmup_steps": args.steps // 3,
            "checkpoint_every": max(1, args.steps // 4),
            "log_every": max(1, args.steps // 10),
            "seed": args.seed,
        }
        result = train(options | variant_config(name, args), training, out / "model")
    train_seconds, train_cpu = time.perf_counter() - tic, time.process_time() - cpu
    if name != ITERATIVE:
        atlas = LearnedAtlas(result["model"])
        montage(atlas, [20, 35, 50, 65, 80, 90], out / "montage.png")
        ages = {int(REF_AGES[np.abs(REF_AGES - a).argmin()]) for a in cohort.ages[test_idx]}
        maps = atlas_tissue_maps(atlas, cohort, seg24, voters, sorted(ages | {20, 50, 90}))
        rows, centrality_mm = score_variant(atlas, cohort, test_idx, maps, mask)
    report = {
        "variant": name,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": result["final_loss"],
        "centrality_mm": centrality_mm,
        "rows": rows,
        "csf_mm2": {
            a: float(((m[2] if m[2] is not None else m[0]) == csf).sum() * pixel)
            for a, m in maps.items()
            if a in (20, 50, 90)
        },
        "ventricles_seg24_mm2": {
            a: float(np.isin(m[1], VENTRICLES_SEG24).sum() * pixel)
            for a, m in maps.items()
            if a in (20, 50, 90)
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def run_design(args) -> list:
    """The 2 x 2 design and the iterative template: each trained and evaluated in a child
    process (same split, same budget; ``--jobs`` at a time), then the table printed."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    def child(name):
        cmd = [sys.executable, __file__, "--design-variant", name, "--out", args.out]
        cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        cmd += ["--threads", str(args.threads), "--k", str(args.k), "--data", args.data]
        cmd += ["--downsample", str(args.downsample), "--baseline-n", str(args.baseline_n)]
        cmd += ["--seed", str(args.seed), "--tissue-weight", str(args.tissue_weight)]
        cmd += ["--adversarial-weight", str(args.adversarial_weight)]
        cmd += ["--validation"] if args.validation else []
        subprocess.run(cmd, check=True)
        return json.loads((Path(args.out) / name / "report.json").read_text())

    with ThreadPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(child, args.variants.split(",")))
    print_design(reports, args)
    return reports


def design_means(rows: list) -> dict:
    """Means over subjects of every numeric measure of ``rows``, with ``mean_dice`` (and
    ``vote_mean_dice`` when the rows have voted-map Dice) over :data:`TISSUES`."""
    mean = {k: float(np.mean([row[k] for row in rows])) for k in rows[0] if k != "subject"}
    for prefix in ("", "vote_"):
        if f"{prefix}dice_{TISSUES[0]}" in mean:
            mean[f"{prefix}mean_dice"] = float(
                np.mean([mean[f"{prefix}dice_{t}"] for t in TISSUES])
            )
    return mean


def print_design(reports: list, args) -> None:
    """The evaluation table of the 2 x 2 design and the iterative template (means over
    held-out subjects; the iterative template's subset, within 10 y of 20 / 90 y, scored
    for every variant in a second table)."""
    learned = [r for r in reports if r["variant"] != ITERATIVE]
    print(
        f"\n2x2 design on oasis2d, grid /{args.downsample}, {args.steps} steps x batch "
        f"{args.batch_size}, {len(learned[0]['rows']) if learned else 0} held-out subjects"
    )
    cols = [f"dice_{t}" for t in TISSUES] + ["mean_dice", "vote_mean_dice", "sharpness"]
    cols += ["sharpness_raw", "centrality_mm", "pct_nonpositive_jac", "seconds"]
    cols += ["train_min", "train_cpu_min", "peak_mb"]
    subset = {row["subject"] for r in reports if r["variant"] == ITERATIVE for row in r["rows"]}
    tables = [("all held-out subjects", learned, None)]
    if subset:
        title = f"{len(subset)} held-out subjects within 10 y of 20 / 90 y (iterative templates)"
        tables.append((title, reports, subset))
    for title, shown, keep in tables:
        print(f"\n{title}\n{'variant':20s}" + "".join(f" {c:>15s}" for c in cols))
        for r in shown:
            rows = [row for row in r["rows"] if keep is None or row["subject"] in keep]
            mean = design_means(rows) | {
                "centrality_mm": r["centrality_mm"],
                "train_min": r["train_seconds"] / 60,
                "train_cpu_min": r["train_cpu_seconds"] / 60,
                "peak_mb": r["peak_rss_mb"],
            }
            values = [mean.get(c, float("nan")) for c in cols]
            print(f"{r['variant']:20s}" + "".join(f" {v:15.4f}" for v in values))
    for r in reports:
        print(
            f"{r['variant']:20s} atlas CSF area "
            + "/".join(str(a) for a in r["csf_mm2"])
            + " y: "
            + " / ".join(f"{v:.0f}" for v in r["csf_mm2"].values())
            + " mm2; seg24 lateral ventricles (voted): "
            + " / ".join(f"{v:.0f}" for v in r["ventricles_seg24_mm2"].values())
            + " mm2"
        )


def add_design_arguments(parser) -> None:
    """Options of ``--design`` (the 2 x 2 variants of issue 13)."""
    parser.add_argument(
        "--design",
        action="store_true",
        help="train and evaluate the 2x2 design (conditional, +tissue, Atlas-GAN, GAN+tissue)",
    )
    parser.add_argument(
        "--variants", default=",".join([*VARIANTS, ITERATIVE]), help="design variants"
    )
    parser.add_argument("--jobs", type=int, default=1, help="design: variants run at a time")
    parser.add_argument("--design-variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--downsample", type=int, default=1, help="design: grid factor")
    parser.add_argument(
        "--seed", type=int, default=0, help="design: torch seed of training (train.seed)"
    )
    parser.add_argument(
        "--tissue-weight", type=float, default=0.3, help="design: train.tissue_weight of +tissue"
    )
    parser.add_argument(
        "--adversarial-weight",
        type=float,
        default=0.3,
        help="design: train.adversarial_weight of the adversarial variants",
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="design: train on 80 %% of the training subjects, score on the other 20 %% "
        "(choosing settings without the test subjects)",
    )


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
    add_design_arguments(parser)
    args = parser.parse_args(argv)

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from atlas.learn import LearnedAtlas, export_templateflow, load_bids_cohort, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.design_variant:
        return design_variant(args, args.design_variant)
    if args.design:
        return run_design(args)
    out = Path(args.out)
    cohort = load_bids_cohort(args.data)
    seg24 = load_bids_cohort(args.data, label_suffix="desc-seg24_dseg").labels
    train_idx, test_idx = split(len(cohort.ages))
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
