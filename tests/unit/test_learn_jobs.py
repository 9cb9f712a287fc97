"""Coordinate conventions of atlas.learn.jobs: ANTs (LPS) affines and warps <-> RAS arrays."""

import ants
import nibabel as nib
import numpy as np

from atlas.learn.jobs import read_normalisation_affine, read_warp, to_years, write_warp

FLIP = np.array([-1.0, -1.0, 1.0])


def test_ants_affine_becomes_ras_matrix_with_same_direction(tmp_path):
    """The converted matrix maps RAS points exactly where ANTs maps the LPS points."""
    rng = np.random.default_rng(0)
    matrix = np.eye(3) * 1.1 + 0.05 * rng.standard_normal((3, 3))
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=3,
        matrix=matrix,
        translation=[4.0, -7.0, 12.0],
        center=[10.0, -20.0, 5.0],
    )
    path = tmp_path / "a.mat"
    ants.write_transform(tx, str(path))
    m = read_normalisation_affine(path)
    assert m.shape == (4, 4)
    np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    for p_ras in rng.uniform(-80, 80, (5, 3)):
        expected = FLIP * np.asarray(tx.apply_to_point(FLIP * p_ras))
        np.testing.assert_allclose(
            m[:3, :3] @ p_ras + m[:3, 3], expected, atol=1e-4
        )  # float32 in antspy


def test_warp_is_ants_compatible_on_an_oblique_grid(tmp_path):
    """A one-voxel displacement along array axis 0, written by write_warp, makes ANTs
    pull each voxel from its neighbour along that axis, whatever the grid orientation;
    read_warp returns it as one voxel size (mm) along axis 0."""
    affine = np.array([[-2.0, 0, 0, 30], [0, 0, 2.0, -40], [0, 2.0, 0, 10], [0, 0, 0, 1]])
    rng = np.random.default_rng(1)
    data = rng.random((12, 10, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "img.nii.gz")
    disp = np.zeros((12, 10, 8, 3))
    disp[..., 0] = 1.0
    write_warp(disp, affine, tmp_path / "warp.nii.gz")
    img = ants.image_read(str(tmp_path / "img.nii.gz"))
    moved = ants.apply_transforms(img, img, [str(tmp_path / "warp.nii.gz")]).numpy()
    np.testing.assert_allclose(moved[2:-2, 2:-2, 2:-2], data[3:-1, 2:-2, 2:-2], atol=1e-5)
    u, zooms = read_warp(tmp_path / "warp.nii.gz")
    np.testing.assert_allclose(zooms, 2.0)
    np.testing.assert_allclose(u[..., 0], 2.0, atol=1e-6)
    np.testing.assert_allclose(u[..., 1:], 0.0, atol=1e-6)


def test_age_units():
    np.testing.assert_allclose(to_years([6, 24], "months"), [0.5, 2.0])
    np.testing.assert_allclose(to_years(30, "years"), 30.0)
