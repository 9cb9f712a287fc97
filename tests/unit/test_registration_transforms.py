"""LPS/RAS conventions of atlas.registration.transforms, checked against ANTs' own point
mapping (``ants.apply_transforms_to_points``) and image resampling."""

import ants
import nibabel as nib
import numpy as np
import pandas as pd

from atlas.registration.transforms import read_affine_ras, read_warp, write_warp

FLIP = np.array([-1.0, -1.0, 1.0])
OBLIQUE = np.array([[-2.0, 0, 0, 30], [0, 0, 2.0, -40], [0, 2.0, 0, 10], [0, 0, 0, 1]])


def _ants_points_ras(points_ras, transforms):
    """ANTs' mapping of RAS points through a transform list (ANTs works on LPS points)."""
    lps = pd.DataFrame(points_ras * FLIP, columns=["x", "y", "z"])
    out = ants.apply_transforms_to_points(3, lps, [str(t) for t in transforms])
    return out[["x", "y", "z"]].to_numpy() * FLIP


def _random_affine(path, seed=0):
    rng = np.random.default_rng(seed)
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=3,
        matrix=np.eye(3) * 1.1 + 0.05 * rng.standard_normal((3, 3)),
        translation=[4.0, -7.0, 12.0],
        center=[10.0, -20.0, 5.0],
    )
    ants.write_transform(tx, str(path))
    return tx


def test_affine_ras_matrix_maps_points_like_ants(tmp_path):
    """The RAS matrix of an ANTs affine (non-zero centre) maps RAS points exactly where
    ants.apply_transforms_to_points maps them (and where the transform object does)."""
    tx = _random_affine(tmp_path / "a.mat")
    m = read_affine_ras(tmp_path / "a.mat")
    assert m.shape == (4, 4)
    np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    points = np.random.default_rng(1).uniform(-80, 80, (6, 3))
    ours = points @ m[:3, :3].T + m[:3, 3]
    # antspy stores the parameters as float32
    np.testing.assert_allclose(ours, _ants_points_ras(points, [tmp_path / "a.mat"]), atol=1e-4)
    for p, q in zip(points, ours, strict=True):
        np.testing.assert_allclose(q, FLIP * np.asarray(tx.apply_to_point(FLIP * p)), atol=1e-4)


def test_written_warp_maps_points_like_ants_on_an_oblique_grid(tmp_path):
    """A smooth voxel displacement written by write_warp on a permuted, flipped grid moves
    each voxel centre p to p + A u(p) (A: the grid's voxel-to-world matrix) under ANTs'
    point mapping; read_warp returns it as mm along the array axes."""
    rng = np.random.default_rng(2)
    shape = (12, 10, 8)
    idx = np.indices(shape, dtype=float)
    disp = np.stack([0.5 * np.sin(idx[0] / 3), 0.3 * np.cos(idx[1] / 4), 0.2 + 0 * idx[2]], -1)
    write_warp(disp, OBLIQUE, tmp_path / "warp.nii.gz")
    voxels = rng.integers([1, 1, 1], np.array(shape) - 1, (8, 3))
    centres = voxels @ OBLIQUE[:3, :3].T + OBLIQUE[:3, 3]
    u_vox = disp[tuple(voxels.T)]
    expected = centres + u_vox @ OBLIQUE[:3, :3].T
    mapped = _ants_points_ras(centres, [tmp_path / "warp.nii.gz"])
    np.testing.assert_allclose(mapped, expected, atol=1e-4)
    u, zooms = read_warp(tmp_path / "warp.nii.gz")
    np.testing.assert_allclose(zooms, 2.0)
    np.testing.assert_allclose(u, disp * 2.0, atol=1e-6)


