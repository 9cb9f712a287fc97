"""Cohorts of atlas.learn.data: the one loader, BIDS datasets found with pybids, disk layout."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from atlas.io import InputError
from atlas.learn.data import (
    find_bids_cohort,
    load_bids_cohort,
    load_cohort,
    sex_codes,
    to_disk,
    to_years,
)

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _write(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def _dataset(root, files: dict, participants: list[dict]):
    """A BIDS dataset: ``files`` maps relative paths to arrays; ``participants`` rows."""
    for rel, array in files.items():
        _write(root / rel, array)
    pd.DataFrame(participants).to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


def _slice(value, shape=(6, 5, 1)):
    return np.full(shape, value, dtype=np.float32)


def test_age_units():
    np.testing.assert_allclose(to_years([6, 24], "months"), [0.5, 2.0])
    np.testing.assert_allclose(to_years(30, "years"), 30.0)
    with pytest.raises(ValueError):
        to_years(3, "weeks")


def test_sex_codes_need_f_or_m_for_everyone():
    np.testing.assert_array_equal(sex_codes(["F", "M"]), [0.0, 1.0])
    assert sex_codes(["F", "n/a"]) is None
    assert sex_codes(None) is None


def test_to_disk_restores_singleton_axes_and_vector_layout():
    assert to_disk(np.zeros((6, 5)), (6, 5, 1)).shape == (6, 5, 1)
    assert to_disk(np.zeros((6, 5, 2)), (6, 5, 1), vector=True).shape == (6, 5, 1, 1, 2)
    with pytest.raises(ValueError, match="does not fit"):
        to_disk(np.zeros((5, 6)), (6, 5, 1))


def test_load_cohort_squeezes_slices_and_checks_the_grid(tmp_path):
    a = _write(tmp_path / "a.nii.gz", _slice(1.0))
    b = _write(tmp_path / "b.nii.gz", _slice(2.0))
    lab = _write(tmp_path / "a_dseg.nii.gz", np.ones((6, 5, 1), np.int16))
    cohort = load_cohort([a, b], [20, 30], sex=["F", "M"], subjects=["s1", "s2"], labels=[lab, lab])
    assert cohort.images.shape == (2, 6, 5) and cohort.disk_shape == (6, 5, 1)
    assert cohort.labels.dtype == np.int16
    np.testing.assert_array_equal(cohort.sex, [0.0, 1.0])
    np.testing.assert_allclose(cohort.spacing, [2.0, 2.0])
    shifted = np.array(AFFINE)
    shifted[0, 3] = 1.0
    c = _write(tmp_path / "c.nii.gz", _slice(3.0), shifted)
    with pytest.raises(ValueError, match="not on the grid"):
        load_cohort([a, c], [20, 30])
    with pytest.raises(ValueError, match="at least one"):
        load_cohort([], [])


def test_bids_cohort_matches_entities_sessions_and_nii(tmp_path):
    """Images in a session folder or as .nii are found; the label map is the one whose
    other entities (acq, ses) equal the image's; participants without image are skipped;
    another desc or a longer suffix is not taken for the image."""
    root = _dataset(
        tmp_path / "ds",
        {
            "sub-01/anat/sub-01_acq-slice_desc-norm_T1w.nii.gz": _slice(1.0),
            "sub-01/anat/sub-01_acq-slice_desc-orig_T1w.nii.gz": _slice(9.0),
            "sub-01/anat/sub-01_acq-slice_desc-seg4_dseg.nii.gz": _slice(1).astype(np.int16),
            "sub-01/anat/sub-01_acq-other_desc-seg4_dseg.nii.gz": _slice(7).astype(np.int16),
            "sub-02/ses-1/anat/sub-02_ses-1_acq-slice_desc-norm_T1w.nii": _slice(2.0),
            "sub-02/ses-1/anat/sub-02_ses-1_acq-slice_desc-seg4_dseg.nii": _slice(2).astype(
                np.int16
            ),
        },
        [
            {"participant_id": "sub-01", "age": 30, "sex": "F"},
            {"participant_id": "sub-02", "age": 70, "sex": "M"},
            {"participant_id": "sub-03", "age": 50, "sex": "M"},
        ],
    )
    files = find_bids_cohort(root, "desc-norm_T1w", "desc-seg4_dseg")
    assert list(files.subject) == ["sub-01", "sub-02"]
    assert files.image[1].endswith("sub-02_ses-1_acq-slice_desc-norm_T1w.nii")
    assert files.label[0].endswith("sub-01_acq-slice_desc-seg4_dseg.nii.gz")
    cohort = load_bids_cohort(root, "desc-norm_T1w", "desc-seg4_dseg")
    np.testing.assert_array_equal(cohort.images[:, 0, 0], [1.0, 2.0])
    np.testing.assert_array_equal(cohort.labels[:, 0, 0], [1, 2])
    np.testing.assert_array_equal(cohort.ages, [30, 70])
    np.testing.assert_array_equal(cohort.sex, [0.0, 1.0])
    only = load_bids_cohort(root, "desc-norm_T1w", None, subjects=["sub-02"])
    assert only.subjects == ["sub-02"] and only.labels is None


def test_bids_cohort_errors(tmp_path):
    root = _dataset(
        tmp_path / "ds",
        {"sub-01/anat/sub-01_desc-norm_T1w.nii.gz": _slice(1.0)},
        [{"participant_id": "sub-01", "age": 30}],
    )
    with pytest.raises(ValueError, match="missing label map"):
        find_bids_cohort(root, "desc-norm_T1w", "desc-seg4_dseg")
    with pytest.raises(FileNotFoundError, match="no \\*desc-brain_T1w"):
        find_bids_cohort(root, "desc-brain_T1w")
    with pytest.raises(InputError, match="learned.image_suffix"):
        find_bids_cohort(root, "foo-bar_T1w")
    assert load_bids_cohort(root, label_suffix=None).sex is None  # no sex column
    with pytest.raises(FileNotFoundError):
        find_bids_cohort(tmp_path / "missing", "desc-norm_T1w")
