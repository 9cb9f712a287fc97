"""The SyGN template algorithm on images with known answers."""

import ants
import numpy as np
import pytest

from atlas import metrics
from atlas.learn.layers import integrate_velocity
from atlas.preprocess import mni152_path, reference_grid
from atlas.registration import register, set_determinism
from atlas.template import average_images, shape_update


@pytest.fixture(scope="module")
def brain():
    """The MNI152 brain on a 4 mm grid, intensities in [0, 1] (about 50 x 60 x 50 voxels)."""
    set_determinism(seed=1, threads=1)
    image, mask = reference_grid(ants.image_read(str(mni152_path())), 4.0)
    return image, mask


def _identity_affine(path):
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    ants.write_transform(tx, str(path))
    return str(path)


def _constant_warp(like, vector_mm, path):
    arr = np.broadcast_to(np.asarray(vector_mm, np.float32), like.shape + (3,)).copy()
    field = ants.from_numpy(
        arr, origin=like.origin, spacing=like.spacing, direction=like.direction, has_components=True
    )
    ants.image_write(field, str(path))
    return str(path)


def test_shape_update_moves_template_to_population_centre(brain, tmp_path):
    """Subjects are the template shifted by t_i (forward warps = t_i). With gradient step 1
    the shape update must shift the average by the mean shift, to the population centre."""
    image, _ = brain
    shifts = [(8.0, 0.0, 0.0), (4.0, -4.0, 0.0), (0.0, 4.0, 4.0), (4.0, 0.0, -4.0)]
    warps = [_constant_warp(image, t, tmp_path / f"w{i}.nii.gz") for i, t in enumerate(shifts)]
    affines = [_identity_affine(tmp_path / f"a{i}.mat") for i in range(len(shifts))]
    updated, magnitude = shape_update(image, affines, warps, gradient_step=1.0)
    mean_shift = np.mean(shifts, axis=0)  # (4, 0, 0) mm
    moved = np.subtract(ants.get_center_of_mass(updated), ants.get_center_of_mass(image))
    # linear interpolation of a smooth brain keeps the centroid to well under a voxel (4 mm)
    np.testing.assert_allclose(moved, mean_shift, atol=0.5)
    np.testing.assert_allclose(magnitude, np.linalg.norm(mean_shift), rtol=1e-5)
    # half the step moves the template half way
    half, _ = shape_update(image, affines, warps, gradient_step=0.5)
    moved = np.subtract(ants.get_center_of_mass(half), ants.get_center_of_mass(image))
    np.testing.assert_allclose(moved, mean_shift / 2, atol=0.5)


def test_affine_shape_update_removes_mean_scaling(brain, tmp_path):
    """Affines that all scale by 1.1 about the centre: the template grows by 1.1 in volume^(1/3)."""
    image, mask = brain
    centre = ants.get_center_of_mass(image)
    affines = []
    for i in range(3):
        tx = ants.create_ants_transform(
            transform_type="AffineTransform",
            dimension=3,
            center=centre,
            matrix=np.eye(3) * 1.1,
            translation=(0, 0, 0),
        )
        affines.append(str(tmp_path / f"s{i}.mat"))
        ants.write_transform(tx, affines[-1])
    updated, _ = shape_update(image, affines, None)
    # forward affine maps template points to subject points scaled by 1.1, i.e. subjects are
    # larger; the updated template must be 1.1^3 = 1.331 times the volume. The intensity
    # integral scales exactly with volume; 2 % allows for linear-interpolation loss
    assert updated.sum() / image.sum() == pytest.approx(1.331, rel=0.02)


