"""Longitudinal stage methods with known answers: Jacobian of a known deformation,
Jacobian-integrated volumes, (annualised) change, the mixed model, session ages and the plan."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from atlas.io import InputError
from atlas.longitudinal.change import (
    annualised_percent,
    change_table,
    jacobian_volumes,
    log_jacobian,
)
from atlas.longitudinal.models import fit_volume_age
from atlas.longitudinal.plan import (
    LongitudinalPlan,
    backend,
    plan_longitudinal,
    sst_atlases,
    sst_params,
    sst_stage,
    sst_to_template_params,
)
from atlas.longitudinal.sessions import session_ages

LCFG = {
    "enabled": "auto",
    "time_unit": "years",
    "require_age": True,
    "sst": {"affine_iterations": 2, "syn_iterations": 2},
    "structures": [],
    "min_ncc": 0.5,
}


def test_log_jacobian_of_uniform_scaling(tmp_path):
    """u(x) = (s - 1) x is a uniform scaling by s: det = s^3 everywhere, and an affine of
    determinant 8 adds log 8."""
    from atlas.registration import jacobian_determinant_sitk
    from atlas.registration.transforms import write_warp

    s, n = 1.05, 24
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).astype(float)
    write_warp((s - 1) * (grid - n / 2), affine, tmp_path / "warp.nii.gz")
    det = jacobian_determinant_sitk(tmp_path / "warp.nii.gz").T
    inner = det[4:-4, 4:-4, 4:-4]  # away from the one-sided differences at the border
    np.testing.assert_allclose(inner, s**3, rtol=1e-4)
    lj = log_jacobian(inner, 2 * np.eye(3))
    np.testing.assert_allclose(lj, 3 * np.log(s) + np.log(8), rtol=1e-4)


def test_log_jacobian_folding_is_not_finite():
    assert not np.isfinite(log_jacobian(np.array([0.0, -1.0]))).any()


def test_jacobian_volumes_integrate_exp_log_jacobian():
    """Label 1 (10 voxels) grown by 10 %, label 2 (5 voxels) kept, 2 mm^3 voxels."""
    dseg = np.zeros((5, 5, 5), int)
    dseg.flat[:10] = 1
    dseg.flat[10:15] = 2
    lj = np.zeros(dseg.shape)
    lj[dseg == 1] = np.log(1.1)
    table = pd.DataFrame({"index": [1, 2, 3], "name": ["a", "b", "absent"]})
    v = jacobian_volumes(lj, dseg, table, 2.0).set_index("name")
    assert v.loc["a", "volume_mm3"] == pytest.approx(22.0)
    assert v.loc["b", "volume_mm3"] == pytest.approx(10.0)
    assert v.loc["absent", "volume_mm3"] == 0.0
    assert v.loc["total_brain", "volume_mm3"] == pytest.approx(32.0)
    assert v.loc["total_GM", "volume_mm3"] == 0.0
    assert v.loc["a", "mean_log_jacobian"] == pytest.approx(np.log(1.1))


def test_annualised_percent_known_volumes():
    pct, rate = annualised_percent(1000.0, 980.0, 60.0, 62.0)
    assert float(pct) == pytest.approx(-2.0) and float(rate) == pytest.approx(-1.0)
    pct, rate = annualised_percent(1000.0, 980.0, 720.0, 744.0, "months")
    assert float(rate) == pytest.approx(-1.0)
    pct, rate = annualised_percent(1000.0, 1010.0, 30.0, 30.0)
    assert float(pct) == pytest.approx(1.0) and np.isnan(rate)


def test_change_table_consecutive_from_first_and_failed_sessions():
    vols = pd.DataFrame(
        {
            "subject": "01",
            "session": ["1", "2", "3"],
            "age": [60.0, 61.0, 63.0],
            "method": "jacobian",
            "name": "brain",
            "volume_mm3": [1000.0, 990.0, 970.0],
            "reason": ["", "", ""],
        }
    )
    t = change_table(vols).set_index(["comparison", "session_to"])
    assert t.loc[("consecutive", "3"), "change_mm3"] == pytest.approx(-20.0)
    assert t.loc[("consecutive", "3"), "annualised_pct_per_year"] == pytest.approx(
        -100 * 20 / 990 / 2
    )
    assert t.loc[("from_first", "3"), "change_pct"] == pytest.approx(-3.0)
    assert t.loc[("from_first", "3"), "interval_years"] == pytest.approx(3.0)
    vols.loc[1, "reason"] = "registration failed"
    t = change_table(vols).set_index(["comparison", "session_to"])
    assert np.isnan(t.loc[("consecutive", "2"), "change_pct"])
    assert t.loc[("consecutive", "3"), "reason"] == "registration failed"
    assert t.loc[("from_first", "3"), "change_pct"] == pytest.approx(-3.0)


def test_mixedlm_recovers_the_slope():
    """40 subjects x 4 visits, slope -5 mm^3/year, random intercepts (sd 100) and slopes
    (sd 1), noise sd 5: the estimate's 95 % CI holds -5 and it is within 0.6 of it (about
    three standard errors: SE ~ sqrt(1/40 + 25/(40*sum (t - tbar)^2)) ~ 0.2)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        b0, b1, a0 = 1000 + rng.normal(0, 100), -5 + rng.normal(0, 1), rng.uniform(50, 80)
        for t in range(4):
            age = a0 + 1.5 * t
            rows.append((f"s{i}", age, b0 + b1 * (age - 65) + rng.normal(0, 5)))
    data = pd.DataFrame(rows, columns=["subject", "age", "volume_mm3"])
    fit = fit_volume_age(data, "brain").set_index("term")
    assert fit.loc["age", "ci_low"] < -5 < fit.loc["age", "ci_high"]
    assert fit.loc["age", "estimate"] == pytest.approx(-5, abs=0.6)
    assert fit.loc["age", "n_subjects"] == 40


