"""Every bad input the workflow rejects when it is parsed, end to end (issue 16, item 7).

One row per fault: the Snakefile is dry-run (``snakemake -n``) with a config merged over
``config/config.yaml`` on a small BIDS dataset made in ``tmp_path``; each row asserts the
exact lines Snakemake prints (the schema's ``ValidationError`` on stdout, or the
``atlas: <message>`` line of ``workflow/rules/common.smk`` on stderr), a non-zero exit,
and that neither the output nor the work folder was created. The checks themselves are
unit-tested in ``tests/unit/test_inputs.py``, ``test_bids.py`` and the plan tests; this
table is the user's view of them. Parse-only runs take a few seconds each.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _save(path: Path, data, codes: bool = True) -> Path:
    img = nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4))
    if not codes:
        img.set_qform(None, code=0)
        img.set_sform(None, code=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _brain(seed=0):
    return np.random.default_rng(seed).random((6, 7, 8))


def _dataset(root: Path, images: dict | None = None, participants: str | None = None) -> Path:
    """BIDS folder with ``images``: {"sub-X[/ses-Y]": data or (data, codes)}, file names
    made from the folders; default two good subjects."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "bad inputs", "BIDSVersion": "1.9.0"})
    )
    images = {"sub-01": _brain(0), "sub-02": _brain(1)} if images is None else images
    for subdir, data in images.items():
        data, codes = data if isinstance(data, tuple) else (data, True)
        name = subdir.replace("/", "_") + "_T1w.nii.gz"
        _save(root / subdir / "anat" / name, data, codes)
    if participants is not None:
        (root / "participants.tsv").write_text(participants)
    return root


def _t1w(root: Path, subdir: str) -> str:
    return str(root / subdir / "anat" / (subdir.replace("/", "_") + "_T1w.nii.gz"))


# Each case: tmp -> (config override, lines printed). A line is matched whole.
def _schema(override, *lines):
    return lambda tmp: (override | {"bids_dir": str(_dataset(tmp / "ds"))}, list(lines))


def _atlas(build):
    """Case whose message is printed by common.smk as ``atlas: <message>`` on stderr."""

    def case(tmp):
        override, message = build(tmp)
        return override, [f"atlas: {message}"]

    return case


def _every_image_bad(tmp):
    subs = {
        "sub-const": np.ones((4, 4, 4)),
        "sub-fourd": np.random.default_rng(0).random((4, 4, 4, 3)),
        "sub-nan": np.where(_brain() > 0.5, np.nan, _brain()),
        "sub-noform": (_brain(), False),
        "sub-zero": np.zeros((4, 0, 4)),
    }
    root = _dataset(tmp / "ds", subs)
    p = {s: _t1w(root, s) for s in subs}
    why = [
        f"{p['sub-const']}: image is constant (1.0)",
        f"{p['sub-fourd']}: expected a 3D image, got shape (4, 4, 4, 3)",
        f"{p['sub-nan']}: {int(np.sum(_brain() > 0.5))} NaN/Inf voxels",
        f"{p['sub-noform']}: neither qform nor sform is set; world coordinates unknown",
        f"{p['sub-zero']}: zero-size dimension in shape (4, 0, 4)",
    ]
    return (
        {"bids_dir": str(root), "on_bad_subject": "skip"},
        "every T1w image failed validation: " + "; ".join(why),
    )


def _hostile(tmp):
    root = _dataset(tmp / "ds")
    folder = "sub-x;touch INJECTED"
    _save(root / folder / "anat" / f"{folder}_T1w.nii.gz", _brain(3))
    return (
        # an invalid name is an error even when bad subjects are skipped
        {"bids_dir": str(root), "on_bad_subject": "skip"},
        f"{str(root / folder)!r}: not a BIDS subject folder name (sub-<label>, label of "
        "letters and digits only); rename or remove the folder",
    )


def _trailing_space(tmp):
    """``sub-01 `` would be read as subject 01 and replace ``sub-01``."""
    root = _dataset(tmp / "ds")
    _save(root / "sub-01 " / "anat" / "sub-01_T1w.nii.gz", _brain(4))
    return (
        {"bids_dir": str(root)},
        f"{str(root / 'sub-01 ')!r}: not a BIDS subject folder name (sub-<label>, label of "
        "letters and digits only); rename or remove the folder",
    )


def _session_folder(tmp):
    root = _dataset(tmp / "ds", {"sub-01/ses-1": _brain(0), "sub-01/ses-2$(id)": _brain(1)})
    return (
        {"bids_dir": str(root), "session": "all"},
        f"{str(root / 'sub-01' / 'ses-2$(id)')!r}: not a BIDS session folder name "
        "(ses-<label>, label of letters and digits only); rename or remove the folder",
    )


