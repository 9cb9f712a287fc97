"""Job functions of the learned-atlas rules (atlas.learn.jobs), chained on a tiny synthetic
3D cohort (3 subjects, 16^3 voxels of 4 mm) and a tiny 2D BIDS dataset, as the workflow
chains them; a few training steps only (wiring and file conventions, not quality)."""

import json

import ants
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from atlas.learn import AARN, LearnedAtlas
from atlas.learn import jobs as ljobs
from atlas.learn.plan import iterative_registration_params
from atlas.registration import set_determinism

torch.set_num_threads(1)

SHAPE = (16, 16, 16)
GRID = np.diag([4.0, 4.0, 4.0, 1.0])
GRID[:3, 3] = -30.0
AGES = [20.0, 40.0, 60.0]
HYPER = {
    "steps": 3,
    "enc": [8, 8, 8],
    "dec": [8, 8, 8],
    "template_hidden": 8,
    "template_channels": 4,
    "batch_size": 2,
    "lr": 1e-2,
    "checkpoint_every": 2,
    "log_every": 1,
}
TEMPLATE = {
    "affine_iterations": 1,
    "syn_iterations": 1,
    "affine": {
        "affine_metric": "mattes",
        "affine_metric_param": 16,
        "affine_iterations": [20, 10],
        "affine_shrink_factors": [2, 1],
        "affine_smoothing_sigmas": [1, 0],
    },
    "syn": {"metric": "CC", "metric_param": 2, "iterations": [10, 5]},
}


def _blob(radius: float, rng) -> np.ndarray:
    grid = np.indices(SHAPE, dtype=float) - (np.array(SHAPE)[:, None, None, None] - 1) / 2
    inside = np.sqrt((grid**2).sum(0)) < radius
    texture = ndimage.gaussian_filter(rng.random(SHAPE), 1.0)
    return ndimage.gaussian_filter(inside * (0.5 + texture), 0.7).astype(np.float32)


