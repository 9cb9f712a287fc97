"""Training, resumption, sampling and registration of atlas.learn on tiny synthetic data."""

import json
import pickle

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from atlas import qc
from atlas.learn import (
    AARN,
    Cohort,
    LearnedAtlas,
    export_templateflow,
    montage,
    register_file,
    sample,
)
from atlas.learn.training import progress_line, train

torch.set_num_threads(1)

TINY = {
    "enc": [8, 8, 8],
    "dec": [8, 8, 8],
    "template_hidden": 8,
    "template_channels": 4,
    "batch_size": 2,
    "lr": 1e-2,
    "log_every": 1000,
}
AFFINE = np.diag([-2.0, 2.0, 3.0, 1.0])
AFFINE[:3, 3] = [30.0, -20.0, 5.0]


def blob_cohort(n=2, shape=(24, 28), seed=0):
    """Textured ellipses whose size grows with age, on a (24, 28, 1) grid."""
    rng = np.random.default_rng(seed)
    ages = np.linspace(20, 80, n)
    grid = np.mgrid[: shape[0], : shape[1]].astype(float)
    centre = (np.array(shape) - 1)[:, None, None] / 2
    images, labels = [], []
    for age in ages:
        radius = 5 + 4 * (age - 20) / 60
        inside = (((grid - centre) / [[[radius]], [[radius * 1.2]]]) ** 2).sum(0) < 1
        texture = ndimage.gaussian_filter(rng.random(shape), 1.0)
        images.append(ndimage.gaussian_filter(inside * (0.5 + texture), 0.7))
        labels.append(inside.astype(np.int16))
    return Cohort(
        images=np.stack(images),
        ages=ages,
        affine=AFFINE,
        disk_shape=(*shape, 1),
        labels=np.stack(labels),
        subjects=[f"sub-{i}" for i in range(n)],
    )


def test_small_model_overfits_two_images(tmp_path):
    cohort = blob_cohort()
    history = []
    result = train(
        {**TINY, "steps": 300, "similarity": "mse", "reg_weight": 0.01},
        cohort,
        tmp_path,
        on_step=lambda step, losses: history.append(losses["similarity"]),
    )
    assert len(history) == 300
    start, end = np.mean(history[:5]), np.mean(history[-10:])
    assert end < start / 10, (start, end)
    assert result["loss_curve"].exists() and result["model"].exists()
    assert result["losses"].read_text().count("\n") == 301


class Kill(Exception):
    pass


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    cohort = blob_cohort(n=4)
    config = {**TINY, "steps": 6, "checkpoint_every": 2, "seed": 3}
    train(config, cohort, tmp_path / "straight")

    def kill_at_5(step, _):
        if step == 5:
            raise Kill  # step 5 is lost, like a SIGKILL between checkpoints

    with pytest.raises(Kill):
        train(config, cohort, tmp_path / "killed", on_step=kill_at_5)
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"] == 4
    train(config, cohort, tmp_path / "killed")  # resumes at step 4

    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    ha = (tmp_path / "straight" / "losses.tsv").read_text()
    assert ha == (tmp_path / "killed" / "losses.tsv").read_text()