def test_warp_is_ants_compatible_on_an_oblique_grid(tmp_path):
    """A one-voxel displacement along array axis 0, written by write_warp, makes ANTs
    pull each voxel from its neighbour along that axis, whatever the grid orientation;
    read_warp returns it as one voxel size (mm) along axis 0."""
    rng = np.random.default_rng(1)
    data = rng.random((12, 10, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, OBLIQUE), tmp_path / "img.nii.gz")
    disp = np.zeros((12, 10, 8, 3))
    disp[..., 0] = 1.0
    write_warp(disp, OBLIQUE, tmp_path / "warp.nii.gz")
    written = nib.load(tmp_path / "warp.nii.gz")
    assert written.shape == (12, 10, 8, 1, 3)
    assert written.header.get_intent()[0] == "vector"
    img = ants.image_read(str(tmp_path / "img.nii.gz"))
    moved = ants.apply_transforms(img, img, [str(tmp_path / "warp.nii.gz")]).numpy()
    np.testing.assert_allclose(moved[2:-2, 2:-2, 2:-2], data[3:-1, 2:-2, 2:-2], atol=1e-5)
    u, zooms = read_warp(tmp_path / "warp.nii.gz")
    np.testing.assert_allclose(zooms, 2.0)
    np.testing.assert_allclose(u[..., 0], 2.0, atol=1e-6)
    np.testing.assert_allclose(u[..., 1:], 0.0, atol=1e-6)


def test_sitk_jacobian_and_resampling_match_ants_on_an_oblique_grid(tmp_path):
    """The ANTs-free final job's pieces on a permuted, flipped grid. jacobian_determinant_sitk
    equals the finite-difference det(I + du/dp) of the voxel displacement to rounding (the
    determinant does not depend on the grid's orientation), is within 0.01 of the analytic
    determinant inside the grid (central differences: error about h^2/6 times the third
    derivative, ~0.01 for these waves of 3-5 voxels; 0.0055 measured, ANTs 0.027) and agrees
    with ANTs' CreateJacobianDeterminantImage on average (0.002 measured; bound 0.005).
    forward_transform_sitk resamples as ants.apply_transforms([warp, affine])."""
    import SimpleITK as sitk

    from atlas.io import read_sitk
    from atlas.metrics import jacobian_determinant
    from atlas.registration.transforms import forward_transform_sitk, jacobian_determinant_sitk

    shape = (16, 14, 12)
    x, y, z = np.indices(shape, dtype=float)
    disp = np.stack(
        [
            0.6 * np.sin(x / 3) * np.cos(y / 5),
            0.4 * np.cos(y / 4) * np.sin(z / 4),
            0.3 * np.sin(z / 3 + x / 6),
        ],
        -1,
    )
    grad = np.zeros(shape + (3, 3))
    grad[..., 0, 0] = 0.6 * np.cos(x / 3) / 3 * np.cos(y / 5)
    grad[..., 0, 1] = -0.6 * np.sin(x / 3) * np.sin(y / 5) / 5
    grad[..., 1, 1] = -0.4 * np.sin(y / 4) / 4 * np.sin(z / 4)
    grad[..., 1, 2] = 0.4 * np.cos(y / 4) * np.cos(z / 4) / 4
    grad[..., 2, 0] = 0.3 * np.cos(z / 3 + x / 6) / 6
    grad[..., 2, 2] = 0.3 * np.cos(z / 3 + x / 6) / 3
    analytic = np.linalg.det(np.eye(3) + grad)
    write_warp(disp, OBLIQUE, tmp_path / "warp.nii.gz")
    data = np.random.default_rng(3).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, OBLIQUE), tmp_path / "img.nii.gz")
    det = jacobian_determinant_sitk(read_sitk(tmp_path / "warp.nii.gz", vector=True))
    det = det.transpose(2, 1, 0)  # SimpleITK (z, y, x) -> array axes of the NIfTI
    np.testing.assert_allclose(det, jacobian_determinant(disp, 1.0), atol=1e-5)
    inner = (slice(1, -1),) * 3
    assert np.abs(det - analytic)[inner].max() < 0.01
    img = ants.image_read(str(tmp_path / "img.nii.gz"))
    ants_det = ants.create_jacobian_determinant_image(img, str(tmp_path / "warp.nii.gz")).numpy()
    assert np.abs(det - ants_det)[inner].mean() < 0.005
    affine = tmp_path / "a.mat"
    _random_affine(affine)
    expected = ants.apply_transforms(img, img, [str(tmp_path / "warp.nii.gz"), str(affine)])
    tx = forward_transform_sitk(affine, tmp_path / "warp.nii.gz")
    moving = read_sitk(tmp_path / "img.nii.gz")
    moved = sitk.GetArrayFromImage(sitk.Resample(moving, moving, tx, sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(moved.transpose(2, 1, 0), expected.numpy(), atol=1e-4)
