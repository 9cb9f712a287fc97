"""Tests of atlas.segmentation.plan: the parse-time plan of workflow/rules/segment.smk.

Small synthetic BIDS datasets (a few 6x7x8 NIfTI files) stand in for labelled atlases; each
error names the config key at fault.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from atlas.bids import find_t1w
from atlas.io import InputError
from atlas.segmentation import plan

SEG = {
    "label_table": None,
    "fusion": "jlf",
    "label_interpolation": "nearestNeighbor",
    "patch_radius_mm": 2.0,
    "search_radius_mm": 3.0,
    "qc": {"min_ncc": 0.5, "min_atlases": 1},
    "evaluation": {"mode": "none", "methods": []},
    "volume_plot": [],
}


def _nifti(path: Path, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 3, (6, 7, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return str(path)


def _dataset(root: Path, scans: dict[str, list[str]], split: dict[str, str] | None = None):
    """BIDS dataset with T1w scans ``{subject: [sessions]}``, each with a label map in
    derivatives/manual (desc-m), a label table and optionally a ``challenge_split`` column."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9"}))
    for i, (sub, sessions) in enumerate(scans.items()):
        for ses in sessions:
            stem = f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}"
            _nifti(root / f"{stem}_T1w.nii.gz", i)
            _nifti(root / "derivatives/manual" / f"{stem}_desc-m_dseg.nii.gz", i)
    (root / "derivatives/manual/desc-m_dseg.tsv").write_text("index\tname\n1\tA\n2\tB\n")
    rows = ["participant_id\tchallenge_split"]
    rows += [f"sub-{s}\t{(split or {}).get(s, 'n/a')}" for s in scans]
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def _source(root: Path, **extra) -> dict:
    return {"bids_dir": str(root), "labels": "derivatives/manual", "desc": "m", **extra}


@pytest.fixture
def miccai_like(tmp_path) -> Path:
    """Subjects a (2 sessions), b, c, d; split: a, b train, c test, d unused."""
    scans = {"a": ["1", "2"], "b": ["1"], "c": ["1"], "d": ["1"]}
    split = {"a": "train", "b": "train", "c": "test", "d": "other"}
    return _dataset(tmp_path / "ds", scans, split)


# ------------------------------------------------------------------------------ find_atlases


def test_find_atlases_bids_rows_and_default_table(miccai_like):
    rows, table = plan.find_atlases(_source(miccai_like))
    ids = ["sub-a_ses-1", "sub-a_ses-2", "sub-b_ses-1", "sub-c_ses-1", "sub-d_ses-1"]
    assert rows["id"].tolist() == ids
    assert (rows["role"] == "atlas").all()
    assert rows["dataset"].unique().tolist() == [str(miccai_like.resolve())]
    dseg = "derivatives/manual/sub-a/ses-1/anat/sub-a_ses-1_desc-m_dseg.nii.gz"
    assert rows.loc[0, "dseg"] == str(miccai_like / dseg)
    assert table == miccai_like / "derivatives/manual/desc-m_dseg.tsv"


def test_find_atlases_split_roles(miccai_like):
    evaluation = {"mode": "split", "split_column": "challenge_split"}
    rows, _ = plan.find_atlases(_source(miccai_like), evaluation=evaluation)
    roles = dict(zip(rows["id"], rows["role"], strict=True))
    assert roles == {
        "sub-a_ses-1": "atlas",
        "sub-a_ses-2": "atlas",
        "sub-b_ses-1": "atlas",
        "sub-c_ses-1": "test",
    }  # sub-d (neither train nor test) is dropped


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ({"mode": "split", "split_column": "nope"}, "split_column: .* has no column 'nope'"),
        (
            {"mode": "split", "split_column": "challenge_split", "test": "x"},
            r"segmentation.evaluation: no test scan .*'x'",
        ),
    ],
)
def test_find_atlases_bad_split(miccai_like, evaluation, message):
    with pytest.raises(InputError, match=message):
        plan.find_atlases(_source(miccai_like), evaluation=evaluation)


