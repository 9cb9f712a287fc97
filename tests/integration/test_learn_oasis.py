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
