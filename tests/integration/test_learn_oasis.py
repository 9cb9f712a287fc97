"""atlas.learn on real OASIS slices (../shared/data/oasis2d): a few subjects, short training.

Data come from the ``shared_data`` fixture (tests/conftest.py): missing data fail under CI
and skip elsewhere.
"""

import numpy as np
import pytest
import torch

from atlas import metrics
from atlas.learn import Cohort, LearnedAtlas, load_bids_cohort, train

pytestmark = pytest.mark.integration
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def oasis(shared_data):
    return load_bids_cohort(shared_data / "oasis2d")


def test_loads_2d_cohort(oasis):
    assert oasis.images.shape[1:] == (160, 192)
    assert oasis.disk_shape == (160, 192, 1)
    np.testing.assert_allclose(oasis.spacing, [1.0, 1.0])
    assert 17 < oasis.ages.min() and oasis.ages.max() < 100
    assert set(np.unique(oasis.labels)) == {0, 1, 2, 3, 4}


def test_short_training_registers_held_out_subjects(oasis, tmp_path):
    """After 100 steps on 24 subjects, the one-pass registration to the atlas of the
    subject's age increases the NCC with the atlas for each of 8 held-out subjects
    (by 0.004-0.011 when written) and is diffeomorphic (no folding)."""
    order = np.argsort(oasis.ages)
    train_idx = np.r_[order[:12], order[-12:]]
    test_idx = np.r_[order[12:16], order[-16:-12]]
    subset = Cohort(
        images=oasis.images[train_idx],
        ages=oasis.ages[train_idx],
        affine=oasis.affine,
        disk_shape=oasis.disk_shape,
    )
    config = {"steps": 100, "batch_size": 4, "enc": [8, 16, 16], "dec": [16, 16, 16]}
    train({**config, "lr": 3e-3, "log_every": 1000}, subset, tmp_path)
    atlas = LearnedAtlas(tmp_path / "model.pt")
    gains, folding = [], []
    for i in test_idx:
        reg = atlas.register(oasis.images[i], oasis.ages[i])
        gains.append(metrics.ncc(reg.atlas, reg.warped) - metrics.ncc(reg.atlas, oasis.images[i]))
        det = metrics.jacobian_determinant(reg.inverse_displacement * atlas.spacing, atlas.spacing)
        folding.append(metrics.jacobian_stats(det)["pct_nonpositive"])
    assert min(gains) > 0.0, gains
    assert max(folding) == 0.0


VARIANTS = {
    "conditional": {},
    "conditional+tissue": {"tissue_weight": 1.0},
    "atlas-gan": {"adversarial": True},
    "gan+tissue": {"adversarial": True, "tissue_weight": 1.0},
}


@pytest.fixture(scope="module")
def oasis_tissues(shared_data):
    """16 subjects (8 youngest, 8 oldest) with their seg4 tissues, on a 4x coarser grid."""
    full = load_bids_cohort(
        shared_data / "oasis2d", label_suffix=None, tissue_suffix="desc-seg4_dseg"
    )
    order = np.argsort(full.ages)
    idx = np.r_[order[:8], order[-8:]]
    affine = full.affine.copy()
    affine[:3, :2] *= 4
    return Cohort(
        images=full.images[idx, ::4, ::4],
        ages=full.ages[idx],
        affine=affine,
        disk_shape=(40, 48, 1),
        tissues=full.tissues[idx, ::4, ::4],
        tissue_names=full.tissue_names,
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_resumes_on_oasis(oasis_tissues, variant, tmp_path):
    """A few steps of each variant of the 2 x 2 design on real slices (seg4 tissues GM, SGM,
    WM, CSF): finite losses, and resuming from the step-4 checkpoint gives the losses of an
    uninterrupted run."""
    assert oasis_tissues.tissue_names == ["GM", "SGM", "WM", "CSF"]
    config = {
        "steps": 6,
        "batch_size": 2,
        "enc": [8, 16, 16],
        "dec": [16, 16, 16],
        "checkpoint_every": 4,
        "log_every": 1000,
        "disc_channels": [8, 16],
        "disc_warmup_steps": 2,
        **VARIANTS[variant],
    }
    train(config, oasis_tissues, tmp_path / "straight")
    train({**config, "steps": 4}, oasis_tissues, tmp_path / "resumed")
    train(config, oasis_tissues, tmp_path / "resumed")
    straight = (tmp_path / "straight" / "losses.tsv").read_text()
    assert straight == (tmp_path / "resumed" / "losses.tsv").read_text()
    atlas = LearnedAtlas(tmp_path / "straight" / "model.pt")
    maps = atlas.tissue_maps([20, 90])
    assert (maps is None) == ("tissue" not in variant)
    if maps is not None:
        np.testing.assert_allclose(maps.sum(1), 1.0, atol=1e-5)