def test_find_atlases_list_form(tmp_path):
    t1w = _nifti(tmp_path / "a1_T1w.nii.gz")
    dseg = _nifti(tmp_path / "a1_dseg.nii.gz")
    table = tmp_path / "t.tsv"
    table.write_text("index\tname\n1\tA\n2\tB\n")
    rows, path = plan.find_atlases([{"t1w": t1w, "dseg": dseg}], table)
    assert rows["id"].tolist() == ["a1"] and rows.loc[0, "dataset"] is None
    assert path == table
    with pytest.raises(InputError, match="segmentation.label_table: needed for a list"):
        plan.find_atlases([{"t1w": t1w, "dseg": dseg}])
    with pytest.raises(InputError, match="duplicate atlas ids"):
        plan.find_atlases([{"t1w": t1w, "dseg": dseg}] * 2, table)
    with pytest.raises(InputError, match=r"ids must be \[A-Za-z0-9_-\]"):
        plan.find_atlases([{"id": "a 1", "t1w": t1w, "dseg": dseg}], table)
    with pytest.raises(InputError, match="evaluation.mode: split needs atlases given as a BIDS"):
        plan.find_atlases([{"t1w": t1w, "dseg": dseg}], table, {"mode": "split"})
    with pytest.raises(InputError, match="missing_dseg.nii.gz: file does not exist"):
        plan.find_atlases([{"t1w": t1w, "dseg": str(tmp_path / "missing_dseg.nii.gz")}], table)
    table.write_text("index\tname\n1\tA\n1\tB\n")
    with pytest.raises(InputError, match="segmentation.label_table: .*duplicate label index"):
        plan.find_atlases([{"t1w": t1w, "dseg": dseg}], table)


# ------------------------------------------------------------------------------ who labels whom


@pytest.fixture
def labelled(miccai_like) -> pd.DataFrame:
    evaluation = {"mode": "split", "split_column": "challenge_split"}
    rows, _ = plan.find_atlases(_source(miccai_like), evaluation=evaluation)
    return rows.set_index("id", drop=False)


def test_same_scan_or_subject(labelled, tmp_path):
    atlas = labelled.loc["sub-a_ses-1"]
    root = atlas["dataset"]
    assert plan.same_scan_or_subject(atlas, None, None, atlas["t1w"])  # same file
    assert plan.same_scan_or_subject(atlas, root, "a", "elsewhere.nii.gz")  # rescan
    assert not plan.same_scan_or_subject(atlas, root, "b", "elsewhere.nii.gz")
    assert not plan.same_scan_or_subject(atlas, tmp_path, "a", "elsewhere.nii.gz")  # other data


def test_image_atlases_exclude_own_scan_and_rescans(miccai_like, labelled):
    images = find_t1w(miccai_like, ["a", "c"], [], "first")
    allowed = plan.image_atlases(labelled, images, miccai_like)
    assert allowed == {"sub-a_ses-1": ["sub-b_ses-1"], "sub-c_ses-1": plan.atlas_ids(labelled)}
    only_a = labelled[labelled["subject"] == "a"]
    with pytest.raises(InputError, match="no atlas left to label sub-a_ses-1"):
        plan.image_atlases(only_a, images[images["subject"] == "a"], miccai_like)


def test_evaluation_ids_per_mode(labelled):
    assert plan.evaluation_ids(labelled, "none") == []
    assert plan.evaluation_ids(labelled, "split") == ["sub-c_ses-1"]
    assert plan.evaluation_ids(labelled, "loo") == ["sub-a_ses-1", "sub-a_ses-2", "sub-b_ses-1"]
    with pytest.raises(InputError, match="loo needs at least two atlases"):
        plan.evaluation_ids(labelled[labelled["id"] == "sub-b_ses-1"], "loo")
    with pytest.raises(InputError, match="evaluation.mode: 'kfold'"):
        plan.evaluation_ids(labelled, "kfold")