def test_mixedlm_without_age_spread_is_reported_not_fitted():
    data = pd.DataFrame({"subject": ["a", "a", "b", "b"], "age": 30.0, "volume_mm3": 1.0})
    fit = fit_volume_age(data, "brain")
    assert len(fit) == 1 and np.isnan(fit.estimate.iloc[0])
    assert "different ages" in fit.note.iloc[0]


def _bids(tmp_path, sessions_tsv=None, participants_age=70, scans=None):
    root = tmp_path / "bids"
    (root / "sub-01").mkdir(parents=True)
    (root / "participants.tsv").write_text(f"participant_id\tage\nsub-01\t{participants_age}\n")
    if sessions_tsv is not None:
        (root / "sub-01" / "sub-01_sessions.tsv").write_text(sessions_tsv)
    for ses, when in (scans or {}).items():
        d = root / "sub-01" / f"ses-{ses}"
        d.mkdir()
        (d / f"sub-01_ses-{ses}_scans.tsv").write_text(
            f"filename\tacq_time\nanat/sub-01_ses-{ses}_T1w.nii.gz\t{when}\n"
        )
    images = pd.DataFrame({"subject": "01", "session": ["1", "2"], "age": float(participants_age)})
    return root, images


def test_session_ages_from_sessions_tsv(tmp_path):
    root, images = _bids(tmp_path, "session_id\tage\nses-1\t70.5\nses-2\t72\n")
    assert list(session_ages(root, images)) == [70.5, 72.0]


def test_session_ages_fallback_acq_time_in_weeks(tmp_path):
    """participants.tsv age is the age at the first acq_time; 14 days later = +2 weeks."""
    scans = {"1": "2020-01-01T10:00:00", "2": "2020-01-15T10:00:00"}
    root, images = _bids(tmp_path, None, 100, scans)
    ages = session_ages(root, images, time_unit="weeks")
    np.testing.assert_allclose(ages, [100.0, 102.0])