def _case_collision(tmp):
    root = _dataset(tmp / "ds", {"sub-A": _brain(0), "sub-a": _brain(1)})
    return (
        {"bids_dir": str(root)},
        f"{_t1w(root, 'sub-A')!r} (sub-A) and {_t1w(root, 'sub-a')!r} (sub-a) map to the "
        "same output name (output names are compared without case); rename one subject or "
        "session folder",
    )


CASES = {
    # --- config: schema (Snakefile `validate`) ---
    "unknown key": _schema(
        {"bogus_key": 1},
        "ValidationError: Additional properties are not allowed ('bogus_key' was unexpected)",
    ),
    "wrong type": _schema(
        {"resolution": "two"},
        "ValidationError: 'two' is not of type 'number'",
        "On instance['resolution']:",
    ),
    "unknown choice": _schema(
        {"template": {"average": "mode"}},
        "ValidationError: 'mode' is not one of ['mean', 'median', 'normalized_mean']",
        "On instance['template']['average']:",
    ),
    "convergence iterations 0": _schema(
        {"template": {"convergence": {"iterations": 0}}},
        "ValidationError: 0 is less than the minimum of 1",
        "On instance['template']['convergence']['iterations']:",
    ),
    # --- config: plan checks (common.smk, segment_common.smk, learned_common.smk) ---
    "syn_iterations 0": _atlas(
        lambda tmp: (
            {"template": {"syn_iterations": 0}, "bids_dir": str(_dataset(tmp / "ds"))},
            "config key template.syn_iterations: at least one SyN iteration is needed",
        )
    ),
    "nonexistent reference": _atlas(
        lambda tmp: (
            {"bids_dir": str(_dataset(tmp / "ds")), "reference": str(tmp / "ref.nii.gz")},
            f"config key reference: {tmp / 'ref.nii.gz'}: file does not exist",
        )
    ),
    "nonexistent bids_dir": _atlas(
        lambda tmp: (
            {"bids_dir": str(tmp / "nope")},
            f"config key bids_dir: folder {str(tmp / 'nope')!r} does not exist",
        )
    ),
    "empty bids_dir": _atlas(
        lambda tmp: (
            {"bids_dir": str((tmp / "empty").mkdir() or tmp / "empty")},
            f"config key bids_dir: folder {tmp / 'empty'} is empty",
        )
    ),
    "no T1w image": _atlas(
        lambda tmp: (
            {"bids_dir": str(_dataset(tmp / "ds", {}))},
            f"config key bids_dir: no T1w image found in {tmp / 'ds'} with the filters",
        )
    ),
    "missing session": _atlas(
        lambda tmp: (
            {"bids_dir": str(_dataset(tmp / "ds")), "session": "pre"},
            "config key session: no T1w image with session 'pre'",
        )
    ),
    "atlas list without label table": _atlas(
        lambda tmp: (
            {
                "bids_dir": str(_dataset(tmp / "ds")),
                "segmentation": {"atlases": [{"t1w": "/x/a_T1w.nii.gz", "dseg": "/x/a.nii.gz"}]},
            },
            "config key segmentation.label_table: needed for a list of atlases",
        )
    ),
    "learned source without participants": _atlas(
        lambda tmp: (
            {
                "bids_dir": str(_dataset(tmp / "ds")),
                "learned": {"enabled": True, "source": str(tmp / "nope")},
            },
            f"config key learned.source: no participants.tsv in {str(tmp / 'nope')!r}",
        )
    ),
    # --- images and dataset ---
    "NaN image": _atlas(
        lambda tmp: (
            {"bids_dir": str(_dataset(tmp / "ds", {"sub-01": np.full((4, 4, 4), np.nan)}))},
            f"{_t1w(tmp / 'ds', 'sub-01')}: 64 NaN/Inf voxels",
        )
    ),
    "constant, 4D, NaN, no qform/sform, zero-size (skip)": _atlas(_every_image_bad),
    "duplicated participant_id": _atlas(
        lambda tmp: (
            {
                "bids_dir": str(
                    _dataset(tmp / "ds", participants="participant_id\tage\nsub-01\t3\nsub-01\t4\n")
                )
            },
            f"{tmp / 'ds' / 'participants.tsv'}: duplicated participant_id sub-01",
        )
    ),
    "hostile subject folder": _atlas(_hostile),
    "subject folder with a trailing space": _atlas(_trailing_space),
    "hostile session folder": _atlas(_session_folder),
    "names differing only in case": _atlas(_case_collision),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_stops_before_any_job(tmp_path, case, run_workflow):
    override, lines = CASES[case](tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    config = {"output_dir": str(out), "work_dir": str(work)} | override
    proc = run_workflow(tmp_path, config, ["-n"], check=False)
    printed = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    for line in lines:
        assert line in printed, f"{line!r} not printed:\n{proc.stdout[-2000:]}{proc.stderr}"
    assert not out.exists() and not work.exists()
    # no name reached a shell: `sub-x;touch INJECTED` created nothing
    assert not list(tmp_path.rglob("INJECTED")) and not (ROOT / "INJECTED").exists()
