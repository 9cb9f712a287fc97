"""Longitudinal route vs the naive baseline-registration route on the MICCAI 2012 rescans.

**Reliability**: the scan-rescan subjects of ``../shared/data/miccai2012`` (two scans in one
visit: the true change is about zero). For every manually labelled structure of at least
``--min-volume`` mm^3 and every subject, the |% volume difference| ses-2 vs ses-1 of:

- ``manual``: the manual labels of each session, counted independently (cross-sectional,
  the best any per-session segmentation can do);
- ``longitudinal``: this workflow's route: an unbiased single-subject template (SST) by the
  template jobs (:func:`atlas.longitudinal.sst.sst_percent_change`, the workflow's default
  ``longitudinal.sst`` iterations), ses-1 labels carried to the SST, volumes by Jacobian
  integration of SST -> session (:func:`atlas.longitudinal.change.jacobian_integration`);
- ``baseline``: the naive route: ses-2 registered to ses-1 (affine + SyN, the template's
  settings), volumes of ses-1's labels and their Jacobian integral through ses-1 -> ses-2.

**Accuracy**: follow-ups simulated from ses-1 of the ``--simulate`` subjects
(:func:`atlas.longitudinal.simulate.simulate_followup`: ``--structures`` shrunk by each of
``--levels`` %, the brain by 1 %, rigid motion, noise :func:`noise_at` the resolution),
measured by both routes: error in percentage points of the structure and the brain change;
for the longitudinal route also the error with the simulation's true Jacobian field integrated
over the same SST labels (:func:`true_field_pct`), which separates the registration field's
error from the labels' and the integration's.

Prints the median |% difference| per route, the error table, and wall time and peak memory
(max RSS of the fresh process that ran each step) per subject. Usage::

    nice -n 5 python benchmarks/longitudinal_miccai2012.py --resolution 2
    nice -n 5 python benchmarks/longitudinal_miccai2012.py --resolution 1 \\
        --subjects OAS10101 --simulate   # cost at 1 mm, reliability only
    python benchmarks/longitudinal_miccai2012.py --resolution 1 --subjects \\
        --simulate OAS10101 --structures 48 --box 20 --seed 1 2 3   # the test's 1 mm box
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "miccai2012"
SUBJECTS = ["OAS10101", "OAS10111", "OAS10117", "OAS10379", "OAS10395"]
#: sd of the fresh noise of a simulated 1 mm scan (fraction of the median brain intensity), a
#: typical 1 mm T1w noise level; lower resolutions get it averaged (:func:`noise_at`).
NOISE_1MM = 0.04


def _config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _prepare(subject: str, res: float, work: Path) -> dict:
    """Preprocess both sessions; normalise them to the reference; labels on their grids."""
    import ants

    from atlas.preprocess import jobs as pjobs
    from atlas.preprocess.plan import preprocess_settings

    cfg = _config() | {"resolution": res}
    ref = work / "ref.nii.gz"
    if not ref.exists():
        pjobs.reference(
            out_image=ref,
            out_mask=work / "ref_mask.nii.gz",
            reference=cfg["reference"],
            reference_mask=None,
            resolution=res,
            margin_mm=cfg["fov_margin_mm"],
        )
    files = {}
    for ses in ("1", "2"):
        anat = DATA / f"sub-{subject}" / f"ses-{ses}" / "anat"
        pre, aff = work / f"{subject}_{ses}.nii.gz", work / f"{subject}_{ses}_aff.mat"
        if pre.exists():  # prepared by an earlier route's process
            files[ses] = _session_files(work, subject, ses)
            continue
        pjobs.preprocess(
            t1w=anat / f"sub-{subject}_ses-{ses}_T1w.nii.gz",
            reference_image=ref,
            out_image=pre,
            out_mask=work / f"{subject}_{ses}_mask.nii.gz",
            out_json=work / f"{subject}_{ses}.json",
            settings=preprocess_settings(cfg),
        )
        pjobs.normalise(
            image=pre,
            reference_image=ref,
            out_affine=aff,
            out_warped=work / f"{subject}_{ses}_norm.nii.gz",
            rigid_only=False,
            affine_params=cfg["template"]["affine"],
        )
        files[ses] = _session_files(work, subject, ses)
        dseg = ants.image_read(str(files[ses]["native_dseg"]))
        lab = ants.resample_image_to_target(dseg, ants.image_read(str(pre)), "genericLabel")
        ants.image_write(lab, str(files[ses]["dseg"]))
    return files


def _session_files(work: Path, subject: str, ses: str) -> dict:
    man = DATA / "derivatives" / "manual" / f"sub-{subject}" / f"ses-{ses}" / "anat"
    return {
        "pre": work / f"{subject}_{ses}.nii.gz",
        "aff": work / f"{subject}_{ses}_aff.mat",
        "norm": work / f"{subject}_{ses}_norm.nii.gz",
        "dseg": work / f"{subject}_{ses}_dseg.nii.gz",
        "native_dseg": next(man.glob("*_dseg.nii.gz")),
    }


def _table(dseg: np.ndarray) -> pd.DataFrame:
    ids = np.unique(dseg[dseg > 0]).astype(int)
    return pd.DataFrame({"index": ids, "name": [str(i) for i in ids]})


def route_longitudinal(images, labels, work: Path, affines=None, init_images=None):
    """% change image 1 vs image 0 of every label of ``labels`` (on image 0's grid) and of
    ``total_brain`` through an SST of both images, the workflow's default
    ``longitudinal.sst`` (:func:`atlas.longitudinal.sst.sst_measure`); and that measure's
    dict (SST, its labels, the log-Jacobians, the transforms)."""
    from atlas.longitudinal.sst import sst_measure

    cfg = _config()
    m = sst_measure(
        list(images),
        labels,
        work / "sst",
        cfg["longitudinal"],
        cfg["template"],
        initial_affines=affines,
        init_images=init_images,
    )
    return 100 * (m["volumes"][1] / m["volumes"][0] - 1), m


def true_field_pct(m: dict, true_log_ratio, structure: int) -> tuple[float, float]:
    """The % change of ``structure`` and of the brain that the SST route would read with a
    perfect registration: the simulation's true log volume ratio (on the baseline's grid,
    :attr:`atlas.longitudinal.simulate.SimulatedPair.true_log_ratio`) carried to the SST by
    the baseline's (image 0) transforms and integrated over the same SST labels, weighted by
    the baseline's recovered Jacobian. Equal to the truth: the labels and the integration are
    not the error; a difference from the measured change is the registration field's."""
    import ants

    t = m["transforms"]
    rho = ants.apply_transforms(
        m["sst"], true_log_ratio, [str(t["warps"][0]), str(t["affines"][0])]
    ).numpy()
    lj0 = m["log_jacobians"][0]
    j0 = np.exp(np.where(np.isfinite(lj0), lj0, -np.inf))
    out = []
    for mask in (m["dseg"] == structure, m["dseg"] > 0):
        out.append(100 * float((j0 * np.exp(rho))[mask].sum() / j0[mask].sum() - 1))
    return out[0], out[1]


