import numpy as np
import pytest

from atlas import metrics


def test_ncc_identical_and_linear_map():
    rng = np.random.default_rng(0)
    a = rng.random((8, 9, 10))
    assert metrics.ncc(a, a) == pytest.approx(1.0, abs=1e-12)
    # NCC is invariant to a positive gain and offset, and flips sign for a negative gain
    assert metrics.ncc(a, 3 * a + 7) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ncc(a, -a) == pytest.approx(-1.0, abs=1e-12)
    # independent noise: |NCC| ~ 1/sqrt(n) = 0.03 for n = 720; 0.15 is > 4 sigma
    assert abs(metrics.ncc(a, rng.random(a.shape))) < 0.15


def test_ncc_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        metrics.ncc(np.zeros((2, 2)), np.zeros((2, 3)))


def test_mutual_information_equals_entropy_for_identical_images():
    # 4 equally frequent intensities -> H = log 4 nats; MI(a, a) = H(a)
    a = np.repeat(np.arange(4.0), 250)
    assert metrics.mutual_information(a, a, bins=4) == pytest.approx(np.log(4), rel=1e-9)
    b = np.random.default_rng(1).permutation(a)
    assert metrics.mutual_information(a, b, bins=4) < 0.05


def test_jacobian_of_uniform_scaling_and_folding():
    # u(x) = (s - 1) x with s = 1.1 in every axis -> det J = s^3 = 1.331 everywhere
    spacing = (2.0, 1.0, 1.5)
    grid = np.stack(
        np.meshgrid(
            *[np.arange(n) * d for n, d in zip((6, 7, 8), spacing, strict=True)], indexing="ij"
        ),
        -1,
    )
    det = metrics.jacobian_determinant(0.1 * grid, spacing)
    np.testing.assert_allclose(det, 1.1**3, rtol=1e-12)
    st = metrics.jacobian_stats(det)
    assert st["pct_nonpositive"] == 0.0
    assert st["std_log"] == pytest.approx(0.0, abs=1e-12)
    # u_x = -2 x: the map x -> -x reverses orientation, det = -1 in every voxel
    fold = np.zeros_like(grid)
    fold[..., 0] = -2 * grid[..., 0]
    assert (
        metrics.jacobian_stats(metrics.jacobian_determinant(fold, spacing))["pct_nonpositive"]
        == 100.0
    )


def test_dice_hand_computed_and_matches_nipype(tmp_path):
    a = np.zeros((4, 4, 4), int)
    b = np.zeros((4, 4, 4), int)
    a[:2] = 1  # 32 voxels
    b[:1] = 1  # 16 voxels, all inside a
    a[3, 0, 0] = 2
    # label 1: 2*16/(32+16) = 2/3; label 2 only in a: 0
    d = metrics.dice(a, b)
    assert d[1] == pytest.approx(2 / 3)
    assert d[2] == 0.0
    assert metrics.mean_dice(a, b) == pytest.approx(1 / 3)

    import nibabel as nib
    from nipype.algorithms.metrics import Overlap

    for name, arr in (("a", a == 1), ("b", b == 1)):
        nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.eye(4)), tmp_path / f"{name}.nii.gz")
    ov = Overlap(volume1=str(tmp_path / "a.nii.gz"), volume2=str(tmp_path / "b.nii.gz"))
    res = ov.run(cwd=str(tmp_path))
    assert res.outputs.dice == pytest.approx(d[1], abs=1e-5)  # nipype rounds to 5 decimals


def test_hd95_and_volume_similarity():
    a = np.zeros((1, 1, 20), bool)
    b = np.zeros((1, 1, 20), bool)
    a[0, 0, 2:5] = True
    b[0, 0, 2:5] = True
    assert metrics.hd95(a, b, spacing=2.0) == 0.0
    b[:] = False
    b[0, 0, 7:10] = True  # same run shifted by 5 voxels = 10 mm at 2 mm spacing
    # surfaces: a {2, 4}, b {7, 9}; distances a->b {5, 3}, b->a {3, 5} voxels; p95 = 5 vox
    assert metrics.hd95(a, b, spacing=2.0) == pytest.approx(10.0, rel=0.05)
    assert metrics.volume_similarity(a, b) == 1.0
    b[0, 0, 10] = True  # volumes 3 and 4: 1 - 1/7
    assert metrics.volume_similarity(a, b) == pytest.approx(1 - 1 / 7)


def test_sharpness_of_a_ramp():
    # intensity rises 3 units per voxel along x at 2 mm spacing -> 1.5 per mm
    ramp = np.broadcast_to(3.0 * np.arange(10)[:, None, None], (10, 4, 4))
    assert metrics.sharpness(ramp, spacing=2.0) == pytest.approx(1.5)


def test_hd95_equals_the_brute_force_surface_distance_percentile():
    """hd95 crops to the masks' bounding box; the value must equal the direct definition (all
    pairwise surface distances, anisotropic spacing), including masks touching the border."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    spacing = np.array([1.0, 1.5, 2.0])
    for shift in ((0, 0, 0), (3, -2, 1), (-5, 0, 0)):
        a = np.zeros((24, 20, 16), bool)
        a[:9, 4:12, 3:10] = True  # touches the x = 0 border
        a &= rng.random(a.shape) > 0.1
        b = np.roll(a, shift, axis=(0, 1, 2))
        surfaces = [m & ~ndimage.binary_erosion(m, border_value=0) for m in (a, b)]
        pa, pb = (np.argwhere(s) * spacing for s in surfaces)
        d = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
        expected = np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)
        assert metrics.hd95(a, b, spacing) == pytest.approx(expected, abs=1e-9)