def test_resume_refuses_other_config(tmp_path):
    cohort = blob_cohort()
    train({**TINY, "steps": 2}, cohort, tmp_path)
    with pytest.raises(ValueError, match="lr"):
        train({**TINY, "steps": 4, "lr": 0.5}, cohort, tmp_path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    train({**TINY, "steps": 4, "dice_weight": 1.0}, blob_cohort(), out)
    return out / "model.pt"


def test_sample_writes_training_grid(tiny_model, tmp_path):
    paths = sample(tiny_model, [20, 62.5], tmp_path)
    names = [p.name for p in paths]
    assert names == [
        "atlas_age-20_T1w.nii.gz",
        "atlas_age-20_dseg.nii.gz",
        "atlas_age-62p5_T1w.nii.gz",
        "atlas_age-62p5_dseg.nii.gz",
    ]
    img = nib.load(paths[0])
    assert img.shape == (24, 28, 1)
    np.testing.assert_allclose(img.affine, AFFINE)
    assert img.header.get_zooms() == (2.0, 2.0, 3.0)
    assert set(np.unique(np.asarray(nib.load(paths[1]).dataobj))) <= {0, 1}


def test_export_templateflow_layout(tiny_model, tmp_path):
    root = export_templateflow(tiny_model, [20, 80], tmp_path, "OASIS2D", res=1)
    assert (root / "cohort-2" / "tpl-OASIS2D_cohort-2_res-1_T1w.nii.gz").exists()
    desc = json.loads((root / "template_description.json").read_text())
    assert desc["cohort"] == {
        "1": {"age": [20.0], "units": "years"},
        "2": {"age": [80.0], "units": "years"},
    }
    assert desc["res"]["1"]["shape"] == [24, 28, 1]
    with pytest.raises(ValueError):
        export_templateflow(tiny_model, [20], tmp_path, "bad-name")


def test_montage_png(tiny_model, tmp_path):
    png = montage(tiny_model, [20, 50, 80], tmp_path / "m.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    height, width = plt.imread(png).shape[:2]
    assert width > 2 * height  # one row of three panels


class Payload:
    """Any picklable object: unpickling it runs code of the file's author's choosing."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_model_files_load_as_data_only(tiny_model, tmp_path):
    """LearnedAtlas reads a model with weights_only=True: a file that would run code when
    unpickled is refused, and the published model holds only tensors and plain values."""
    ckpt = torch.load(tiny_model, weights_only=True)
    assert set(ckpt) == {"config", "meta", "model"}
    torch.save(dict(ckpt, extra=Payload()), tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        LearnedAtlas(tmp_path / "evil.pt")


def test_progress_line_is_a_tqdm_meter_with_the_losses():
    line = progress_line(30, 100, 20, 20.0, {"total": 0.5, "similarity": 0.25})
    assert line.startswith(" 30%|") and "30/100" in line
    assert "2.00s/step" in line and "<02:20" in line  # 10 steps in 20 s since the restart
    assert line.endswith("total=0.5  similarity=0.25")


def test_figures_show_their_data():
    """The loss figure has one panel per loss term with the losses as drawn data; the
    montage shows each atlas slice in its own panel, titled with its age."""
    history = [{"total": 1.0 / (i + 1), "similarity": 0.5, "dice": 0.1} for i in range(100)]
    fig = qc.plot_losses(history)
    assert [ax.get_ylabel() for ax in fig.axes] == ["total", "similarity", "dice"]
    steps, values = fig.axes[0].lines[0].get_data()
    np.testing.assert_array_equal(values, [h["total"] for h in history])
    assert len(fig.axes[0].lines[1].get_xdata()) == 99  # moving average over 2 steps
    dark, bright = np.zeros((20, 30)), np.ones((20, 30))
    fig = qc.plot_age_montage([dark, bright], [20, 80.5], vmax=1.0)
    assert [ax.get_title() for ax in fig.axes] == ["20 y", "80.5 y"]
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), bright.T)
    assert fig.axes[0].images[0].get_clim() == (0, 1.0)
    fig = qc.plot_age_montage([dark], [6], vmax=1.0, unit="mo")  # infant atlases: months
    assert [ax.get_title() for ax in fig.axes] == ["6 mo"]


def test_register_file_outputs(tiny_model, tmp_path):
    cohort = blob_cohort()
    img_path = tmp_path / "sub-0_T1w.nii.gz"
    lab_path = tmp_path / "sub-0_dseg.nii.gz"
    nib.save(nib.Nifti1Image(cohort.images[0][..., None], AFFINE), img_path)
    nib.save(nib.Nifti1Image(cohort.labels[0][..., None], AFFINE), lab_path)
    out = register_file(tiny_model, img_path, 20.0, tmp_path / "reg", label_path=lab_path)
    assert nib.load(out["warped"]).shape == (24, 28, 1)
    warp = nib.load(out["warp"])
    assert warp.shape == (24, 28, 1, 1, 3)
    assert warp.header.get_intent()[0] == "vector"
    assert nib.load(out["labels"]).get_data_dtype() == np.int16
    assert out["seconds"] > 0

    atlas = LearnedAtlas(tiny_model)
    u = np.zeros((24, 28, 2))
    u[..., 1] = 1.0  # one voxel along array axis 1 = +2 mm along world y (RAS)
    np.testing.assert_allclose(atlas.world_displacement(u)[0, 0], [0.0, 2.0, 0.0])


def test_sample_with_aarn_rescales_header(tiny_model, tmp_path):
    aarn = AARN(3)
    with torch.no_grad():
        aarn.mlp[-1].bias[:3] = float(np.log(1.1))  # isotropic scale 1.1 at every age
    path = sample(tiny_model, [40], tmp_path, aarn=aarn)[0]
    expected = np.diag([1.1, 1.1, 1.1, 1.0]) @ AFFINE
    np.testing.assert_allclose(nib.load(path).affine, expected, rtol=1e-5)