def test_eval_atlases_leave_out_the_subject(labelled):
    assert plan.eval_atlases(labelled, "sub-a_ses-2") == ["sub-b_ses-1"]
    assert plan.eval_atlases(labelled, "sub-c_ses-1") == plan.atlas_ids(labelled)


def test_eval_images_match_by_resolved_path(miccai_like, labelled, tmp_path):
    images = find_t1w(miccai_like, ["c"], [], "first")
    assert plan.eval_images(labelled, ["sub-c_ses-1"], images) == {"sub-c_ses-1": "sub-c_ses-1"}
    # the same file reached through a symlinked dataset root is the same scan
    link = tmp_path / "link"
    link.symlink_to(miccai_like)
    images = find_t1w(link, ["c"], [], "first")
    assert plan.eval_images(labelled, ["sub-c_ses-1"], images) == {"sub-c_ses-1": "sub-c_ses-1"}
    assert plan.eval_images(labelled, ["sub-a_ses-1"], images) == {}


# ------------------------------------------------------------------------------ settings, targets


def test_fusion_settings_and_methods():
    assert plan.fusion_settings(SEG) == {
        "method": "jlf",
        "min_ncc": 0.5,
        "min_atlases": 1,
        "label_interpolation": "nearestNeighbor",
        "patch_radius_mm": 2.0,
        "search_radius_mm": 3.0,
    }
    assert plan.evaluation_methods(SEG) == ["jlf"]
    two = SEG | {"evaluation": {"mode": "loo", "methods": ["majority", "jlf"]}}
    assert plan.evaluation_methods(two) == ["majority", "jlf"]
    with pytest.raises(InputError, match="segmentation.fusion: 'vote'"):
        plan.fusion_settings(SEG | {"fusion": "vote"})
    with pytest.raises(InputError, match=r"evaluation.methods: \['vote'\]"):
        plan.evaluation_methods(SEG | {"evaluation": {"methods": ["vote"]}})


def test_check_volume_plot_names_known_structures(miccai_like):
    table = miccai_like / "derivatives/manual/desc-m_dseg.tsv"
    plan.check_volume_plot(["A", "total_GM"], table)
    with pytest.raises(InputError, match=r"segmentation.volume_plot: \['C'\]"):
        plan.check_volume_plot(["A", "C"], table)


def test_plan_segmentation_and_targets(miccai_like):
    images = find_t1w(miccai_like, ["c", "d"], [], "first")
    seg = SEG | {"atlases": _source(miccai_like, participant_label=["a", "b"])}
    result = plan.plan_segmentation(seg, images, miccai_like)
    assert result.atlases == ["sub-a_ses-1", "sub-a_ses-2", "sub-b_ses-1"]
    assert result.eval_ids == [] and result.eval_images == {}
    assert result.image_atlases["sub-d_ses-1"] == result.atlases
    assert result.eval_atlases("sub-a_ses-1") == ["sub-b_ses-1"]
    outputs = {g: [g] for g in ("table", "dseg", "probseg", "template", "group", "evaluation")}
    assert plan.segment_targets(result, outputs, probseg=False) == [
        "table",
        "dseg",
        "template",
        "group",
    ]
    loo = seg | {"evaluation": {"mode": "loo", "methods": []}}
    result = plan.plan_segmentation(loo, images, miccai_like)
    assert result.eval_ids == result.atlases
    assert plan.segment_targets(result, outputs, probseg=True)[-2:] == ["probseg", "evaluation"]
    assert plan.plan_segmentation(SEG | {"atlases": []}, images, miccai_like) is None
    assert plan.segment_targets(None, outputs, probseg=True) == []
    with pytest.raises(InputError, match="volume_plot"):
        plan.plan_segmentation(seg | {"volume_plot": ["nope"]}, images, miccai_like)