def route_baseline(images, labels, work: Path) -> pd.Series:
    """The same by the naive route: image 1 registered to image 0 (affine + SyN, the
    template's settings), Jacobian integration of image 0 -> image 1 over image 0's labels
    (``total_brain`` included)."""
    from atlas import io
    from atlas.longitudinal.change import jacobian_integration
    from atlas.registration import register

    cfg = _config()
    base = io.read_image(images[0])
    params = dict(cfg["template"]["affine"], **cfg["template"]["syn"], transform="SyN")
    aff, warp, iw = work / "b_aff.mat", work / "b_warp.nii.gz", work / "b_iw.nii.gz"
    work.mkdir(parents=True, exist_ok=True)
    register(base, io.read_image(images[1]), params, aff, warp, iw)
    lab = np.rint(io.read_image(labels).numpy()).astype(int)
    table = _table(lab)
    v2 = jacobian_integration(base, aff, warp, lab, table)[0].set_index("name").volume_mm3
    vox = float(np.prod(base.spacing))
    v1 = pd.Series([np.count_nonzero(lab == i) * vox for i in table["index"]], index=table["name"])
    v1["total_brain"] = np.count_nonzero(lab > 0) * vox
    return 100 * (v2[v1.index] / v1 - 1)


def _manual(files: dict, min_volume: float) -> pd.Series:
    """% difference of the manual label volumes of structures >= ``min_volume`` mm^3."""
    v = []
    for s in "12":
        import ants

        d = ants.image_read(str(files[s]["native_dseg"]))
        arr = d.numpy().astype(int)
        ids, counts = np.unique(arr[arr > 0], return_counts=True)
        v.append(pd.Series(counts * float(np.prod(d.spacing)), index=[str(i) for i in ids]))
    big = v[0].index[(v[0] >= min_volume) & v[0].index.isin(v[1].index)]
    return 100 * (v[1][big] / v[0][big] - 1)


