"""The demo cohort generator: valid BIDS, reproducible, and never destroys user data."""

import hashlib

import pytest

from atlas import demo
from atlas.bids import find_t1w
from atlas.io import InputError


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_demo_is_valid_bids_and_reproducible(tmp_path):
    a = demo.make_demo_bids(tmp_path / "a", n_subjects=2, seed=3, spacing_mm=6.0)
    b = demo.make_demo_bids(tmp_path / "b", n_subjects=2, seed=3, spacing_mm=6.0)
    df = find_t1w(a)
    assert df.img.tolist() == ["sub-demo01", "sub-demo02"]
    assert df.age.between(20, 80).all() and df.sex.isin(["F", "M"]).all()
    assert _digest(a) == _digest(b)
    # an existing cohort is reused, not regenerated
    before = _digest(a)
    assert demo.make_demo_bids(a, n_subjects=5, seed=9) == a
    assert _digest(a) == before


def test_a_folder_that_is_not_a_demo_cohort_is_never_touched(tmp_path):
    user = tmp_path / "my_study"
    (user / "sub-01").mkdir(parents=True)
    precious = user / "sub-01" / "notes.txt"
    precious.write_text("irreplaceable")
    with pytest.raises(InputError, match="demo.dir"):
        demo.make_demo_bids(user, n_subjects=2, spacing_mm=6.0)
    assert precious.read_text() == "irreplaceable"


def test_an_empty_folder_is_used(tmp_path):
    (tmp_path / "empty").mkdir()
    out = demo.make_demo_bids(tmp_path / "empty", n_subjects=2, spacing_mm=6.0)
    assert (out / "participants.tsv").is_file()


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "synthetic_subject", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.make_demo_bids(tmp_path / "d", n_subjects=2, spacing_mm=6.0)
    assert list(tmp_path.iterdir()) == []
