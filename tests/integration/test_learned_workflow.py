"""The learned age-conditional atlas through the real Snakefile on 3 IXI subjects at 4 mm
(short training: the point is the wiring, file conventions and resumption, not quality).
DLMUSE labels (derivatives/dlmuse, silver standard) give the evaluation's Dice."""

import json

import ants
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from atlas import metrics
from atlas.learn import LearnedAtlas

pytestmark = pytest.mark.integration

SUBJECTS = ["IXI012", "IXI013", "IXI014"]
AGES = [30, 45, 60]
REF = "MNI152NLin2009aSym"
TRAIN = {
    "steps": 40,
    "lr": 0.003,
    "batch_size": 2,
    "enc": [8, 16, 16],
    "dec": [16, 16, 16],
    "checkpoint_every": 20,
    "log_every": 10,
}


@pytest.fixture(scope="module")
def learned_run(ixi_config, tmp_path_factory, run_workflow):
    tmp = tmp_path_factory.mktemp("learned")
    config = ixi_config(tmp)
    config |= {
        "learned": {
            "enabled": True,
            "name": "test",
            "ages": AGES,
            "evaluation_labels": {"dir": "derivatives/dlmuse", "desc": "dlmuse"},
            "train": TRAIN,
        },
    }
    run_workflow(tmp, config)
    return tmp, config


def _normalised(out, sub):
    return out / f"sub-{sub}" / "anat" / f"sub-{sub}_space-{REF}_desc-preproc_T1w.nii.gz"


def test_atlases_at_each_age_on_the_training_grid(learned_run):
    tmp, _ = learned_run
    out = tmp / "out"
    grid = nib.load(_normalised(out, SUBJECTS[0]))
    tpl = out / "tpl-testLearned"
    desc = json.loads((tpl / "template_description.json").read_text())
    assert [c["age"] for c in desc["cohort"].values()] == [[a] for a in AGES]
    assert {c["units"] for c in desc["cohort"].values()} == {"years"}
    assert desc["res"]["4"]["shape"] == list(grid.shape[:3])
    aarn = pd.read_csv(out / "learned" / "aarn.tsv", sep="\t")
    atlases = []
    for k, age in enumerate(AGES, start=1):
        img = nib.load(tpl / f"cohort-{k}" / f"tpl-testLearned_cohort-{k}_res-4_T1w.nii.gz")
        assert img.shape == grid.shape[:3]
        np.testing.assert_allclose(img.affine, grid.affine, atol=1e-4)
        data = img.get_fdata()
        assert np.isfinite(data).all() and data.std() > 0
        atlases.append(data)
        # age-scaled copy: same voxels, header = AARN(age) @ grid; its volume scale is
        # the tabulated isotropic scale cubed, and adult heads are within 0.7-1.3 of MNI
        scaled = nib.load(
            tpl / f"cohort-{k}" / f"tpl-testLearned_cohort-{k}_res-4_desc-agescaled_T1w.nii.gz"
        )
        np.testing.assert_array_equal(scaled.get_fdata(), data)
        ratio = np.linalg.det(scaled.affine[:3, :3]) / np.linalg.det(grid.affine[:3, :3])
        scale = aarn.loc[aarn.age == age, "scale"].item()
        np.testing.assert_allclose(ratio, scale**3, rtol=1e-3)
        assert 0.7 < scale < 1.3
    # a conditional template: the atlases differ with age
    assert not np.allclose(atlases[0], atlases[-1])
    for fig in ("loss_plot", "ages_montage"):
        assert (out / "figures" / f"tpl-testLearned_desc-{fig}.png").stat().st_size > 5_000
    losses = pd.read_csv(out / "learned" / "losses.tsv", sep="\t")
    assert len(losses) == TRAIN["steps"]
    assert (tmp / "work" / "learned" / "train" / "checkpoint.pt").is_file()


def test_one_pass_registration_raises_ncc_and_warps_are_ants_compatible(learned_run, shared_data):
    tmp, _ = learned_run
    out = tmp / "out"
    model = LearnedAtlas(out / "learned" / "model.pt")
    ages = pd.read_csv(shared_data / "ixi" / "participants.tsv", sep="\t")
    mask = nib.load(tmp / "work" / "reference" / "res-4_desc-brain_mask.nii.gz").get_fdata() > 0
    for sub in SUBJECTS:
        anat = out / f"sub-{sub}" / "anat"
        age = ages.loc[ages.participant_id == f"sub-{sub}", "age"].item()
        atlas = model.templates([age])[0][0].reshape(mask.shape)
        image = nib.load(_normalised(out, sub)).get_fdata()
        warped_path = anat / f"sub-{sub}_space-testLearned_desc-preproc_T1w.nii.gz"
        warped = nib.load(warped_path).get_fdata()
        before, after = metrics.ncc(atlas, image, mask), metrics.ncc(atlas, warped, mask)
        assert after > before, (sub, before, after)
        # the written warp, applied by ANTs, reproduces the network's warped image
        warp = anat / f"sub-{sub}_from-{REF}_to-testLearned_mode-image_xfm.nii.gz"
        fixed = ants.image_read(str(warped_path))
        moved = ants.apply_transforms(
            fixed, ants.image_read(str(_normalised(out, sub))), [str(warp)]
        )
        assert metrics.ncc(moved.numpy(), warped, mask) > 0.999
        assert (anat / f"sub-{sub}_from-testLearned_to-{REF}_mode-image_xfm.nii.gz").is_file()


def test_evaluation_compares_both_methods(learned_run):
    tmp, _ = learned_run
    table = pd.read_csv(tmp / "out" / "group" / "desc-learned_evaluation.tsv", sep="\t")
    assert list(table.method) == ["learned", "iterative"]
    assert list(table.template) == ["testLearned", "test"]
    assert (table.n_subjects == 3).all()
    cols = ["sharpness", "centrality_mm", "mean_displacement_mm", "ncc", "seconds_per_subject"]
    assert np.isfinite(table[cols].to_numpy()).all()
    assert (table.sharpness > 0).all() and (table.seconds_per_subject > 0).all()
    # DLMUSE labels of different subjects overlap in template space (measured about
    # 0.42 learned after 50 steps, 0.47 iterative at 4 mm), but never perfectly
    assert ((table.dice > 0.2) & (table.dice < 0.9)).all()
    # diffeomorphic: the learned (scaling and squaring) warps never fold
    assert table.set_index("method").pct_nonpositive_jacobian["learned"] == 0.0
    # the centre of the subjects' warps is never farther than the warps themselves
    assert (table.centrality_mm <= table.mean_displacement_mm + 1e-9).all()
    subjects = pd.read_csv(tmp / "out" / "group" / "desc-learnedregistration_table.tsv", sep="\t")
    assert len(subjects) == 6
    assert (subjects.ncc > subjects.ncc_unregistered).all()


def test_raising_steps_resumes_from_the_checkpoint(learned_run, run_workflow):
    """The checkpoint folder is no Snakemake output: more steps continue the training."""
    tmp, config = learned_run
    config["learned"]["train"] = dict(TRAIN, steps=TRAIN["steps"] + 10)
    target = str(tmp / "out" / "learned" / "model.pt")
    run_workflow(tmp, config, [target])
    log = (tmp / "out" / "logs" / "learned_train.log").read_text()
    assert f"at step {TRAIN['steps']}" in log
    losses = pd.read_csv(tmp / "out" / "learned" / "losses.tsv", sep="\t")
    assert len(losses) == TRAIN["steps"] + 10
