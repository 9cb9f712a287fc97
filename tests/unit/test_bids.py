"""BIDS edge cases of the input query: runs, acquisitions, .nii, session order, YAML ints."""

import json

import nibabel as nib
import numpy as np
import pytest

from atlas.bids import find_t1w
from atlas.io import InputError


def _t1w(root, name, subdir, seed=0):
    path = root / subdir / "anat" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random((5, 6, 7)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    description = {"Name": "t", "BIDSVersion": "1.9.0"}
    (root / "dataset_description.json").write_text(json.dumps(description))
    return root


def test_first_run_and_plain_acquisition_are_kept(root):
    _t1w(root, "sub-01_run-2_T1w.nii.gz", "sub-01")
    first = _t1w(root, "sub-01_run-1_T1w.nii.gz", "sub-01")
    _t1w(root, "sub-02_acq-fast_T1w.nii.gz", "sub-02")
    plain = _t1w(root, "sub-02_T1w.nii.gz", "sub-02")
    df = find_t1w(root)
    assert list(df.img) == ["sub-01", "sub-02"]
    assert df.set_index("img").path.to_dict() == {"sub-01": str(first), "sub-02": str(plain)}


def test_uncompressed_nifti_is_found(root):
    path = _t1w(root, "sub-01_T1w.nii", "sub-01")
    assert find_t1w(root).path.tolist() == [str(path)]


def test_sessions_are_ordered_by_number(root):
    """ses-2 comes before ses-10 (a string sort would make ses-10 the first session)."""
    for ses in ("10", "2", "baseline"):
        _t1w(root, f"sub-01_ses-{ses}_T1w.nii.gz", f"sub-01/ses-{ses}")
    assert find_t1w(root, session="first").session.tolist() == ["2"]
    assert sorted(find_t1w(root, session="all").session) == ["10", "2", "baseline"]
    assert find_t1w(root, session="ses-10").img.tolist() == ["sub-01_ses-10"]


def test_integer_labels_from_yaml_match_zero_padded_labels(root):
    """YAML reads ``participant_label: [01]`` as the integer 1: it selects sub-01."""
    for sub in ("01", "02", "10"):
        _t1w(root, f"sub-{sub}_ses-01_T1w.nii.gz", f"sub-{sub}/ses-01")
    assert find_t1w(root, participant_label=[1, "sub-10"]).subject.tolist() == ["01", "10"]
    assert find_t1w(root, exclude_participant_label=[2]).subject.tolist() == ["01", "10"]
    assert find_t1w(root, session=1).session.tolist() == ["01", "01", "01"]
    with pytest.raises(InputError, match="config key session"):
        find_t1w(root, session=2)
