"""Benchmark: pairwise registration backends on MICCAI 2012 train scans (not the IXI data the
template benchmark evaluates), to choose each backend's default settings.

For ``--pairs`` pairs of consecutive ``train`` subjects (``participants.tsv``), both scans and
their manual Neuromorphometrics labels are resampled to ``--resolution`` mm (labels nearest
neighbour); the moving scan is registered to the fixed one with
:func:`atlas.registration.register` (``transform: SyN``: affine then deformable) for each
setting below, one ITK / Greedy thread, seed fixed, and its labels are carried onto the fixed
grid (nearest neighbour). Per setting, the mean over pairs of:

* ``seconds``: wall time of the registration call (files written included);
* ``dice``: mean Dice over the labels of the fixed scan (:func:`atlas.metrics.mean_dice`);
* ``folding_pct``: % of fixed-brain voxels with Jacobian determinant <= 0 of the forward warp
  (:func:`atlas.registration.jacobian_determinant_sitk`).

Settings: ``ants`` = the config's ``template.affine`` + ``template.syn`` (the reference);
``greedy-*`` = the config's ``template.greedy`` with the iterations / -sv named; ``fireants``
= the config's ``template.fireants`` (:data:`atlas.registration.fireants.DEFAULTS` where
unset), ``fireants-*`` with the overrides named (on CPU here: FireANTs is built for a GPU, so
its CPU seconds say nothing of its GPU time). Not a test; run from the project root, e.g.::

    nice -n 5 python -m benchmarks.registration_pairs --pairs 3 --resolution 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "miccai2012"

#: name -> (backend, overrides of that backend's config block: ``greedy`` / ``fireants``)
SETTINGS = {
    "ants": ("ants", {}),
    "greedy-sv-40x20x0": ("greedy", {"iterations": [40, 20, 0], "svf": True}),
    "greedy-sv-100x50x10": ("greedy", {"iterations": [100, 50, 10], "svf": True}),
    "greedy-sv-100x60x30": ("greedy", {"iterations": [100, 60, 30], "svf": True}),
    "greedy-40x20x0": ("greedy", {"iterations": [40, 20, 0], "svf": False}),
    "greedy-100x50x10": ("greedy", {"iterations": [100, 50, 10], "svf": False}),
    "greedy-100x60x30": ("greedy", {"iterations": [100, 60, 30], "svf": False}),
    # affine schedule without its finest level (the deformable stage then refines)
    "greedy-aff100x50x0-100x50x10": (
        "greedy",
        {"iterations": [100, 50, 10], "affine_iterations": [100, 50, 0], "svf": False},
    ),
    "fireants": ("fireants", {}),
    "fireants-200x100x50": ("fireants", {"iterations": [200, 100, 50]}),
    "fireants-affcc": ("fireants", {"affine_metric": "cc"}),
    "fireants-lr0.25": ("fireants", {"lr": 0.25}),
    "fireants-cc7": ("fireants", {"cc_kernel_size": 7}),
}


def load(subject: str, resolution: float):
    """T1w and labels of a subject's first session, resampled to ``resolution`` mm."""
    import ants

    anat = DATA / subject / "ses-1" / "anat"
    lab = DATA / "derivatives" / "manual" / subject / "ses-1" / "anat"
    t1w = ants.image_read(str(anat / f"{subject}_ses-1_T1w.nii.gz"))
    dseg = ants.image_read(str(lab / f"{subject}_ses-1_desc-neuromorphometrics_dseg.nii.gz"))
    t1w = ants.resample_image(t1w, (resolution,) * 3, use_voxels=False, interp_type=0)
    dseg = ants.resample_image_to_target(dseg, t1w, interp_type="nearestNeighbor")
    return t1w, dseg


def run_pair(fixed, moving, params: dict, backend_name: str, tmp: Path) -> dict:
    """Register ``moving`` to ``fixed``; time, Dice of the carried labels, % folding."""
    import ants

    from atlas.metrics import mean_dice
    from atlas.registration import jacobian_determinant_sitk, register

    paths = [tmp / "affine.mat", tmp / "warp.nii.gz", tmp / "inverse-warp.nii.gz"]
    start = time.perf_counter()
    register(fixed[0], moving[0], params, *paths, backend_name=backend_name)
    seconds = time.perf_counter() - start
    carried = ants.apply_transforms(
        fixed[0], moving[1], [str(paths[1]), str(paths[0])], interpolator="nearestNeighbor"
    ).numpy()
    reference = fixed[1].numpy()
    labels = [v for v in np.unique(reference) if v != 0]
    jac = jacobian_determinant_sitk(paths[1]).T
    brain = reference > 0
    return {
        "seconds": seconds,
        "dice": mean_dice(reference, carried, labels),
        "folding_pct": 100.0 * float((jac[brain] <= 0).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--resolution", type=float, default=2.0, help="mm")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = ap.parse_args()

    from atlas.registration import set_determinism
    from atlas.template.plan import last_iteration, stage_params

    set_determinism(1, 1)  # one thread, as one workflow job per core
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["template"]
    base = stage_params(last_iteration(cfg), cfg)  # the last SyN iteration's (full schedule)
    parts = pd.read_csv(DATA / "participants.tsv", sep="\t")
    train = parts.loc[parts.challenge_split == "train", "participant_id"].tolist()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pairs-") as tmp:
        for i in range(args.pairs):
            fixed, moving = (
                load(train[2 * i], args.resolution),
                load(train[2 * i + 1], args.resolution),
            )
            for name in args.settings:
                backend_name, overrides = SETTINGS[name]
                params = dict(base)
                if backend_name != "ants":
                    params[backend_name] = dict(base[backend_name], **overrides)
                row = run_pair(fixed, moving, params, backend_name, Path(tmp))
                rows.append({"pair": i, "setting": name, **row})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows).groupby("setting", sort=False)[["seconds", "dice", "folding_pct"]]
    summary = table.mean()
    summary["ratio_vs_ants"] = (
        summary["seconds"] / summary.loc["ants", "seconds"] if "ants" in summary.index else np.nan
    )
    print(f"\n{args.pairs} MICCAI 2012 train pairs at {args.resolution} mm, 1 thread (means):")
    print(summary.round(4).to_string())


if __name__ == "__main__":
    main()
