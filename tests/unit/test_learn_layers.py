"""Warping layers of atlas.learn: spatial transformer vs ANTs, scaling and squaring."""

import ants
import numpy as np
import pytest
import torch
from scipy import ndimage

from atlas.learn.layers import (
    ResizeTransform,
    SpatialTransformer,
    VecInt,
    compose,
    identity_grid,
    integrate_velocity,
)

torch.set_num_threads(1)


def smooth_image(shape, seed=0, sigma=2.0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), sigma).astype(np.float32)


def smooth_velocity(shape, amplitude, sigma, seed=0):
    """Random velocity field (1, ndim, *shape), voxels, max |v| = amplitude."""
    rng = np.random.default_rng(seed)
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in shape])
    return torch.from_numpy(amplitude * v / np.abs(v).max())[None]


@pytest.mark.parametrize("shape", [(32, 40), (18, 20, 22)])
def test_spatial_transformer_matches_ants_affine(shape):
    """Warping by the displacement of a known affine equals ants' linear resampling."""
    ndim = len(shape)
    arr = smooth_image(shape)
    rng = np.random.default_rng(1)
    matrix = np.eye(ndim) * 1.08 + rng.uniform(-0.05, 0.05, (ndim, ndim))
    translation = np.linspace(1.5, -2.25, ndim)
    centre = (np.array(shape) - 1) / 2
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=ndim,
        matrix=matrix,
        translation=translation,
        center=centre,
    )
    img = ants.from_numpy(arr)  # spacing 1, origin 0, identity direction: mm == voxels
    expected = ants.apply_ants_transform_to_image(tx, img, img, interpolation="linear").numpy()

    grid = identity_grid(shape, dtype=torch.float64)[0].numpy()
    bc = (slice(None),) + (None,) * ndim
    mapped = np.einsum("ij,j...->i...", matrix, grid - centre[bc]) + (centre + translation)[bc]
    moved = SpatialTransformer()(
        torch.from_numpy(arr)[None, None].double(), torch.from_numpy(mapped - grid)[None]
    )[0, 0].numpy()
    # ANTs and grid_sample treat out-of-image samples differently: compare inside only.
    inside = np.all([(mapped[i] >= 0) & (mapped[i] <= n - 1) for i, n in enumerate(shape)], 0)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(moved[inside], expected[inside], atol=1e-5)


def test_translation_by_whole_voxels_is_a_shift():
    arr = torch.from_numpy(smooth_image((20, 24)))[None, None]
    u = torch.zeros(1, 2, 20, 24)
    u[:, 0], u[:, 1] = 2.0, -3.0  # out[x] = in[x + (2, -3)]
    out = SpatialTransformer()(arr, u)
    torch.testing.assert_close(out[0, 0, :-2, 3:], arr[0, 0, 2:, :-3], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(16, 20), (10, 12, 14)])
def test_zero_velocity_is_identity(shape):
    v = torch.zeros(2, len(shape), *shape)
    u = VecInt(7)(v)
    assert torch.equal(u, torch.zeros_like(u))  # exact: sums of exact zeros
    image = torch.from_numpy(smooth_image(shape))[None, None]
    # Sampling at grid points: only the normalise/unnormalise round trip of grid_sample
    # (a few float32 ulps) separates the result from the input.
    torch.testing.assert_close(SpatialTransformer()(image, u[:1]), image, atol=1e-6, rtol=0)


def test_exp_v_composed_with_exp_minus_v_is_identity():
    """exp(v) ∘ exp(-v) = Id up to interpolation error.

    Each of the 2 x 7 squarings and the final composition interpolates linearly a field
    whose second derivative is ~ A / sigma^2 (A: amplitude, sigma: smoothing, voxels); the
    linear-interpolation error is <= h^2/8 |u''| per evaluation, i.e. ~ 3 / (8 * 36)
    ~ 0.01 voxel here, accumulated over ~8 compositions of growing fields -> a bound of
    0.1 voxel for the maximum and 0.02 voxel for the mean; compared with the 3-voxel
    displacements themselves (error ratio ~ 3 %).
    """
    shape = (48, 56)
    v = smooth_velocity(shape, amplitude=3.0, sigma=6.0)
    integrate = VecInt(7)
    forward, backward = integrate(v), integrate(-v)
    assert forward.abs().max() > 2.0  # a real deformation
    residual = compose(forward, backward)[0]
    interior = residual[:, 6:-6, 6:-6]  # border-clamped samples are not invertible
    assert interior.abs().max() < 0.1
    assert interior.abs().mean() < 0.02


def test_exp_of_constant_velocity_is_translation():
    v = torch.zeros(1, 2, 16, 16)
    v[:, 0] = 1.5
    torch.testing.assert_close(VecInt(7)(v), v, atol=1e-5, rtol=0)


def test_resize_transform_rescales_vectors():
    field = torch.zeros(1, 2, 8, 10)
    field[:, 0] = 1.0  # one coarse voxel along axis 0
    out = ResizeTransform((15, 19))(field)
    assert out.shape == (1, 2, 15, 19)
    torch.testing.assert_close(out[:, 0], torch.full((1, 15, 19), 2.0))
    torch.testing.assert_close(out[:, 1], torch.zeros(1, 15, 19))


def test_transformer_rejects_mismatched_field():
    with pytest.raises(ValueError):
        SpatialTransformer()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 3, 8, 8))


def _numpy_pull(field, displacement):
    """``field ∘ (Id + displacement)`` for numpy ``(ndim, *S)`` arrays: linear interpolation,
    border values outside (the convention of SpatialTransformer), by scipy."""
    grid = np.indices(field.shape[1:], dtype=np.float64) + displacement
    return np.stack([ndimage.map_coordinates(c, grid, order=1, mode="nearest") for c in field])


@pytest.mark.parametrize("shape", [(32, 40), (20, 24, 18)])
def test_integrate_velocity_inverts_with_minus_v(shape):
    """exp(v) ∘ exp(-v) ≈ Id for numpy callers. The residual is the interpolation error of
    the linearly interpolated fields: measured 0.016 voxel (2D) and 0.006 voxel (3D, on a
    48x56x48 grid) for peak velocities of 2 and 1.5 voxels; 0.05 voxel is 3x that and 40x
    below the displacement, which a wrong sign or composition order would leave in full."""
    v = smooth_velocity(shape, 2.0, 4.0, seed=5)[0].numpy().astype(np.float64)
    forward, backward = integrate_velocity(v), integrate_velocity(-v)
    assert forward.dtype == np.float64 and forward.shape == v.shape
    assert np.abs(forward).max() > 1.0
    residual = backward + _numpy_pull(forward, backward)  # (φ+ ∘ φ-)(x) - x
    inner = (slice(None),) + tuple(slice(3, -3) for _ in shape)
    assert np.abs(residual[inner]).max() < 0.05


def test_integrate_velocity_matches_numpy_scaling_and_squaring():
    """The same scheme written with scipy (as in atlas.demo) agrees to float64 rounding."""
    v = smooth_velocity((16, 18, 14), 1.5, 3.0, seed=6)[0].numpy().astype(np.float64)
    u = v / 2**7
    for _ in range(7):
        u = u + _numpy_pull(u, u)
    np.testing.assert_allclose(integrate_velocity(v, steps=7), u, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        integrate_velocity(np.zeros((3, 8, 8)))
