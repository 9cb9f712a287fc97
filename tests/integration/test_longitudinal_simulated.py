"""Simulated change (issue 12 acceptance, accuracy and order bias).

A follow-up is made from a real scan (MICCAI 2012 sub-OAS10101 ses-1, preprocessed here by
the preprocess job; its manual labels resampled to it) by a known smooth deformation
(:func:`atlas.longitudinal.simulate.simulate_followup`): the whole brain shrinks by 1 % and
the left hippocampus by ``p`` % in all, plus a small rigid motion of each scan and fresh
Gaussian noise (4 % of the median brain intensity at 1 mm, averaged over the voxel at
coarser grids). The change is measured by the workflow's route
(:func:`atlas.longitudinal.sst.sst_percent_change`: the SST by the template jobs with the
default ``template`` and ``longitudinal`` config, the baseline's labels carried to the SST,
Jacobian integration).

Two inputs keep it fast:

* the hippocampus levels (1 / 2 / 5 %) on a 1 mm box around the left hippocampus
  (:data:`BOX_MARGIN` mm on each side, cut from the raw scan before preprocessing). At 4 mm
  the 4.5 cm^3 hippocampus is ~70 voxels and a 2 % change is a ~0.03 mm mean boundary
  shift, below what registration resolves (README, "Longitudinal tracking"); a box keeps
  the 1 mm detail at the cost of a 4 mm whole brain;
* the whole-brain 1 % and the order bias on the whole scan at :data:`RES` mm (the box's
  labelled volume is cut by its faces, so its "brain" change is not the brain's).

The five SSTs run in two worker processes (the same CPU time as one after the other, half
the wall time on the 2 CI cores).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp

import numpy as np
import pytest

pytestmark = pytest.mark.integration

SUBJECT = "OAS10101"
STRUCTURE = 48  # Left Hippocampus (BrainCOLOR)
RES = 4.0  # mm, the whole-scan pair
LEVELS = (1.0, 2.0, 5.0)  # % hippocampus shrink
BOX_MARGIN = 20  # mm (1 mm voxels) around the hippocampus's bounding box
# Noise sd as a fraction of the median brain intensity, added to each scan: 4 % at 1 mm
# (a typical 1 mm T1w), averaged over the res^3 voxels of a coarser grid.
NOISE_1MM = 0.04
BOUND_PP = 0.5  # issue 12


def _preprocess(data, tmp, res, box=None):
    """Preprocessed ses-1 scan at ``res`` mm and its manual labels on the same grid; with
    ``box``, both cut first to the hippocampus's bounding box + ``box`` voxels (raw grid)."""
    import ants
    import nibabel as nib

    from atlas.preprocess import jobs as pjobs
    from atlas.preprocess.plan import preprocess_settings

    cfg = {
        "resolution": res,
        "skull_strip": "auto",
        "skull_strip_template": {"head": None, "mask": None},
        "intensity_normalisation": "percentile",
        "brain_only_max_volume_ml": 2500,
        "fov_margin_mm": 10.0,
        "seed": 1,
    }
    ref = tmp / "ref.nii.gz"
    pjobs.reference(
        out_image=ref,
        out_mask=tmp / "ref_mask.nii.gz",
        reference="MNI152NLin2009aSym",
        reference_mask=None,
        resolution=res,
        margin_mm=10.0,
    )
    t1w = data / f"sub-{SUBJECT}" / "ses-1" / "anat" / f"sub-{SUBJECT}_ses-1_T1w.nii.gz"
    man = data / "derivatives" / "manual" / f"sub-{SUBJECT}" / "ses-1" / "anat"
    dseg = next(man.glob("*_dseg.nii.gz"))
    if box is not None:
        raw = nib.load(dseg)
        where = np.argwhere(np.asarray(raw.dataobj) == STRUCTURE)
        lo = np.maximum(where.min(0) - box, 0)
        hi = np.minimum(where.max(0) + box + 1, raw.shape)
        cut = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        for src, name in ((t1w, "box_T1w.nii.gz"), (dseg, "box_dseg.nii.gz")):
            nib.save(nib.load(src).slicer[cut], tmp / name)
        t1w, dseg = tmp / "box_T1w.nii.gz", tmp / "box_dseg.nii.gz"
    pjobs.preprocess(
        t1w=t1w,
        reference_image=ref,
        out_image=tmp / "base.nii.gz",
        out_mask=tmp / "mask.nii.gz",
        out_json=tmp / "base.json",
        settings=preprocess_settings(cfg),
    )
    base = ants.image_read(str(tmp / "base.nii.gz"))
    labels = ants.image_read(str(dseg))
    return base, ants.resample_image_to_target(labels, base, interp_type="genericLabel")


