"""Bad input is refused with a message that names the file or key and the fault."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from atlas.bids import find_t1w, validate_images
from atlas.io import InputError, atomic_path, check_nifti


def _save(path, data, codes=True):
    img = nib.Nifti1Image(data, np.eye(4))
    if not codes:
        img.set_qform(None, code=0)
        img.set_sform(None, code=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _brain(seed=0):
    return np.random.default_rng(seed).random((6, 7, 8)).astype(np.float32)


def test_valid_image_passes(tmp_path):
    check_nifti(_save(tmp_path / "ok.nii.gz", _brain()))


@pytest.mark.parametrize(
    "data, codes, message",
    [
        (np.random.default_rng(0).random((4, 4, 4, 3)), True, "expected a 3D image"),
        (np.zeros((4, 0, 4)), True, "zero-size dimension"),
        (np.where(_brain() > 0.5, np.nan, _brain()), True, "NaN/Inf"),
        (np.full((4, 4, 4), np.inf), True, "NaN/Inf"),
        (np.ones((4, 4, 4)), True, "constant"),
        (_brain(), False, "neither qform nor sform"),
    ],
)
def test_bad_images_are_named(tmp_path, data, codes, message):
    path = _save(tmp_path / "bad.nii.gz", data, codes=codes)
    with pytest.raises(InputError, match=message) as err:
        check_nifti(path)
    assert str(path) in str(err.value)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti header at all"))
    with pytest.raises(InputError, match="corrupt.nii.gz: not a readable NIfTI"):
        check_nifti(bad)
    with pytest.raises(InputError, match="does not exist"):
        check_nifti(tmp_path / "missing.nii.gz")


def test_single_volume_4d_is_accepted(tmp_path):
    check_nifti(_save(tmp_path / "one.nii.gz", _brain()[..., None]))


def _bids(root, subjects, sessions=None, participants=None):
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.9.0"})
    )
    for i, sub in enumerate(subjects):
        for ses in sessions or [None]:
            d = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
            name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_T1w.nii.gz"
            _save(d / name, _brain(i))
    if participants is not None:
        (root / "participants.tsv").write_text(participants)
    return root


def test_find_t1w_sessions_and_ages(tmp_path):
    root = _bids(
        tmp_path / "ds",
        ["01", "02"],
        sessions=["2", "1"],
        participants="participant_id\tage\tsex\nsub-01\t30\tF\nsub-02\t40\tM\n",
    )
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t31\nses-2\t33\n")
    first = find_t1w(root)
    assert list(first.img) == ["sub-01_ses-1", "sub-02_ses-1"]
    assert list(first.subdir) == ["sub-01/ses-1", "sub-02/ses-1"]
    # sessions.tsv age wins over participants.tsv; sub-02 has no sessions.tsv
    assert list(first.age) == [31.0, 40.0]
    assert len(find_t1w(root, session="all")) == 4
    assert list(find_t1w(root, participant_label=["sub-02"]).subject) == ["02"]
    assert list(find_t1w(root, exclude_participant_label=["02"]).subject) == ["01"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "nope", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
        (lambda p: _bids(p / "ds", []), "no T1w image found"),
        (
            lambda p: _bids(
                p / "ds", ["01"], participants="participant_id\tage\nsub-01\t3\nsub-01\t4\n"
            ),
            "duplicated participant_id sub-01",
        ),
    ],
)
def test_bad_datasets(tmp_path, setup, message):
    with pytest.raises(InputError, match=message):
        find_t1w(setup(tmp_path))


def test_bad_subject_skip_or_fail(tmp_path):
    root = _bids(tmp_path / "ds", ["01", "02"])
    bad = root / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    _save(bad, np.full((4, 4, 4), np.nan, np.float32))
    table = find_t1w(root)
    with pytest.raises(InputError, match="sub-02_T1w.nii.gz: 64 NaN/Inf voxels"):
        validate_images(table, "fail")
    kept = validate_images(table, "skip")
    assert list(kept.img) == ["sub-01"]
    assert "NaN/Inf" in kept.attrs["excluded"]["sub-02"]


def test_atomic_path_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o044  # readable by group/others under a usual umask


def test_reference_space_labels():
    from atlas.preprocess.reference import reference_space

    assert reference_space("MNI152NLin2009aSym") == "MNI152NLin2009aSym"
    assert reference_space("cohort") == "MNI152NLin2009aSym"
    tpl = "/x/tpl-UNCBCP4DInfant_cohort-12_desc-brain_T1w.nii.gz"
    assert reference_space(tpl) == "UNCBCP4DInfantcohort12"
    assert reference_space("/data/my_ref.nii.gz") == "myref"
    with pytest.raises(ValueError, match="reference"):
        reference_space("/data/__.nii.gz")


def test_write_all_is_all_or_nothing(tmp_path):
    import pandas as pd

    from atlas import io

    def fail(obj, path):
        raise RuntimeError("disk full")

    writes = [(io.write_tsv, pd.DataFrame({"a": [1]}), tmp_path / "out1.tsv")]
    with pytest.raises(RuntimeError, match="disk full"):
        io.write_all([*writes, (fail, None, tmp_path / "out2.tsv")])
    assert list(tmp_path.iterdir()) == []
    io.write_all(writes)
    assert [p.name for p in tmp_path.iterdir()] == ["out1.tsv"]