def _child(route: str, subject: str, res: float, work: str, min_volume: float):
    """One route for one subject's rescans in a fresh process: (% diffs, seconds, peak RSS
    MB)."""
    from atlas.registration import set_determinism

    set_determinism(seed=1, threads=1)
    work = Path(work)
    start = time.perf_counter()
    files = _prepare(subject, res, work.parent)
    pre = [files[s]["pre"] for s in "12"]
    if route == "preprocess":  # both sessions: preprocess + normalise jobs, labels resampled
        seconds = time.perf_counter() - start
        return pd.Series(dtype=float), seconds, _peak_mb()
    start = time.perf_counter()
    if route == "manual":
        diff = _manual(files, min_volume)
    elif route == "longitudinal":
        diff, _ = route_longitudinal(
            pre,
            files["1"]["dseg"],
            work,
            affines=[files[s]["aff"] for s in "12"],
            init_images=[files[s]["norm"] for s in "12"],
        )
    else:
        diff = route_baseline(pre, files["1"]["dseg"], work)
    return diff, time.perf_counter() - start, _peak_mb()


def _peak_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux ``ru_maxrss`` is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def noise_at(res: float) -> float:
    """Fresh noise of a simulated scan at ``res`` mm: :data:`NOISE_1MM` of the median brain
    intensity at 1 mm, averaged over ``res^3`` voxels (sd / res^1.5)."""
    return NOISE_1MM * res**-1.5


def _box(image, labels, structure: int, margin_mm: float):
    """``image`` and ``labels`` cut to the bounding box of ``structure`` + ``margin_mm``."""
    import ants

    where = np.argwhere(labels.numpy() == structure)
    pad = int(round(margin_mm / min(image.spacing)))
    lo = np.maximum(where.min(0) - pad, 0)
    hi = np.minimum(where.max(0) + pad + 1, image.shape)
    return [ants.crop_indices(img, list(lo), list(hi)) for img in (image, labels)]


def _child_simulated(route, subject, res, work, structure, pct, seed, box=None):
    """One route on a simulated follow-up of ``subject`` ses-1 (a fresh process), on the
    whole scan or, with ``box`` (mm), on the structure's bounding box + ``box``: errors
    (pp) of the structure and brain change (then, longitudinal route, those of
    :func:`true_field_pct`; NaN for the baseline route; the brain's NaN with ``box``, whose
    labelled volume is cut by its faces), seconds, peak RSS MB."""
    import ants

    from atlas.longitudinal.simulate import simulate_followup
    from atlas.registration import set_determinism

    set_determinism(seed=1, threads=1)
    work = Path(work)
    files = _prepare(subject, res, work.parent.parent)
    base = [ants.image_read(str(files["1"][key])) for key in ("pre", "dseg")]
    if box is not None:
        base = _box(*base, structure, box)
    sim = simulate_followup(
        *base,
        structure,
        pct,
        noise=noise_at(res),
        seed=seed,
    )
    work.mkdir(parents=True, exist_ok=True)
    paths = [work / "baseline.nii.gz", work / "followup.nii.gz", work / "labels.nii.gz"]
    for img, path in zip((sim.baseline, sim.followup, sim.labels), paths, strict=True):
        ants.image_write(img, str(path))
    start = time.perf_counter()
    ideal = (np.nan, np.nan)
    if route == "longitudinal":
        diff, m = route_longitudinal(paths[:2], paths[2], work)
        ideal = true_field_pct(m, sim.true_log_ratio, structure)
    else:
        diff = route_baseline(paths[:2], paths[2], work)
    seconds, peak = time.perf_counter() - start, _peak_mb()
    truth = (sim.true_structure_pct, sim.true_brain_pct)
    errors = (diff[str(structure)] - truth[0], diff["total_brain"] - truth[1])
    errors = (*errors, ideal[0] - truth[0], ideal[1] - truth[1])
    if box is not None:
        errors = (errors[0], np.nan, errors[2], np.nan)
    return errors, seconds, peak


def _spawn(fn, *args):
    """``fn(*args)`` in a fresh process (its own peak RSS)."""
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def reliability(subjects, res, tmp, min_volume):
    """Scan-rescan |% difference| per route and the cost of each route per subject."""
    rows, timing = [], []
    for subject in subjects:
        for route in ("preprocess", "manual", "longitudinal", "baseline"):
            work = Path(tmp) / subject / route
            work.mkdir(parents=True, exist_ok=True)
            diff, sec, peak = _spawn(_child, route, subject, res, str(work), min_volume)
            rows += [(subject, route, n, d) for n, d in diff.items()]
            timing.append((subject, route, sec, peak))
            print(f"  {subject} {route}: {sec:.0f} s, peak {peak:.0f} MB", flush=True)
    df = pd.DataFrame(rows, columns=["subject", "route", "label", "pct_diff"])
    # structures large enough in the manual labels of both sessions
    man = df[df.route == "manual"]
    df = df.merge(man[["subject", "label"]], on=["subject", "label"])
    df["abs_pct_diff"] = df.pct_diff.abs()
    return df, pd.DataFrame(timing, columns=["subject", "route", "seconds", "peak_mb"])