def _simulated_pair(base, labels, pct, res, tmp, name):
    """Write a simulated pair (``pct`` % hippocampus shrink, noise seed ``int(pct)``);
    returns (paths of baseline and follow-up, labels path, (true structure %, brain %))."""
    import ants

    from atlas.longitudinal.simulate import simulate_followup

    noise = NOISE_1MM * res**-1.5
    sim = simulate_followup(base, labels, STRUCTURE, pct, noise=noise, seed=int(pct))
    paths = [tmp / f"{name}_{part}.nii.gz" for part in ("base", "follow", "labels")]
    for img, path in zip((sim.baseline, sim.followup, sim.labels), paths, strict=True):
        ants.image_write(img, str(path))
    return paths[:2], paths[2], (sim.true_structure_pct, sim.true_brain_pct)


@pytest.fixture(scope="module")
def measured(shared_data, tmp_path_factory):
    """Keys: each level (the 1 mm box), ``"brain"`` (the 2 % pair at :data:`RES` mm) and
    ``"swapped"`` (that pair with the follow-up listed first). Values: (true structure %,
    true brain %) or None, and the measured (structure %, brain %)."""
    import yaml

    from atlas.longitudinal.sst import sst_percent_change
    from atlas.registration import set_determinism

    set_determinism(seed=1, threads=1)  # environment variables: the workers inherit them
    cfg = yaml.safe_load(open("config/config.yaml"))
    data = (shared_data / "miccai2012").resolve()
    jobs, truth = {}, {}
    box = tmp_path_factory.mktemp("box")
    base, labels = _preprocess(data, box, 1.0, BOX_MARGIN)
    for pct in LEVELS:
        pair, lab, truth[pct] = _simulated_pair(base, labels, pct, 1.0, box, f"p{pct:g}")
        jobs[pct] = (pair, lab, box / f"sst_p{pct:g}", 0)
    whole = tmp_path_factory.mktemp("whole")
    base, labels = _preprocess(data, whole, RES)
    pair, lab, truth["brain"] = _simulated_pair(base, labels, 2.0, RES, whole, "p2")
    jobs["brain"] = (pair, lab, whole / "sst", 0)
    jobs["swapped"] = (pair[::-1], lab, whole / "sst_swapped", 1)
    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        futures = {
            key: pool.submit(
                sst_percent_change, *args[:3], cfg["longitudinal"], cfg["template"], args[3]
            )
            for key, args in jobs.items()
        }
        pct = {key: f.result() for key, f in futures.items()}
    got = {key: (float(p[str(STRUCTURE)]), float(p["total_brain"])) for key, p in pct.items()}
    return {key: (truth.get(key), got[key]) for key in jobs}


def test_simulated_brain_change_is_recovered(measured):
    """The whole-brain 1 % shrink is recovered within 0.5 percentage points (whole scan)."""
    (_, true_b), (_, got_b) = measured["brain"]
    print(f"brain {got_b:.2f} (true {true_b:.2f})")
    assert abs(got_b - true_b) <= 0.5


@pytest.mark.parametrize("pct", LEVELS)
def test_simulated_structure_change_is_recovered(measured, pct):
    """The hippocampus change (``pct`` % in all) within :data:`BOUND_PP` percentage points
    at 1 mm (the box). Measured: +0.17 / -0.02 / -0.01 pp (1 / 2 / 5 %); three noise draws
    per level on a box cut after whole-scan preprocessing: -0.06 to +0.22 pp. At 4 mm the
    errors reached 1.7 pp and changed sign with the draw (README)."""
    (true_s, _), (got_s, _) = measured[pct]
    print(f"shrink {pct} %: structure {got_s:.2f} (true {true_s:.2f})")
    assert abs(got_s - true_s) <= BOUND_PP


def test_no_order_bias(measured):
    """With baseline and follow-up swapped (the follow-up listed first; the baseline's labels
    carried to the SST as before) the measured change flips sign within 0.2 percentage
    points: the SST starts from the mean of both scans, so no scan is the target."""
    _, (fwd_s, fwd_b) = measured["brain"]
    _, (back_s, back_b) = measured["swapped"]
    print(f"forward {fwd_s:.2f} / {fwd_b:.2f} %, swapped {back_s:.2f} / {back_b:.2f} %")
    # a change of c % read backwards is 100 (1 / (1 + c/100) - 1) %, not -c %
    expect = [100 * (1 / (1 + c / 100) - 1) for c in (fwd_s, fwd_b)]
    assert abs(back_s - expect[0]) <= 0.2
    assert abs(back_b - expect[1]) <= 0.2
    assert abs(back_s + fwd_s) <= 0.2 and abs(back_b + fwd_b) <= 0.2  # issue 12 wording