def _save(array, path, affine=GRID):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny model and the files of a 3-subject run (normalised images on the
    reference grid, brain mask, native labels with identity normalisation affines)."""
    set_determinism(seed=1, threads=1)
    tmp = tmp_path_factory.mktemp("learned_jobs")
    rng = np.random.default_rng(0)
    files = {"tmp": tmp, "images": [], "labels": [], "normalisation": []}
    identity = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    for i, age in enumerate(AGES):
        image = _blob(4.0 + age / 20, rng)
        files["images"].append(_save(image, tmp / f"sub-{i}_norm.nii.gz"))
        labels = ((image > 0.3) * (1 + (np.indices(SHAPE)[0] >= 8))).astype(np.int16)
        files["labels"].append(_save(labels, tmp / f"sub-{i}_dseg.nii.gz"))
        ants.write_transform(identity, str(tmp / f"sub-{i}_xfm.mat"))
        files["normalisation"].append(tmp / f"sub-{i}_xfm.mat")
    files["reference"] = files["images"][1]
    mask = np.sqrt(((np.indices(SHAPE) - 7.5) ** 2).sum(0)) < 7
    files["mask"] = _save(mask.astype(np.uint8), tmp / "mask.nii.gz")
    files["model"] = tmp / "out" / "model.pt"
    ljobs.train_atlas(
        out_model=files["model"],
        out_losses=tmp / "out" / "losses.tsv",
        out_loss_curve=tmp / "out" / "loss.png",
        hyper=HYPER,
        checkpoint_dir=tmp / "train",
        device="cpu",
        age_units="years",
        threads=1,
        images=files["images"],
        ages=AGES,
        sex=["F", "M", "n/a"],
        subjects=["sub-0", "sub-1", "sub-2"],
    )
    return files


def test_train_atlas_publishes_a_model_that_loads_as_weights_only(run):
    tmp = run["tmp"]
    ckpt = torch.load(run["model"], weights_only=True)  # data only, no pickled code
    assert ckpt["meta"]["shape"] == list(SHAPE)
    assert ckpt["meta"]["age_range"] == [20.0, 60.0]
    assert LearnedAtlas(run["model"]).shape == SHAPE
    assert len(pd.read_csv(tmp / "out" / "losses.tsv", sep="\t")) == HYPER["steps"]
    assert (tmp / "out" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert torch.load(tmp / "train" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_job_functions_reject_unknown_or_missing_arguments(run, tmp_path):
    with pytest.raises(TypeError, match="bogus"):
        ljobs.fit_age_affines(
            affines=[],
            out_aarn=tmp_path / "a.pt",
            out_table=tmp_path / "a.tsv",
            ages=[],
            sample_ages=[],
            age_units="years",
            seed=0,
            bogus=1,
        )
    with pytest.raises(TypeError):
        ljobs.evaluate(mask=run["mask"])  # keyword-only, outputs missing
    with pytest.raises(ValueError, match="either images"):
        ljobs.train_atlas(
            out_model=tmp_path / "m.pt",
            out_losses=tmp_path / "l.tsv",
            out_loss_curve=tmp_path / "l.png",
            hyper=HYPER,
            checkpoint_dir=tmp_path,
            device="cpu",
            age_units="years",
            threads=1,
        )
    assert not list(tmp_path.iterdir())


def test_fit_age_affines_tabulates_growth_in_months(tmp_path):
    """Normalisation affines scaling the reference by 0.8 at 1 month up to 1.0 at 24 months:
    the tabulated isotropic scale grows with age and stays within 5 % of the truth."""
    months = [1.0, 6.0, 12.0, 18.0, 24.0]
    paths = []
    for k, m in enumerate(months):
        scale = 0.8 + 0.2 * (m - 1) / 23
        tx = ants.create_ants_transform(
            transform_type="AffineTransform", dimension=3, matrix=np.eye(3) * scale
        )
        paths.append(tmp_path / f"{k}.mat")
        ants.write_transform(tx, str(paths[-1]))
    ljobs.fit_age_affines(
        affines=paths,
        out_aarn=tmp_path / "aarn.pt",
        out_table=tmp_path / "aarn.tsv",
        ages=months,
        sample_ages=[1, 24],
        age_units="months",
        seed=0,
    )
    table = pd.read_csv(tmp_path / "aarn.tsv", sep="\t").set_index("age")
    assert list(table.columns[:4]) == ["scale", "log_scale_x", "log_scale_y", "log_scale_z"]
    np.testing.assert_allclose(table.scale[[1, 24]], [0.8, 1.0], rtol=0.05)
    assert AARN.load(tmp_path / "aarn.pt").ndim == 3


def test_sample_atlases_writes_the_template_set_or_nothing(run, tmp_path, monkeypatch):
    aarn = AARN(3)
    with torch.no_grad():
        aarn.mlp[-1].bias[:3] = float(np.log(1.1))  # isotropic scale 1.1 at every age
    aarn.save(tmp_path / "aarn.pt")
    tpl = tmp_path / "tpl-tinyLearned"
    atlases = [tpl / f"cohort-{k}" / f"tpl-tinyLearned_cohort-{k}_res-4_T1w.nii.gz" for k in (1, 2)]
    scaled = [str(p).replace("_T1w", "_desc-agescaled_T1w") for p in atlases]
    kwargs = dict(
        model=run["model"],
        out_description=tpl / "template_description.json",
        out_montage=tmp_path / "montage.png",
        ages=[240, 600],
        age_units="months",
        name="tinyLearned",
        res_label="4",
        threads=1,
        aarn=tmp_path / "aarn.pt",
    )
    with pytest.raises(ValueError, match="age-scaled"):
        ljobs.sample_atlases(out_atlases=atlases, **kwargs)  # out_scaled missing
    assert not tpl.exists()
    titles = []
    draw = ljobs.montage_figure

    def titled(*args):
        figure = draw(*args)
        titles.append([ax.get_title() for ax in figure.axes])
        return figure

    monkeypatch.setattr(ljobs, "montage_figure", titled)
    ljobs.sample_atlases(out_atlases=atlases, out_scaled=scaled, **kwargs)
    assert titles == [["240 mo", "600 mo"]]  # the montage is titled in the configured units
    desc = json.loads((tpl / "template_description.json").read_text())
    assert desc["cohort"] == {
        "1": {"age": [240.0], "units": "months"},
        "2": {"age": [600.0], "units": "months"},
    }
    assert desc["res"]["4"]["shape"] == list(SHAPE)
    assert desc["training"]["steps"] == HYPER["steps"] and "device" not in desc["training"]
    img, big = nib.load(atlases[1]), nib.load(scaled[1])
    np.testing.assert_allclose(img.affine, GRID)
    np.testing.assert_array_equal(big.get_fdata(), img.get_fdata())
    np.testing.assert_allclose(big.affine, np.diag([1.1, 1.1, 1.1, 1.0]) @ GRID, rtol=1e-5)
    expected = LearnedAtlas(run["model"]).templates([50.0])[0][0]
    np.testing.assert_allclose(img.get_fdata(), expected, atol=1e-6)  # batch of 2 vs 1
    assert (tmp_path / "montage.png").read_bytes()[:4] == b"\x89PNG"


def test_registrations_and_evaluation_compare_both_methods(run, tmp_path):
    """One-pass registration to the learned atlas and ANTs SyN to an iterative template,
    with labels, measured by the same code; the evaluation table has one row per method."""
    template = _save(
        np.mean([nib.load(p).get_fdata() for p in run["images"]], 0), tmp_path / "t.nii.gz"
    )
    rows = {"learned": [], "iterative": []}
    warps = {"learned": [], "iterative": []}
    labels = {"learned": [], "iterative": []}
    for i, age in enumerate(AGES[:2]):
        common = dict(
            image=run["images"][i],
            mask=run["mask"],
            img=f"sub-{i}",
            age=age,
            labels=run["labels"][i],
            normalisation=run["normalisation"][i],
            reference=run["reference"],
        )
        for method in rows:
            rows[method].append(tmp_path / f"{method}_{i}.tsv")
            warps[method].append(tmp_path / f"{method}_{i}_warp.nii.gz")
            labels[method].append(tmp_path / f"{method}_{i}_dseg.nii.gz")
        ljobs.register_subject(
            model=run["model"],
            out_warped=tmp_path / f"warped_{i}.nii.gz",
            out_warp=warps["learned"][i],
            out_inverse_warp=tmp_path / f"inverse_{i}.nii.gz",
            out_row=rows["learned"][i],
            out_labels=labels["learned"][i],
            age_units="years",
            threads=1,
            **common,
        )
        ljobs.register_iterative(
            template=template,
            out_warp=warps["iterative"][i],
            out_row=rows["iterative"][i],
            out_labels=labels["iterative"][i],
            params=iterative_registration_params(TEMPLATE),
            **common,
        )
    warp = nib.load(warps["learned"][0])
    assert warp.shape == (*SHAPE, 1, 3) and warp.header.get_intent()[0] == "vector"
    assert set(np.unique(nib.load(labels["iterative"][0]).get_fdata())) <= {0, 1, 2}
    ljobs.evaluate(
        mask=run["mask"],
        learned_rows=rows["learned"],
        iterative_rows=rows["iterative"],
        learned_warps=warps["learned"],
        iterative_warps=warps["iterative"],
        learned_labels=labels["learned"],
        iterative_labels=labels["iterative"],
        out_table=tmp_path / "evaluation.tsv",
        out_subjects=tmp_path / "subjects.tsv",
        learned_name="tinyLearned",
        iterative_name="tiny",
    )
    table = pd.read_csv(tmp_path / "evaluation.tsv", sep="\t")
    assert list(table.method) == ["learned", "iterative"]
    assert list(table.template) == ["tinyLearned", "tiny"]
    assert (table.n_subjects == 2).all() and (table.seconds_per_subject > 0).all()
    assert ((table.dice > 0) & (table.dice <= 1)).all()
    assert (table.centrality_mm <= table.mean_displacement_mm + 1e-9).all()
    assert len(pd.read_csv(tmp_path / "subjects.tsv", sep="\t")) == 4


def _bids_dataset(root):
    """3 subjects of a 2D BIDS dataset (ages 240-480 months) with desc-seg_dseg label maps
    (1 = WM, 2 = CSF, named in ``desc-seg_dseg.tsv``)."""
    rng = np.random.default_rng(3)
    rows = []
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    for i in range(3):
        anat = root / f"sub-{i}" / "anat"
        anat.mkdir(parents=True)
        image = _blob(5 + i, rng)[:, :, 8:9]
        _save(image, anat / f"sub-{i}_acq-slice_desc-norm_T1w.nii.gz", affine)
        seg = (image > 0.3).astype(np.int16) + (image > 0.9)
        _save(seg, anat / f"sub-{i}_acq-slice_desc-seg_dseg.nii", affine)
        rows.append({"participant_id": f"sub-{i}", "age": 240 + 120 * i, "sex": "F"})
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    (root / "desc-seg_dseg.tsv").write_text("index\tname\n1\tWhite-Matter\n2\tCSF\n")


def test_gan_tissue_atlas_from_a_bids_dataset_writes_tissue_maps(tmp_path):
    """GAN + tissue variant through the jobs: tissue maps from the dataset's label table,
    written per age as label-<tissue>_probseg, dseg and the dseg.tsv."""
    _bids_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    ljobs.train_atlas(
        out_model=out / "model.pt",
        out_losses=out / "losses.tsv",
        out_loss_curve=out / "loss.png",
        hyper=dict(HYPER, tissue_weight=1.0, adversarial=True, disc_channels=[4, 8]),
        checkpoint_dir=tmp_path / "train",
        device="cpu",
        age_units="months",
        threads=1,
        participants=tmp_path / "bids" / "participants.tsv",
        image_suffix="desc-norm_T1w",
        tissue_suffix="desc-seg_dseg",
    )
    assert "discriminator" in pd.read_csv(out / "losses.tsv", sep="\t")
    tpl = out / "tpl-dsLearned"
    stem = [tpl / f"cohort-{k}" / f"tpl-dsLearned_cohort-{k}_res-1" for k in (1, 2)]
    probseg = [f"{s}_label-{t}_probseg.nii.gz" for s in stem for t in ("WM", "CSF")]
    kwargs = dict(
        model=out / "model.pt",
        out_description=tpl / "template_description.json",
        out_montage=out / "montage.png",
        out_atlases=[f"{s}_T1w.nii.gz" for s in stem],
        ages=[240, 480],
        age_units="months",
        name="dsLearned",
        res_label="1",
        threads=1,
    )
    with pytest.raises(ValueError, match="probseg"):
        ljobs.sample_atlases(**kwargs)  # tissue outputs missing
    ljobs.sample_atlases(
        **kwargs,
        out_probseg=probseg,
        out_tissue_dseg=[f"{s}_dseg.nii.gz" for s in stem],
        out_tissue_table=tpl / "tpl-dsLearned_dseg.tsv",
    )
    wm, csf = (nib.load(p).get_fdata() for p in probseg[2:])
    dseg = np.asarray(nib.load(f"{stem[1]}_dseg.nii.gz").dataobj)
    assert wm.shape == dseg.shape == (16, 16, 1) and wm.min() >= 0 and (wm + csf).max() <= 1
    assert set(np.unique(dseg)) <= {0, 1, 2}
    assert (tpl / "tpl-dsLearned_dseg.tsv").read_text() == "index\tname\n1\tWM\n2\tCSF\n"


def test_train_atlas_from_a_bids_dataset_with_labels(tmp_path):
    """Dataset source (participants.tsv input): a 2D BIDS cohort with label maps, ages in
    months; the sampled template carries learned label maps."""
    _bids_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    ljobs.train_atlas(
        out_model=out / "model.pt",
        out_losses=out / "losses.tsv",
        out_loss_curve=out / "loss.png",
        hyper=dict(HYPER, dice_weight=1.0),
        checkpoint_dir=tmp_path / "train",
        device="cpu",
        age_units="months",
        threads=1,
        participants=tmp_path / "bids" / "participants.tsv",
        image_suffix="desc-norm_T1w",
        label_suffix="desc-seg_dseg",
    )
    atlas = LearnedAtlas(out / "model.pt")
    assert atlas.shape == (16, 16) and atlas.disk_shape == (16, 16, 1)
    assert atlas.meta["age_range"] == [20.0, 40.0] and atlas.meta["n_labels"] == 3
    tpl = out / "tpl-dsLearned" / "cohort-1"
    ljobs.sample_atlases(
        model=out / "model.pt",
        out_description=out / "tpl-dsLearned" / "template_description.json",
        out_montage=out / "montage.png",
        out_atlases=[tpl / "tpl-dsLearned_cohort-1_res-1_T1w.nii.gz"],
        out_labels=[tpl / "tpl-dsLearned_cohort-1_res-1_dseg.nii.gz"],
        ages=[300],
        age_units="months",
        name="dsLearned",
        res_label="1",
        threads=1,
    )
    dseg = nib.load(tpl / "tpl-dsLearned_cohort-1_res-1_dseg.nii.gz")
    assert dseg.shape == (16, 16, 1) and dseg.get_data_dtype() == np.int16


def _shells(shape=(32, 32, 32), seed=0):
    """Known tissue classes in concentric shells (WM core r < 6, GM shell r < 9, CSF shell r
    < 12 voxels; 3 / 2 / 1, 0 outside) and a T1w-like image of them: WM 0.9, GM 0.5, CSF 0.2,
    Gaussian noise SD 0.03 inside the brain."""
    r = np.sqrt(((np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2) ** 2).sum(0))
    truth = np.select([r < 6, r < 9, r < 12], [3, 2, 1], 0).astype(np.int16)
    noise = np.random.default_rng(seed).normal(0.0, 0.03, shape)
    image = (np.array([0.0, 0.2, 0.5, 0.9])[truth] + noise * (truth > 0)).astype(np.float32)
    return truth, image


def test_atropos_tissues_finds_three_known_classes_on_the_reference_grid(tmp_path):
    """Atropos on a preprocessed image with three known intensity classes recovers them
    (1 = CSF, 2 = GM, 3 = WM), and the map lands on the reference grid through the
    normalisation affine: a 4 mm translation (reference point p -> image point p + 4 mm
    along the first axis) on 2 mm voxels moves every label by 2 voxels."""
    truth, image = _shells()
    native = ants.from_numpy(image, spacing=(2.0, 2.0, 2.0))
    ants.image_write(native, str(tmp_path / "preproc.nii.gz"))
    ants.image_write(
        native.new_image_like((truth > 0).astype(np.float32)), str(tmp_path / "mask.nii.gz")
    )
    ants.image_write(native, str(tmp_path / "reference.nii.gz"))
    shift = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, translation=(4.0, 0.0, 0.0)
    )
    ants.write_transform(shift, str(tmp_path / "xfm.mat"))
    out = tmp_path / "tissue" / "dseg.nii.gz"
    ljobs.atropos_tissues(
        image=tmp_path / "preproc.nii.gz",
        mask=tmp_path / "mask.nii.gz",
        normalisation=tmp_path / "xfm.mat",
        reference=tmp_path / "reference.nii.gz",
        out_dseg=out,
    )
    dseg = nib.load(out)
    assert dseg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(dseg.affine, nib.load(tmp_path / "reference.nii.gz").affine)
    expected = np.zeros_like(truth)
    expected[:-2] = truth[2:]
    got = np.asarray(dseg.dataobj)
    assert (got == expected).mean() > 0.999
    assert list(tmp_path.joinpath("tissue").iterdir()) == [out]  # no temporary left over


def test_train_atlas_on_a_cohort_with_atropos_tissue_maps(run, tmp_path):
    """Cohort source, tissue variant: one Atropos map per normalised image (identity
    normalisation), read by the training job as CSF, GM, WM; the sampled tissue maps are
    probabilities."""
    tissues = []
    for i, image in enumerate(run["images"]):
        mask = _save(
            (nib.load(image).get_fdata() > 0.3).astype(np.uint8), tmp_path / f"m{i}.nii.gz"
        )
        tissues.append(tmp_path / f"sub-{i}_dseg.nii.gz")
        ljobs.atropos_tissues(
            image=image,
            mask=mask,
            normalisation=run["normalisation"][i],
            reference=run["reference"],
            out_dseg=tissues[-1],
        )
        assert set(np.unique(np.asarray(nib.load(tissues[-1]).dataobj))) == {0, 1, 2, 3}
    common = dict(
        out_model=tmp_path / "model.pt",
        out_losses=tmp_path / "losses.tsv",
        out_loss_curve=tmp_path / "loss.png",
        hyper=dict(HYPER, steps=2, tissue_weight=1.0),
        checkpoint_dir=tmp_path / "train",
        device="cpu",
        age_units="years",
        threads=1,
        tissues=tissues,
    )
    with pytest.raises(ValueError, match="tissues"):
        ljobs.train_atlas(**common, participants=tmp_path / "participants.tsv")
    ljobs.train_atlas(**common, images=run["images"], ages=AGES, subjects=["a", "b", "c"])
    assert "tissue" in pd.read_csv(tmp_path / "losses.tsv", sep="\t")
    atlas = LearnedAtlas(tmp_path / "model.pt")
    assert list(atlas.tissue_names) == ["CSF", "GM", "WM"]
    maps = np.asarray(atlas.tissue_maps([30.0])[0])
    assert maps.min() >= 0 and np.allclose(maps.sum(0), 1.0, atol=1e-5)
