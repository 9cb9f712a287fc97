"""Losses of atlas.learn."""

import itertools
import math

import pytest
import torch

from atlas.learn import losses

torch.set_num_threads(1)


@pytest.mark.parametrize("shape", [(1, 1, 32, 36), (2, 1, 12, 14, 16)])
def test_ncc_of_identical_images_is_one(shape):
    a = torch.rand(shape, generator=torch.Generator().manual_seed(0)) + 0.1  # no flat window
    assert losses.mean_squared_local_ncc(a, a, window=5).item() == pytest.approx(1.0, abs=1e-3)
    assert losses.mean_squared_local_ncc(a, 3.0 * a + 1.0, window=5).item() == pytest.approx(
        1.0, abs=1e-3
    )
    assert losses.ncc_loss(a, a, window=5).item() == pytest.approx(0.0, abs=1e-3)


def test_ncc_of_independent_noise_is_small():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 1, 64, 64, generator=g), torch.rand(1, 1, 64, 64, generator=g)
    # squared correlation of 81 independent pairs: expectation ~ 1/81
    assert losses.mean_squared_local_ncc(a, b, window=9).item() < 0.05


@pytest.mark.parametrize("shape", [(2, 1, 23, 19), (1, 1, 11, 13, 9)])
def test_separable_ncc_matches_brute_force_window_means(shape):
    # the definition: every voxel's window mean over the full (border-truncated) cube
    g = torch.Generator().manual_seed(1)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)
    window, r = 5, 2
    spatial = shape[2:]

    def mean(x):
        out = torch.empty_like(x)
        for idx in itertools.product(*(range(n) for n in spatial)):
            box = tuple(slice(max(0, i - r), i + r + 1) for i in idx)
            out[(..., *idx)] = x[(..., *box)].mean(dim=tuple(range(2, x.dim())))
        return out

    ma, mb = mean(a), mean(b)
    cross, va, vb = mean(a * b) - ma * mb, mean(a * a) - ma * ma, mean(b * b) - mb * mb
    expected = (cross * cross / (va * vb + 1e-8)).mean()
    torch.testing.assert_close(
        losses.mean_squared_local_ncc(a, b, window), expected, rtol=1e-10, atol=0
    )


def test_ncc_rejects_even_window():
    a = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError):
        losses.mean_squared_local_ncc(a, a, window=4)


def test_laplacian_of_quadratic_in_normalised_domain():
    x = torch.linspace(-1, 1, 21)
    xx, yy = torch.meshgrid(x, x, indexing="ij")
    field = (xx**2 + 3 * yy**2)[None, None]
    lap = losses.laplacian(field)[0, 0, 1:-1, 1:-1]
    torch.testing.assert_close(lap, torch.full_like(lap, 8.0), atol=1e-3, rtol=0)


def test_operator_loss_reduces_to_l2_when_alpha_zero():
    v = torch.randn(1, 2, 10, 12, generator=torch.Generator().manual_seed(0))
    assert losses.operator_loss(v, 0.0).item() == pytest.approx((v * v).mean().item(), rel=1e-6)
    smooth = torch.ones(1, 2, 10, 12)
    assert losses.operator_loss(smooth, 0.01).item() == pytest.approx(1.0, rel=1e-6)


def test_reg_alpha_cascade_stages():
    cascade = [0.01, 0.005, 0.001]
    assert [losses.reg_alpha(cascade, s, 300) for s in (0, 99, 100, 250, 299)] == [
        0.01,
        0.01,
        0.005,
        0.001,
        0.001,
    ]
    assert losses.reg_alpha(0.02, 5, 10) == 0.02


def test_diffusion_loss_of_linear_ramp():
    x = torch.arange(10.0)
    field = torch.stack([x[:, None].expand(10, 8), torch.zeros(10, 8)])[None]
    assert losses.diffusion_loss(field).item() == pytest.approx(0.5)  # 1 of 2 channels


def test_dice_loss_perfect_and_disjoint():
    a = torch.zeros(1, 2, 4, 4)
    a[:, 0, :2], a[:, 1, 2:] = 1, 1
    assert losses.dice_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.dice_loss(a, a.flip(1)).item() == pytest.approx(1.0, abs=1e-5)


def test_centrality_loss_is_mean_square():
    u = torch.full((1, 2, 4, 4), 2.0)
    assert math.isclose(losses.centrality_loss(u).item(), 4.0)