def accuracy(subjects, res, tmp, structures, levels, seeds, box=None):
    """Error (pp) of the simulated structure and brain change per route and noise seed."""
    rows = []
    cases = [(s, k, p, n) for s in subjects for k in structures for p in levels for n in seeds]
    for subject, structure, pct, seed in cases:
        for route in ("longitudinal", "baseline"):
            work = Path(tmp) / subject / "sim" / f"{structure}_{pct:g}_{seed}_{route}"
            args = (route, subject, res, str(work), structure, pct, seed, box)
            errors, sec, peak = _spawn(_child_simulated, *args)
            rows.append((subject, structure, pct, seed, route, *errors, sec, peak))
            print(
                f"  {subject} label {structure} {pct:g} % seed {seed} {route}: error "
                f"{errors[0]:+.2f} pp (brain {errors[1]:+.2f} pp; with the true field "
                f"{errors[2]:+.2f} / {errors[3]:+.2f} pp), {sec:.0f} s",
                flush=True,
            )
    cols = ["subject", "label", "pct", "seed", "route", "error_pp", "brain_error_pp"]
    cols += ["true_field_error_pp", "true_field_brain_error_pp", "seconds", "peak_mb"]
    return pd.DataFrame(rows, columns=cols)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resolution", type=float, default=2.0, help="mm (2 or 1; 4 for a quick run)")
    ap.add_argument("--subjects", nargs="*", default=SUBJECTS, help="rescan subjects")
    ap.add_argument("--min-volume", type=float, default=1000.0, help="mm^3, smallest structure")
    ap.add_argument(
        "--simulate",
        nargs="*",
        default=SUBJECTS[:2],
        help="subjects whose ses-1 gets simulated follow-ups (none: skip the accuracy part)",
    )
    ap.add_argument("--structures", nargs="*", type=int, default=[48, 37], help="label ids shrunk")
    ap.add_argument("--levels", nargs="*", type=float, default=[1.0, 2.0, 5.0], help="% shrink")
    ap.add_argument(
        "--seed", nargs="+", type=int, default=[1], help="noise seeds of the simulation"
    )
    ap.add_argument(
        "--box",
        type=float,
        default=None,
        help="mm: simulate on the shrunk structure's bounding box + this margin (a 1 mm box "
        "costs about a 4 mm whole scan); the brain change is then not measured",
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="atlas-longbench-") as tmp:
        print(f"resolution {args.resolution:g} mm")
        if args.subjects:
            df, t = reliability(args.subjects, args.resolution, tmp, args.min_volume)
            print(f"\nrescan subjects {', '.join(args.subjects)}")
            print("median |% volume difference| ses-2 vs ses-1 over structures and subjects:")
            print(df.groupby("route").abs_pct_diff.median().round(3).to_string())
            print("\nwall time (s) and peak memory (MB) per subject: each step in a fresh process,")
            print("its max RSS; preprocess = both sessions' preprocess + normalise jobs")
            wide = t.pivot(index="subject", columns="route", values=["seconds", "peak_mb"])
            print(wide.round(0).to_string())
        if args.simulate:
            acc = accuracy(
                args.simulate,
                args.resolution,
                tmp,
                args.structures,
                args.levels,
                args.seed,
                args.box,
            )
            print(f"\nsimulated change (noise {100 * noise_at(args.resolution):.2f} % of the")
            print("median brain intensity, brain shrink 1 %): error in percentage points")
            errors = acc.pivot_table(
                index=["subject", "label", "pct", "seed"], columns="route", values="error_pp"
            )
            print(errors.round(2).to_string())
            print("longitudinal route with the simulation's true field over the same SST labels")
            print("(labels and integration exact: the rest of the error is the registration's):")
            ideal = acc[acc.route == "longitudinal"].set_index(["subject", "label", "pct", "seed"])
            print(ideal[["true_field_error_pp", "true_field_brain_error_pp"]].round(3).to_string())
            print("brain 1 % error (pp), median |error| per route:")
            print(acc.groupby("route").brain_error_pp.apply(lambda e: e.abs().median()).round(2))
            print("max |error| (pp) per route:")
            print(acc.groupby("route").error_pp.apply(lambda e: e.abs().max()).round(2))


if __name__ == "__main__":
    main()