def test_session_without_age_names_the_file(tmp_path):
    root, images = _bids(tmp_path, "session_id\tage\nses-1\t70\nses-2\tn/a\n")
    images["age"] = np.nan
    with pytest.raises(InputError, match=r"sub-01_sessions\.tsv.*ses-2.*require_age"):
        session_ages(root, images)
    assert np.isnan(session_ages(root, images, require_age=False).iloc[1])


def test_malformed_age_and_acq_time_name_the_file(tmp_path):
    root, images = _bids(tmp_path, "session_id\tage\nses-1\tseventy\nses-2\t71\n")
    with pytest.raises(InputError, match=r"sub-01_sessions\.tsv.*'seventy'"):
        session_ages(root, images)
    root, images = _bids(tmp_path / "b", None, 70, {"1": "yesterday", "2": "2020-01-01"})
    with pytest.raises(InputError, match=r"sub-01_ses-1_scans\.tsv.*acq_time"):
        session_ages(root, images)


def test_plan_auto_true_and_single_session_subjects(tmp_path):
    root, _ = _bids(tmp_path, "session_id\tage\nses-1\t70\nses-2\t71\n")
    f = tmp_path / "t1.nii.gz"
    f.write_bytes(b"a")
    g = tmp_path / "t2.nii.gz"
    g.write_bytes(b"b")
    images = pd.DataFrame(
        {
            "subject": ["01", "01", "02"],
            "session": ["1", "2", "1"],
            "img": ["sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-1"],
            "subdir": ["sub-01/ses-1", "sub-01/ses-2", "sub-02/ses-1"],
            "path": [str(f), str(g), str(g)],
            "age": [70.0, 70.0, 50.0],
            "sex": None,
        }
    )
    plan = plan_longitudinal(LCFG, images, root)
    assert plan.subjects == ["01"] and plan.single == ["02"] and plan.identical == []
    assert list(plan.sessions.age) == [70.0, 71.0]
    assert plan_longitudinal(LCFG, images[images.subject == "02"], root) is None
    with pytest.raises(InputError, match="longitudinal.enabled"):
        plan_longitudinal(LCFG | {"enabled": True}, images[images.subject == "02"], root)
    images.loc[1, "path"] = str(f)
    assert plan_longitudinal(LCFG, images, root).identical == ["01"]


def test_sst_iterations_rigid_affine_syn():
    tcfg = {"affine": {"affine_metric": "mattes"}, "syn": {"metric": "CC"}}
    assert [sst_stage(k, LCFG) for k in range(4)] == ["rigid", "affine", "syn", "syn"]
    assert sst_params(0, LCFG, tcfg)["transform"] == "Rigid"
    assert sst_params(1, LCFG, tcfg)["transform"] == "Affine"
    p = sst_params(3, LCFG, tcfg)
    assert p["transform"] == "SyN" and p["metric"] == "CC" and p["affine_metric"] == "mattes"
    with pytest.raises(InputError, match="longitudinal.sst.syn_iterations"):
        plan_longitudinal(LCFG | {"sst": {"affine_iterations": 1, "syn_iterations": 0}}, None, ".")


def test_figures_are_written(tmp_path):
    from atlas import qc

    vols = pd.DataFrame(
        {
            "subject": ["a", "a", "b", "b"],
            "age": [60.0, 62.0, 70.0, 71.0],
            "name": "total_brain",
            "volume_mm3": [1.1e6, 1.09e6, 1.0e6, 0.995e6],
        }
    )
    model = fit_volume_age(vols, "total_brain")
    qc.plot_trajectories(vols, model, ["total_brain"], tmp_path / "t.png")
    rng = np.random.default_rng(0)
    qc.log_jacobian_map(rng.normal(0, 0.01, (8, 9, 10)), np.ones((8, 9, 10)), tmp_path / "j.png")
    assert (tmp_path / "t.png").stat().st_size > 5000 and (tmp_path / "j.png").stat().st_size > 5000


