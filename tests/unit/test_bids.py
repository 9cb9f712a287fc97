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


@pytest.mark.parametrize(
    "subdir, name, offender, kind",
    [
        # pybids reads the label up to the first non-alphanumeric character: "x"
        (
            "sub-x;touch INJECTED",
            "sub-x;touch INJECTED_T1w.nii.gz",
            "sub-x;touch INJECTED",
            "subject folder",
        ),
        ("sub-a b", "sub-a_T1w.nii.gz", "sub-a b", "subject folder"),
        # trailing space: without the check this folder and sub-01 are one subject
        ("sub-01 ", "sub-01_T1w.nii.gz", "sub-01 ", "subject folder"),
        ("sub-a_b", "sub-a_b_T1w.nii.gz", "sub-a_b", "subject folder"),
        ("sub-é1", "sub-é1_T1w.nii.gz", "sub-é1", "subject folder"),
        ("sub-02/ses-1;rm -rf", "sub-02_ses-1_T1w.nii.gz", "ses-1;rm -rf", "session folder"),
        ("sub-02", "sub-02_acq-a$(id)_T1w.nii.gz", "sub-02_acq-a$(id)_T1w.nii.gz", "T1w file"),
        ("sub-02", "sub-02_T1w.nii.gz ", "sub-02_T1w.nii.gz ", "T1w file"),
    ],
)
def test_invalid_labels_stop_the_query(root, tmp_path, monkeypatch, subdir, name, offender, kind):
    """A folder or T1w file whose labels are not BIDS labels stops the query with one
    message naming it (repr, so spaces show), before pybids reads it leniently."""
    monkeypatch.chdir(tmp_path)
    _t1w(root, "sub-01_T1w.nii.gz", "sub-01")
    path = _t1w(root, name.strip(), subdir)  # nibabel cannot save a name ending in a space
    path = path.rename(path.with_name(name))
    bad = path if kind == "T1w file" else next(p for p in path.parents if p.name == offender)
    with pytest.raises(InputError) as err:
        find_t1w(root)
    message = str(err.value)
    assert message.startswith(f"{str(bad)!r}: not a BIDS {kind} name")
    assert "letters and digits only" in message and "more invalid names" not in message
    assert not list(tmp_path.rglob("INJECTED"))  # nothing was executed


def test_all_invalid_names_are_counted(root):
    _t1w(root, "sub-a b_T1w.nii.gz", "sub-a b")
    _t1w(root, "sub-c;d_T1w.nii.gz", "sub-c;d")
    with pytest.raises(InputError, match=r"/sub-a b'.* \(1 more invalid names\)$"):
        find_t1w(root)


def test_file_labels_must_match_their_folders(root):
    """sub-02/anat/sub-03_T1w.nii.gz would be read as sub-02 by pybids (the folder wins)."""
    path = _t1w(root, "sub-03_T1w.nii.gz", "sub-02")
    with pytest.raises(InputError) as err:
        find_t1w(root)
    assert str(err.value) == (
        f"{str(path)!r}: the subject/session labels of the file name do not match its "
        "folder sub-02; rename or move the file"
    )
    path.unlink()
    _t1w(root, "sub-02_ses-1_T1w.nii.gz", "sub-02")  # session entity without its folder
    with pytest.raises(InputError, match="do not match its folder sub-02;"):
        find_t1w(root)


def test_output_names_differing_only_in_case_collide(root):
    """sub-A and sub-a are distinct BIDS labels but one folder on macOS and Windows."""
    first = _t1w(root, "sub-A_T1w.nii.gz", "sub-A")
    second = _t1w(root, "sub-a_T1w.nii.gz", "sub-a")
    with pytest.raises(InputError) as err:
        find_t1w(root)
    assert str(err.value) == (
        f"{str(first)!r} (sub-A) and {str(second)!r} (sub-a) map to the same output name "
        "(output names are compared without case); rename one subject or session folder"
    )
    # selecting one of them is fine
    assert find_t1w(root, participant_label=["A"]).img.tolist() == ["sub-A"]


def test_valid_names_and_dot_files_pass(root):
    """Entities, runs, .nii, sidecars and macOS ._ files do not trip the name check."""
    _t1w(root, "sub-01_ses-pre_acq-mprage_run-2_T1w.nii", "sub-01/ses-pre")
    (root / "sub-01" / "ses-pre" / "anat" / "sub-01_ses-pre_acq-mprage_run-2_T1w.json").write_text(
        "{}"
    )
    (root / "sub-01" / "ses-pre" / "anat" / "._sub-01_ses-pre_T1w.nii.gz").write_bytes(b"")
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-pre\t30\n")
    assert find_t1w(root).img.tolist() == ["sub-01_ses-pre"]


def test_one_pybids_index_per_dataset_state(root, monkeypatch):
    """Parsing asks twice (template selection, longitudinal sessions): pybids indexes once,
    and again only when the dataset's T1w files change."""
    import atlas.bids

    calls = []
    query = atlas.bids._query_t1w
    monkeypatch.setattr(atlas.bids, "_query_t1w", lambda r: calls.append(r) or query(r))
    _t1w(root, "sub-01_ses-1_T1w.nii.gz", "sub-01/ses-1")
    assert find_t1w(root).img.tolist() == ["sub-01_ses-1"]
    find_t1w(root, session="all")
    assert len(calls) == 1
    _t1w(root, "sub-01_ses-2_T1w.nii.gz", "sub-01/ses-2")
    assert find_t1w(root, session="all").img.tolist() == ["sub-01_ses-1", "sub-01_ses-2"]
    assert len(calls) == 2


def test_pybids_answer_is_cached_on_disk_until_the_dataset_changes(root, tmp_path, monkeypatch):
    """A re-parse with the cache file (every cluster job) asks pybids nothing and gets the
    same table; an added or removed T1w file or an unreadable cache asks again."""
    import atlas.bids as bids

    for name, sub in [("sub-01_run-2_T1w.nii.gz", "sub-01"), ("sub-02_T1w.nii.gz", "sub-02")]:
        _t1w(root, name, sub)
    _t1w(root, "sub-01_ses-2_run-1_T1w.nii.gz", "sub-01/ses-2")
    cache = tmp_path / "cache" / "bids_t1w.json"
    first = find_t1w(root, session="all", cache=cache)
    queries = []
    real = bids._query_t1w
    monkeypatch.setattr(bids, "_query_t1w", lambda r: queries.append(r) or real(r))
    bids._T1W_TABLES.clear()  # a new process
    again = find_t1w(root, session="all", cache=cache)
    assert queries == []
    assert again.equals(first)
    bids._T1W_TABLES.clear()
    _t1w(root, "sub-03_T1w.nii.gz", "sub-03")
    assert len(find_t1w(root, session="all", cache=cache)) == len(first) + 1
    assert len(queries) == 1
    bids._T1W_TABLES.clear()
    (root / "sub-03" / "anat" / "sub-03_T1w.nii.gz").unlink()
    assert len(find_t1w(root, session="all", cache=cache)) == len(first)
    assert len(queries) == 2
    bids._T1W_TABLES.clear()
    cache.write_text("{not json")
    assert find_t1w(root, session="all", cache=cache).equals(first)
    assert len(queries) == 3
