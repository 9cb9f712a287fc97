"""The SyGN template algorithm on images with known answers."""

import ants
import numpy as np
import pytest

from atlas import metrics
from atlas.demo import _exp_velocity, mni152_path
from atlas.registration import register, set_determinism
from atlas.template import average_images, reference_grid, shape_update


@pytest.fixture(scope="module")
def brain():
    """The MNI152 brain on a 4 mm grid, intensities in [0, 1] (about 40 x 50 x 40 voxels)."""
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
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(image.shape), 3.0) for _ in range(3)])
    v *= velocity_scale / np.abs(v).max()
    out = []
    for sign in (1, -1):  # +v and -v: the population centre is the original shape
        u = _exp_velocity(sign * v)
        coords = np.indices(image.shape, dtype=float) + u
        arr = ndimage.map_coordinates(image.numpy(), coords, order=1)
        out.append(image.new_image_like(arr.astype("float32")))
    return out


def test_template_of_known_warps_recovers_original(brain):
    """Deform one real brain by +-v1, +-v2 (2 voxels = 8 mm peak velocity), build the template
    with 3 SyN iterations and check it is closer to the original than the plain mean."""
    image, mask = brain
    subjects = _deform(image, 2.0, 0) + _deform(image, 2.0, 1)
    params = {
        "transform": "SyN",
        "affine_iterations": [100, 50, 0],
        "affine_shrink_factors": [4, 2, 1],
        "affine_smoothing_sigmas": [2, 1, 0],
        "metric": "CC",
        "metric_param": 2,
        "iterations": [40, 20],
    }
    template = average_images(subjects)
    m = mask.numpy() > 0
    start = metrics.ncc(template.numpy(), image.numpy(), m)
    for _ in range(3):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            warped, affines, warps = [], [], []
            for i, s in enumerate(subjects):
                affines.append(f"{tmp}/a{i}.mat")
                warps.append(f"{tmp}/w{i}.nii.gz")
                warped.append(
                    register(template, s, params, affines[-1], warps[-1], f"{tmp}/iw{i}.nii.gz")
                )
            template, _ = shape_update(average_images(warped), affines, warps, 1.0)
    end = metrics.ncc(template.numpy(), image.numpy(), m)
    # measured: plain mean 0.93, template 0.98-0.99; the template must recover most of the
    # sharpness lost by averaging (an error of at most a third of the plain mean's)
    assert end > 0.97
    assert 1 - end < (1 - start) / 3