def test_jobs_are_keyword_only_and_every_rule_step_names_one():
    import inspect
    import re
    from pathlib import Path

    from atlas.longitudinal import jobs

    for name in jobs.__all__:
        params = inspect.signature(getattr(jobs, name)).parameters.values()
        assert all(p.kind is p.KEYWORD_ONLY for p in params), name
    rules = (Path(__file__).parents[2] / "workflow/rules/longitudinal.smk").read_text()
    assert set(re.findall(r'step="longitudinal\.(\w+)"', rules)) == set(jobs.__all__)


def test_sst_syn_settings_override_the_template():
    tcfg = {"affine": {}, "syn": {"metric": "CC", "iterations": [40, 20, 0]}}
    lcfg = {"sst": {"affine_iterations": 1, "syn_iterations": 1, "syn": {"iterations": [1, 2, 3]}}}
    p = sst_params(1, lcfg, tcfg)
    assert p["iterations"] == [1, 2, 3] and p["metric"] == "CC"


def test_simulated_shrink_has_the_stated_jacobian():
    """The simulation's displacement has Jacobian ``(1 - p)^-1`` inside the structure's
    ball (the follow-up structure is ``p`` % smaller) and ``(1 - b)^-1`` far from it; a
    label missing from the labels is an error. Central differences are exact for the
    linear field inside the ball."""
    from atlas.longitudinal.simulate import shrink_displacement
    from atlas.metrics import jacobian_determinant

    lab = np.zeros((60, 60, 60), int)
    lab[5:55, 5:55, 5:55] = 1
    lab[12:18, 14:20, 12:16] = 2  # the structure, far from the domain's edge
    u, true_s, true_b = shrink_displacement(lab, (2.0, 2.0, 2.0), 2, 5.0, brain_pct=1.0)
    assert true_s == pytest.approx(-5.0) and true_b == pytest.approx(-1.0)
    det = jacobian_determinant(u * 2.0, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(det[lab == 2], 1 / 0.95, rtol=1e-9)
    assert det[45, 45, 45] == pytest.approx(1 / 0.99, rel=1e-9)
    with pytest.raises(ValueError, match="label 7"):
        shrink_displacement(lab, (2.0, 2.0, 2.0), 7, 5.0)


def test_sst_registrations_use_the_longitudinal_backend_and_greedy_block():
    """``longitudinal.backend`` (default ants, not ``template.backend``) and
    ``longitudinal.greedy`` reach every SST registration and the SST -> template one; the
    latter runs the template's last (full-schedule) iteration settings."""
    tcfg = {
        "affine_iterations": 1,
        "syn_iterations": 2,
        "backend": "greedy",
        "greedy": {"metric": "WNCC", "iterations": [9, 9, 9]},
        "affine": {"affine_metric": "mattes"},
        "syn": {"metric": "CC", "iterations": [40, 20, 10]},
    }
    assert backend(LCFG) == "ants" and backend(LCFG | {"backend": "greedy"}) == "greedy"
    for k in range(4):
        assert sst_params(k, LCFG, tcfg)["greedy"] == {}  # {} = greedy's DEFAULTS
    lcfg = LCFG | {"greedy": {"iterations": [5, 5, 0]}}
    assert sst_params(3, lcfg, tcfg)["greedy"] == {"iterations": [5, 5, 0]}
    p = sst_to_template_params(lcfg, tcfg)
    assert p["transform"] == "SyN" and p["iterations"] == [40, 20, 10]  # not coarse
    assert p["greedy"] == {"iterations": [5, 5, 0]}
    assert sst_to_template_params(LCFG, tcfg)["greedy"] == {}


def test_sst_atlases_exclude_every_session_of_the_subject(tmp_path):
    """An SST is labelled by the atlases allowed for all its sessions: never an atlas of
    the same subject (a rescan) nor one of its scans; None without atlases (template
    labels); a subject left without atlases is an error naming segmentation.atlases."""
    from types import SimpleNamespace

    root = tmp_path / "bids"
    root.mkdir()
    paths = {n: tmp_path / f"{n}.nii.gz" for n in ("s1", "s2", "t1", "t2", "x")}
    sessions = pd.DataFrame(
        {
            "subject": ["01", "01", "02", "02"],
            "session": ["1", "2", "1", "2"],
            "img": ["sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-1", "sub-02_ses-2"],
            "path": [str(paths[n]) for n in ("s1", "s2", "t1", "t2")],
        }
    )
    labelled = pd.DataFrame(
        {
            "id": ["sub-01_ses-1", "sub-09_ses-1", "ext", "sub-07_ses-1"],
            "subject": ["01", "09", None, "07"],
            "dataset": [str(root.resolve())] * 2 + [None, str(root.resolve())],
            "t1w": [str(paths["x"]), str(paths["x"]), str(paths["t2"]), str(paths["x"])],
            "role": ["atlas", "atlas", "atlas", "test"],
        }
    )
    long = LongitudinalPlan(sessions)
    got = sst_atlases(SimpleNamespace(labelled=labelled), long, root)
    # 01: its own rescan's atlas excluded; 02: the external atlas is its ses-2 file
    assert got == {"01": ["sub-09_ses-1", "ext"], "02": ["sub-01_ses-1", "sub-09_ses-1"]}
    assert sst_atlases(None, long, root) is None
    assert sst_atlases(SimpleNamespace(labelled=labelled), None, root) is None
    only = labelled.iloc[[0, 3]]
    with pytest.raises(InputError, match="segmentation.atlases.*sub-01"):
        sst_atlases(SimpleNamespace(labelled=only), long, root)


def test_session_job_label_routes_agree_under_identity_transforms(tmp_path):
    """The session job measures with the SST's own labels (atlas route: carried SST ->
    session) or the template's (carried template -> SST -> session); with identity
    transforms and one grid both give the input labels and the same volumes; exactly one
    label source must be given."""
    from atlas.io import write_nifti
    from atlas.longitudinal import jobs
    from atlas.registration.transforms import write_affine_ras, write_warp

    n, ras = 20, np.diag([2.0, 2.0, 2.0, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1)
    r = np.linalg.norm(grid - n / 2, axis=-1)
    image = write_nifti(np.where(r < 7, 100 + 10 * np.cos(r), 0.0), ras, tmp_path / "i.nii.gz")
    dseg = write_nifti((r < 4).astype(float) + 2 * ((r >= 4) & (r < 7)), ras, tmp_path / "d.nii.gz")
    (tmp_path / "t.tsv").write_text("index\tname\tclass\n1\tcore\tGM\n2\tshell\tWM\n")
    aff = write_affine_ras(np.eye(4), tmp_path / "a.mat")
    warp = write_warp(np.zeros((n, n, n, 3)), ras, tmp_path / "w.nii.gz")
    files = dict(
        image=image, affine=aff, warp=warp, inverse_warp=warp, sst=image, sst_affine=aff,
        sst_warp=warp, sst_inverse_warp=warp, template=image, label_table=tmp_path / "t.tsv",
        img="sub-01_ses-1", min_ncc=0.5,
    )  # fmt: skip
    vols = {}
    for route in ("template_dseg", "sst_dseg"):
        out = {
            f"out_{k}": tmp_path / route / f"{k}.nii.gz"
            for k in ("affine", "warp", "inverse_warp", "warped", "dseg", "logjacobian")
        }
        out |= {f"out_{k}": tmp_path / route / f"{k}.tsv" for k in ("volumes", "qc")}
        jobs.session(**files, **out, **{route: dseg})
        written = nib.load(out["out_dseg"]).get_fdata()
        np.testing.assert_array_equal(written, nib.load(dseg).get_fdata())
        vols[route] = pd.read_csv(out["out_volumes"], sep="\t")
    pd.testing.assert_frame_equal(vols["template_dseg"], vols["sst_dseg"])
    jac = vols["sst_dseg"].set_index(["method", "name"]).volume_mm3
    assert jac["jacobian", "core"] == pytest.approx(jac["labels", "core"], rel=1e-4)
    with pytest.raises(ValueError, match="exactly one"):
        jobs.session(**files, **out)
