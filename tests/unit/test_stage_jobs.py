"""Job functions of the preprocessing, template and provenance rules, chained on a tiny
demo cohort (3 synthetic subjects at 6 mm) as the workflow chains them."""

import json

import ants
import numpy as np
import pandas as pd
import pytest

from atlas import demo
from atlas.bids import find_t1w
from atlas.preprocess import jobs as pjobs
from atlas.preprocess.plan import preprocess_settings
from atlas.registration import set_determinism
from atlas.registration.jobs import register_to_template
from atlas.template import jobs as tjobs
from atlas.template.plan import check_template_config, stage, stage_params

AFFINE = {
    "affine_metric": "mattes",
    "affine_metric_param": 16,
    "affine_iterations": [100, 50],
    "affine_shrink_factors": [2, 1],
    "affine_smoothing_sigmas": [1, 0],
}
TEMPLATE = {
    "name": "tiny",
    "affine_iterations": 1,
    "syn_iterations": 1,
    "average": "mean",
    "affine": AFFINE,
    "syn": {"metric": "CC", "metric_param": 2, "iterations": [20, 10]},
}
CONFIG = {
    "resolution": 6.0,
    "skull_strip": "skip",
    "skull_strip_template": {"head": None, "mask": None},
    "intensity_normalisation": "percentile",
    "brain_only_max_volume_ml": 2500,
    "fov_margin_mm": 12.0,
    "seed": 1,
    "reference": "MNI152NLin2009aSym",
    "template": TEMPLATE,
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Reference grid, one demo subject through the preprocess job, and three synthetic
    subjects (random smooth warps, pose and size of the reference, as the demo makes them)
    standing in for preprocessed images, normalised by the normalise job."""
    set_determinism(seed=1, threads=1)
    tmp = tmp_path_factory.mktemp("jobs")
    images = find_t1w(demo.make_demo_bids(tmp / "bids", n_subjects=1, seed=0, spacing_mm=6.0))
    ref, ref_mask = tmp / "ref.nii.gz", tmp / "ref_mask.nii.gz"
    pjobs.reference(
        out_image=ref,
        out_mask=ref_mask,
        reference="MNI152NLin2009aSym",
        reference_mask=None,
        resolution=6.0,
        margin_mm=12.0,
    )
    out = {k: tmp / f"demo_{k}" for k in ("pre.nii.gz", "mask.nii.gz", "pre.json")}
    pjobs.preprocess(
        t1w=images.path[0],
        reference_image=ref,
        out_image=out["pre.nii.gz"],
        out_mask=out["mask.nii.gz"],
        out_json=out["pre.json"],
        settings=preprocess_settings(CONFIG),
    )
    reference = ants.image_read(str(ref))
    rng = np.random.default_rng(0)
    participants = pd.DataFrame(
        {"img": [f"sub-{i}" for i in "abc"], "subject": list("abc"), "session": None}
    ).assign(age=[30.0, 50.0, 70.0], sex=["F", "M", "F"])
    files = {"ref": ref, "tmp": tmp, "images": participants, "demo": out}
    files |= {"pre": [], "masks": [], "affine": [], "normalised": []}
    for img, age in zip(participants.img, participants.age, strict=True):
        arr = demo.synthetic_subject(reference.numpy(), 6.0, age, rng).astype("float32")
        files["pre"].append(tmp / f"{img}_pre.nii.gz")
        files["masks"].append(tmp / f"{img}_mask.nii.gz")
        ants.image_write(reference.new_image_like(arr), str(files["pre"][-1]))
        ants.image_write(
            reference.new_image_like((arr > 0.05).astype("float32")), str(files["masks"][-1])
        )
        files["affine"].append(tmp / f"{img}_to-ref.mat")
        files["normalised"].append(tmp / f"{img}_space-ref.nii.gz")
        pjobs.normalise(
            image=files["pre"][-1],
            reference_image=ref,
            out_affine=files["affine"][-1],
            out_warped=files["normalised"][-1],
            rigid_only=False,
            affine_params=AFFINE,
        )
    return files


def test_preprocess_outputs(cohort):
    info = json.loads(cohort["demo"]["pre.json"].read_text())
    assert info["skull_strip"] == "skip" and info["Sources"][0].endswith("_T1w.nii.gz")
    img = ants.image_read(str(cohort["demo"]["pre.nii.gz"]))
    assert img.spacing == pytest.approx((6.0, 6.0, 6.0))
    assert 0 <= img.min() and img.max() <= 1


def test_normalisation_aligns_subjects_to_the_reference(cohort):
    from atlas.metrics import ncc

    ref = ants.image_read(str(cohort["ref"]))
    m = ref.numpy() > 0
    for pre, warped in zip(cohort["pre"], cohort["normalised"], strict=True):
        moved = ants.image_read(str(warped))
        assert moved.shape == ref.shape
        before = ants.image_read(str(pre)).numpy()
        # the subjects are warped, rotated, shifted and scaled copies of the reference: the
        # affine normalisation must bring them closer than their raw placement
        assert ncc(moved.numpy(), ref.numpy(), m) > ncc(before, ref.numpy(), m) + 0.02


def test_cohort_reference_normalises_rigidly(cohort, tmp_path):
    """``reference: cohort`` stops at the rigid stage: the affine is a rotation (no scaling
    or shear), so the template's affine iterations find the cohort's own size."""
    from atlas.registration import read_affine_ras

    pjobs.normalise(
        image=cohort["pre"][2],
        reference_image=cohort["ref"],
        out_affine=tmp_path / "rigid.mat",
        out_warped=tmp_path / "rigid.nii.gz",
        rigid_only=True,
        affine_params=AFFINE,
    )
    rigid = read_affine_ras(tmp_path / "rigid.mat")[:3, :3]
    np.testing.assert_allclose(rigid @ rigid.T, np.eye(3), atol=1e-5)
    full = read_affine_ras(cohort["affine"][2])[:3, :3]
    # the third subject (70 y) is 10 % smaller than the reference: the full affine scales
    assert abs(np.linalg.det(full) - 1.0) > 0.05


def test_template_iterations_and_final_outputs(cohort):
    tmp, imgs = cohort["tmp"], list(cohort["images"].img)
    check_template_config(TEMPLATE)
    t0 = tmp / "iter-0.nii.gz"
    tjobs.init(images=cohort["normalised"], out_template=t0, average="mean")
    templates, rows = [t0], []
    for k in range(2):
        params = stage_params(k, TEMPLATE)
        syn = stage(k, TEMPLATE["affine_iterations"]) == "syn"
        out = {
            i: {n: tmp / f"k{k}_{i}_{n}" for n in ("a.mat", "w.nii.gz", "iw.nii.gz", "wd.nii.gz")}
            for i in imgs
        }
        for i, pre, aff in zip(imgs, cohort["pre"], cohort["affine"], strict=True):
            register_to_template(
                template=templates[-1],
                image=pre,
                initial_affine=aff,
                out_affine=out[i]["a.mat"],
                out_warped=out[i]["wd.nii.gz"],
                params=params,
                out_warp=out[i]["w.nii.gz"] if syn else None,
                out_inverse_warp=out[i]["iw.nii.gz"] if syn else None,
            )
        templates.append(tmp / f"iter-{k + 1}.nii.gz")
        rows.append(tmp / f"conv-{k + 1}.tsv")
        tjobs.update(
            template=templates[-2],
            warped=[out[i]["wd.nii.gz"] for i in imgs],
            affines=[out[i]["a.mat"] for i in imgs],
            warps=[out[i]["w.nii.gz"] for i in imgs] if syn else [],
            out_template=templates[-1],
            out_row=rows[-1],
            iteration=k,
            stage=stage(k, 1),
            average="mean",
            gradient_step=0.2,
            do_sharpen=True,
        )
    final_rows, warped_subjects, warped_masks = [], [], []
    for i, pre, mask in zip(imgs, cohort["pre"], cohort["masks"], strict=True):
        names = ("a.mat", "w.nii.gz", "iw.nii.gz", "img.nii.gz", "mask.nii.gz", "row.tsv")
        f = {n: tmp / f"final_{i}_{n}" for n in names}
        tjobs.subject_final(
            template=templates[-1],
            affine=out[i]["a.mat"],
            warp=out[i]["w.nii.gz"],
            inverse_warp=out[i]["iw.nii.gz"],
            image=pre,
            mask=mask,
            out_affine=f["a.mat"],
            out_warp=f["w.nii.gz"],
            out_inverse_warp=f["iw.nii.gz"],
            out_warped=f["img.nii.gz"],
            out_mask=f["mask.nii.gz"],
            out_row=f["row.tsv"],
            img=i,
        )
        final_rows.append(f["row.tsv"])
        warped_subjects.append(f["img.nii.gz"])
        warped_masks.append(f["mask.nii.gz"])
    out = {n: tmp / "tpl" / n for n in ("T1w.nii.gz", "mask.nii.gz", "desc.json", "conv.tsv")}
    out |= {n: tmp / "tpl" / n for n in ("subj.tsv", "var.nii.gz", "m.png", "c.png", "s.png")}
    tjobs.final(
        templates=templates,
        masks=warped_masks,
        subject_rows=final_rows,
        convergence_rows=rows,
        warped=warped_subjects,
        participants=cohort["images"],
        config=CONFIG,
        res_label="6",
        out_template=out["T1w.nii.gz"],
        out_mask=out["mask.nii.gz"],
        out_description=out["desc.json"],
        out_convergence=out["conv.tsv"],
        out_subjects=out["subj.tsv"],
        out_variance=out["var.nii.gz"],
        out_fig_mosaic=out["m.png"],
        out_fig_convergence=out["c.png"],
        out_fig_subjects=out["s.png"],
    )
    conv = pd.read_csv(out["conv.tsv"], sep="\t")
    assert conv.stage.tolist() == ["affine", "syn"] and conv.mean_warp_mm.isna().tolist() == [
        True,
        False,
    ]
    subj = pd.read_csv(out["subj.tsv"], sep="\t")
    assert subj.img.tolist() == imgs and (subj.ncc > 0.8).all()
    assert (subj.pct_nonpositive_jacobian == 0).all()  # SyN is diffeomorphic
    desc = json.loads(out["desc.json"].read_text())
    assert desc["cohort_size"] == 3 and desc["res"]["6"]["zooms"] == [6.0, 6.0, 6.0]
    mask = ants.image_read(str(out["mask.nii.gz"])).numpy()
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert all(out[n].stat().st_size > 0 for n in ("m.png", "c.png", "s.png"))


def test_template_plan():
    assert [stage(k, 2) for k in range(4)] == ["affine", "affine", "syn", "syn"]
    assert stage_params(0, TEMPLATE)["transform"] == "Affine"
    syn = stage_params(1, TEMPLATE)
    assert syn["transform"] == "SyN" and syn["iterations"] == [20, 10]
    assert syn["affine_metric_param"] == 16
    # coarse to fine: SyN iterations before the last skip the finest level (both engines)
    three = dict(TEMPLATE, syn_iterations=2, greedy={"iterations": [60, 30, 10]})
    early, last = stage_params(1, three), stage_params(2, three)
    assert early["iterations"] == [20, 0] and early["greedy"]["iterations"] == [60, 30, 0]
    assert last["iterations"] == [20, 10] and last["greedy"]["iterations"] == [60, 30, 10]
    flat = stage_params(1, dict(three, coarse_to_fine=False))
    assert flat["iterations"] == [20, 10] and flat["greedy"]["iterations"] == [60, 30, 10]
    assert three["greedy"]["iterations"] == [60, 30, 10]  # the config is not modified
    from atlas.io import InputError

    with pytest.raises(InputError, match="template.syn_iterations"):
        check_template_config(dict(TEMPLATE, syn_iterations=0))