def _deform(image, velocity_scale, seed):
    """+v and -v deformations of ``image`` (2D): the population centre is the original."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(image.shape), 6.0) for _ in range(2)])
    v *= velocity_scale / np.abs(v).max()
    out = []
    for sign in (1, -1):
        u = integrate_velocity(sign * v)
        arr = ndimage.map_coordinates(
            image.numpy(), np.indices(image.shape, dtype=float) + u, order=1
        )
        out.append(image.new_image_like(arr.astype("float32")))
    return out


def test_template_of_known_warps_recovers_original(tmp_path):
    """Deform a real brain slice (MNI152 mid-axial, 2 mm) by +-v1, +-v2 (peak velocity 3
    voxels), build the template with 3 SyN iterations and compare it with the original."""
    set_determinism(seed=1, threads=1)
    vol, vol_mask = reference_grid(ants.image_read(str(mni152_path())), 2.0)
    z = vol.shape[2] // 2
    image = ants.from_numpy(vol.numpy()[:, :, z].copy(), spacing=(2.0, 2.0))
    m = vol_mask.numpy()[:, :, z] > 0
    subjects = _deform(image, 3.0, 0) + _deform(image, 3.0, 1)
    params = {
        "transform": "SyN",
        "affine_iterations": [100, 50, 0],
        "affine_shrink_factors": [4, 2, 1],
        "affine_smoothing_sigmas": [2, 1, 0],
        "metric": "CC",
        "metric_param": 2,
        "iterations": [40, 20, 10],
    }
    template = average_images(subjects)
    start = metrics.ncc(template.numpy(), image.numpy(), m)
    for k in range(3):
        warped, affines, warps = [], [], []
        for i, s in enumerate(subjects):
            affines.append(str(tmp_path / f"a{k}{i}.mat"))
            warps.append(str(tmp_path / f"w{k}{i}.nii.gz"))
            warped.append(
                register(template, s, params, affines[-1], warps[-1], f"{warps[-1]}.inv.nii.gz")
            )
        template, _ = shape_update(average_images(warped), affines, warps, 1.0)
    end = metrics.ncc(template.numpy(), image.numpy(), m)
    # measured: each subject 0.87-0.89 with the original, their plain mean 0.958 (blurred),
    # the template 0.975 (its residual error 1 - NCC is 60 % of the plain mean's; what is
    # left is interpolation blur of two resamplings). Require a clear gain: <= 75 %.
    assert end > max(metrics.ncc(s.numpy(), image.numpy(), m) for s in subjects)
    assert 1 - end < 0.75 * (1 - start)


def test_registration_is_reproducible_with_fixed_seed_and_threads(brain, tmp_path):
    """Same inputs, seed and ITK threads -> bit-identical transforms (random sampling)."""
    image, _ = brain
    moving = _deform(ants.from_numpy(image.numpy()[:, :, 25].copy()), 2.0, 3)[0]
    fixed = ants.from_numpy(image.numpy()[:, :, 25].copy())
    params = {"transform": "Affine", "affine_metric_param": 16, "affine_iterations": [50, 20]}
    params |= {"affine_shrink_factors": [2, 1], "affine_smoothing_sigmas": [1, 0]}
    runs = []
    for i in range(2):
        set_determinism(seed=7, threads=1)
        register(fixed, moving, params, tmp_path / f"a{i}.mat")
        runs.append(ants.read_transform(str(tmp_path / f"a{i}.mat")).parameters)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_average_methods():
    """mean, median (robust to one outlier image) and normalized_mean (each image scaled to
    unit mean over its non-zero voxels, then rescaled by the mean of those means)."""
    base = np.zeros((4, 5, 6), np.float32)
    base[1:3, 1:4, 1:5] = 1.0
    images = [ants.from_numpy(base * g) for g in (1.0, 2.0, 3.0)]
    outlier = ants.from_numpy(base * 100.0)
    np.testing.assert_allclose(average_images(images, "mean").numpy(), base * 2.0, rtol=1e-6)
    med = average_images([*images[:2], outlier], "median").numpy()
    np.testing.assert_allclose(med, base * 2.0, rtol=1e-6)
    # gains 1, 2, 3 are removed; the result keeps the cohort's mean intensity (2)
    np.testing.assert_allclose(
        average_images(images, "normalized_mean").numpy(), base * 2.0, rtol=1e-6
    )
    with pytest.raises(ValueError, match="unknown averaging"):
        average_images(images, "mode")
    with pytest.raises(ValueError, match="no images"):
        average_images([], "mean")
