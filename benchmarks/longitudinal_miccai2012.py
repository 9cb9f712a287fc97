"""Longitudinal route vs the naive baseline-registration route on the MICCAI 2012 rescans.

The five scan-rescan subjects of ``../shared/data/miccai2012`` (two scans in one visit:
the true change is about zero). For every manually labelled structure of at least
``--min-volume`` mm^3 and every subject, the |% volume difference| ses-2 vs ses-1 of:

- ``manual``: the manual labels of each session, counted independently (cross-sectional,
  the best any per-session segmentation can do);
- ``longitudinal``: this workflow's route: an unbiased single-subject template (SST) by the
  template jobs (:func:`atlas.longitudinal.sst.build_sst`, the workflow's default
  ``longitudinal.sst`` iterations), ses-1 labels carried to the SST, volumes by Jacobian
  integration of SST -> session (:func:`atlas.longitudinal.change.jacobian_volumes`);
- ``baseline``: the naive route: ses-2 registered to ses-1 (affine + SyN, the template's
  settings), volumes of ses-1's labels and their Jacobian integral through ses-1 -> ses-2.

Prints the median over structures and subjects per route, and wall time and peak memory
(max RSS of the process that ran the route) per subject. Each route runs in a fresh
process. Usage::

    nice -n 5 python benchmarks/longitudinal_miccai2012.py --resolution 2
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


def _jac_volumes(domain, affine, warp, labels, table):
    from atlas.longitudinal.change import jacobian_volumes, log_jacobian
    from atlas.registration import jacobian_determinant_image, read_affine_ras

    det = jacobian_determinant_image(domain, warp).numpy()
    lj = log_jacobian(det, read_affine_ras(affine)[:3, :3])
    vol = float(np.prod(domain.spacing))
    return jacobian_volumes(lj, labels, table, vol).set_index("name").volume_mm3


def route_longitudinal(files: dict, work: Path) -> pd.Series:
    import ants

    from atlas.longitudinal.sst import build_sst

    cfg = _config()
    out = build_sst(
        [files[s]["pre"] for s in "12"],
        work / "sst",
        cfg["longitudinal"],
        cfg["template"],
        initial_affines=[files[s]["aff"] for s in "12"],
        init_images=[files[s]["norm"] for s in "12"],
    )
    sst = ants.image_read(str(out["sst"]))
    lab = ants.apply_transforms(
        sst,
        ants.image_read(str(files["1"]["dseg"])),
        [str(out["warps"][0]), str(out["affines"][0])],
        interpolator="genericLabel",
    ).numpy()
    lab = np.rint(lab).astype(int)
    table = _table(lab)
    v = [_jac_volumes(sst, out["affines"][i], out["warps"][i], lab, table) for i in (0, 1)]
    return 100 * (v[1] / v[0] - 1)


def route_baseline(files: dict, work: Path) -> pd.Series:
    from atlas import io
    from atlas.registration import register

    cfg = _config()
    base = io.read_image(files["1"]["pre"])
    params = dict(cfg["template"]["affine"], **cfg["template"]["syn"], transform="SyN")
    aff, warp, iw = work / "b_aff.mat", work / "b_warp.nii.gz", work / "b_iw.nii.gz"
    register(base, io.read_image(files["2"]["pre"]), params, aff, warp, iw)
    lab = np.rint(io.read_image(files["1"]["dseg"]).numpy()).astype(int)
    table = _table(lab)
    v2 = _jac_volumes(base, aff, warp, lab, table)
    v1 = pd.Series(
        [np.count_nonzero(lab == i) * float(np.prod(base.spacing)) for i in table["index"]],
        index=table["name"],
    )
    return 100 * (v2[table["name"]] / v1 - 1)


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
    """One route for one subject in a fresh process: (% diffs, seconds, peak RSS MB)."""
    from atlas.registration import set_determinism

    set_determinism(seed=1, threads=1)
    work = Path(work)
    files = _prepare(subject, res, work.parent)
    start = time.perf_counter()
    if route == "manual":
        diff = _manual(files, min_volume)
    else:
        fn = route_longitudinal if route == "longitudinal" else route_baseline
        diff = fn(files, work / route)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return diff, seconds, peak


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resolution", type=float, default=2.0, help="mm (2 or 1; 4 for a quick run)")
    ap.add_argument("--subjects", nargs="*", default=SUBJECTS)
    ap.add_argument("--min-volume", type=float, default=1000.0, help="mm^3, smallest structure")
    args = ap.parse_args(argv)
    rows, timing = [], []
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="atlas-longbench-") as tmp:
        for subject in args.subjects:
            for route in ("manual", "longitudinal", "baseline"):
                work = Path(tmp) / subject / route
                (work / route).mkdir(parents=True, exist_ok=True)
                with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    diff, sec, peak = pool.submit(
                        _child, route, subject, args.resolution, str(work), args.min_volume
                    ).result()
                rows += [(subject, route, n, d) for n, d in diff.items()]
                timing.append((subject, route, sec, peak))
    df = pd.DataFrame(rows, columns=["subject", "route", "label", "pct_diff"])
    # structures large enough in the manual labels of both sessions
    man = df[df.route == "manual"]
    df = df.merge(man[["subject", "label"]], on=["subject", "label"])
    df["abs_pct_diff"] = df.pct_diff.abs()
    print(f"resolution {args.resolution:g} mm, subjects {', '.join(args.subjects)}")
    print("median |% volume difference| ses-2 vs ses-1 over structures and subjects:")
    print(df.groupby("route").abs_pct_diff.median().round(3).to_string())
    print("\nwall time (s) and peak memory (MB) per subject (route alone; preprocessing excluded):")
    t = pd.DataFrame(timing, columns=["subject", "route", "seconds", "peak_mb"])
    print(t.pivot(index="subject", columns="route", values=["seconds", "peak_mb"]).round(0))


if __name__ == "__main__":
    main()
