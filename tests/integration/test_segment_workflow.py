"""Multi-atlas segmentation on MICCAI 2012 scans (issue 3): through the real Snakefile, and
the methods alone on three subjects (``test_miccai2012_two_atlas_segmentation``).

Two test-split scans are the workflow's images (targets) and three train-split scans are the
atlases, everything at 4 mm with a 1 affine + 1 SyN iteration template, direct route, joint
label fusion and leave-one-out evaluation over the atlases. About 1.5 minutes on 2 cores.

Fails (rather than skips) when ../shared/data is missing and the CI environment variable is set
(fixture ``shared_data`` in tests/conftest.py).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

TARGETS = ["OAS10040", "OAS10091"]  # challenge test split, ages 38 and 18
ATLASES = ["OAS10061", "OAS10080", "OAS10092"]  # challenge train split

# Mean Dice over the ~130 structures present in either map, on the 4 mm preprocessed grid, 3
# atlases fused by JLF (nearest-neighbour propagation, 2 mm patch / 3 mm search radii = 1 voxel
# each at 4 mm). Measured on this machine (seed 1, 1 thread per job): targets 0.607 (OAS10040)
# and 0.611 (OAS10091); leave-one-out folds (2 atlases each) 0.600, 0.615, 0.626. Broken
# propagation, measured on the same data with the former 2/3-voxel JLF radii: atlases not
# registered (identity) 0.12-0.25, the affine applied inverted 0.01-0.03. The 0.55 floor sits
# between, leaving 0.05 below the lowest measured value for thread-count and platform
# differences. It is not meant to detect a lost SyN stage (at 4 mm JLF's patch search makes up
# for much of it: affine-only 0.58-0.59 with the former radii).
DICE_FLOOR = 0.55

pytestmark = pytest.mark.integration


def _config(data, tmp, atlases, **segmentation) -> dict:
    """Workflow config: TARGETS (first session) at 4 mm, labelled by the first sessions of
    ``atlases`` (MICCAI 2012 manual labels), with the ``segmentation`` keys given."""
    atlas_source = {
        "bids_dir": str(data),
        "labels": "derivatives/manual",
        "desc": "neuromorphometrics",
        "participant_label": atlases,
        "session": "1",
    }
    return {
        "bids_dir": str(data),
        "participant_label": TARGETS,
        "session": "first",
        "output_dir": str(tmp / "out"),
        "work_dir": str(tmp / "work"),
        "resolution": 4.0,
        "segmentation": {"atlases": atlas_source, **segmentation},
    }


@pytest.fixture(scope="module")
def run(shared_data, tmp_path_factory, run_workflow):
    """Run the workflow once for all tests of this module; returns (output dir, data root)."""
    data = (shared_data / "miccai2012").resolve()
    tmp = tmp_path_factory.mktemp("segment")
    cfg = _config(
        data,
        tmp,
        ATLASES,
        route="direct",
        fusion="jlf",
        probseg=True,
        evaluation={"mode": "loo", "methods": ["jlf", "majority"]},
    )
    cfg |= {"threads_per_job": 1, "template": {"affine_iterations": 1, "syn_iterations": 1}}
    start = time.perf_counter()
    run_workflow(tmp, cfg)
    print(f"workflow wall time {time.perf_counter() - start:.0f} s")
    return tmp / "out", data


def _img(subject: str) -> tuple[str, str]:
    return f"sub-{subject}/ses-1/anat", f"sub-{subject}_ses-1"


def test_outputs_exist(run):
    out, _ = run
    for subject in TARGETS:
        folder, img = _img(subject)
        assert (out / folder / f"{img}_desc-jlf_dseg.nii.gz").is_file()
        assert (out / "figures" / f"{img}_desc-jlf_dseg.png").stat().st_size > 10_000
        for tissue in ("CSF", "GM", "WM"):
            assert (out / folder / f"{img}_label-{tissue}_desc-jlf_probseg.nii.gz").is_file()
    tpl = out / "tpl-atlas"
    assert (tpl / "tpl-atlas_res-4_dseg.nii.gz").is_file()
    assert (tpl / "tpl-atlas_dseg.tsv").is_file()
    for tissue in ("CSF", "GM", "WM"):
        assert (tpl / f"tpl-atlas_res-4_label-{tissue}_probseg.nii.gz").is_file()
    assert (out / "desc-jlf_dseg.tsv").is_file()
    for name in ("jlf_volumes", "jlfwide_volumes", "jlf_segmentationqc"):
        assert (out / "group" / f"desc-{name}.tsv").is_file(), name
    for name in ("fusion_evaluation", "fusionsummary_evaluation"):
        assert (out / "group" / f"desc-{name}.tsv").is_file(), name
    assert (out / "figures" / "desc-jlf_volumesage.png").stat().st_size > 0
    assert (out / "figures" / "desc-fusion_evaluation.png").stat().st_size > 0
    tidy = pd.read_csv(out / "group" / "desc-jlf_volumes.tsv", sep="\t")
    assert sorted(tidy["img"].unique()) == [_img(s)[1] for s in TARGETS]
    brain = tidy[tidy["name"] == "total_brain"].set_index("img")["volume_mm3"]
    assert brain.between(0.8e6, 2.0e6).all(), brain  # adult brains, mm^3
    qc = pd.read_csv(out / "group" / "desc-jlf_segmentationqc.tsv", sep="\t")
    assert len(qc) == len(TARGETS) * len(ATLASES) and qc["passed"].all()


def test_dseg_on_target_grid_and_dice(run):
    import ants

    from atlas.metrics import mean_dice
    from atlas.segmentation import check_same_grid

    out, data = run
    scores = []
    for subject in TARGETS:
        folder, img = _img(subject)
        preproc = ants.image_read(str(out / folder / f"{img}_desc-preproc_T1w.nii.gz"))
        dseg = ants.image_read(str(out / folder / f"{img}_desc-jlf_dseg.nii.gz"))
        check_same_grid(dseg, preproc, names=("dseg", "preprocessed T1w"))
        manual = ants.image_read(
            str(data / "derivatives/manual" / folder / f"{img}_desc-neuromorphometrics_dseg.nii.gz")
        )
        manual = ants.resample_image_to_target(manual, preproc, interp_type="genericLabel")
        to_int = lambda im: im.numpy().round().astype(np.int64)  # noqa: E731
        scores.append(mean_dice(to_int(dseg), to_int(manual)))
    print("target mean Dice", np.round(scores, 3))
    assert min(scores) > DICE_FLOOR


def test_leave_one_out_evaluation(run):
    """Both configured fusion methods are scored on every held-out atlas from one set of
    registrations; JLF clears the Dice floor, and beats majority voting on average (with two
    atlases per fold majority voting can only break ties arbitrarily; JLF weighs the atlases
    by local intensity similarity: 0.16-0.20 better per fold at 4 mm in our runs)."""
    out, _ = run
    summary = pd.read_csv(out / "group" / "desc-fusionsummary_evaluation.tsv", sep="\t")
    print(summary.to_string(index=False))
    for method in ("jlf", "majority"):
        rows = summary[summary["method"] == method]
        assert sorted(rows["subject"]) == [f"sub-{s}_ses-1" for s in ATLASES]
    by_method = summary.groupby("method")["mean_dice"].mean()
    assert (summary.loc[summary["method"] == "jlf", "mean_dice"] > DICE_FLOOR).all()
    assert by_method["jlf"] > by_method["majority"]
    table = pd.read_csv(out / "group" / "desc-fusion_evaluation.tsv", sep="\t")
    assert {"dice", "hd95_mm", "volume_similarity", "method"} <= set(table.columns)


def test_template_route_split_evaluation_reuses_the_template_build(
    shared_data, tmp_path, run_workflow
):
    """Template route, split evaluation whose test scans are the workflow's images: the plan
    registers only the atlases to the template (the test scans' template transforms come from
    the template build), each test scan's evaluation reads the template build's files, and
    each test scan is preprocessed once (its labelled-scan job takes the workflow image's
    preprocessing)."""
    data = (shared_data / "miccai2012").resolve()
    cfg = _config(data, tmp_path, ATLASES + TARGETS, route="template", evaluation={"mode": "split"})
    summary = tmp_path / "out" / "group" / "desc-fusionsummary_evaluation.tsv"
    plan = run_workflow(tmp_path, cfg, [summary, "--dry-run", "--quiet", "rules"]).stdout
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in plan.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert counts["segment_atlas_to_template"] == len(ATLASES), plan
    assert counts["segment_evaluate"] == len(TARGETS), plan
    assert counts["subject_final"] == len(TARGETS), plan
    jobs = run_workflow(tmp_path, cfg, [summary, "--dry-run"]).stdout.split("\nrule ")
    prepare_inputs = [
        j.split("input: ")[1].splitlines()[0]
        for j in jobs
        if j.startswith("segment_atlas_prepare:")
    ]
    assert len(prepare_inputs) == len(ATLASES + TARGETS)
    for subject in ATLASES + TARGETS:
        (inputs,) = [i for i in prepare_inputs if f"sub-{subject}_ses-1_T1w" in i]
        own = f"{tmp_path}/out/sub-{subject}/ses-1/anat/sub-{subject}_ses-1_desc-preproc_T1w"
        assert (own in inputs) == (subject in TARGETS), inputs


def _load_miccai(root, subject: str, resolution: float):
    import ants

    from atlas.segmentation import Atlas

    anat = f"{subject}/ses-1/anat/{subject}_ses-1"
    t1w = ants.image_read(str(root / f"{anat}_T1w.nii.gz"))
    dseg = ants.image_read(
        str(root / "derivatives/manual" / f"{anat}_desc-neuromorphometrics_dseg.nii.gz")
    )
    t1w = ants.resample_image(t1w, (resolution,) * 3, use_voxels=False, interp_type=0)
    dseg = ants.resample_image_to_target(dseg, t1w, interp_type="genericLabel")
    return Atlas(subject, t1w, dseg)


def test_miccai2012_two_atlas_segmentation(shared_data, monkeypatch):
    """The methods without the workflow: one subject labelled from two others at 3 mm."""
    from atlas import segmentation as seg
    from atlas.metrics import mean_dice
    from atlas.segmentation.labels import as_labels

    root = shared_data / "miccai2012"
    monkeypatch.setenv("ANTS_RANDOM_SEED", "42")
    table = seg.read_label_table(root / "derivatives/manual/desc-neuromorphometrics_dseg.tsv")
    target, *atlases = [
        _load_miccai(root, s, 3.0) for s in ("sub-OAS10061", "sub-OAS10080", "sub-OAS10092")
    ]
    seg.validate_atlas(target.image, target.dseg, table)
    result = seg.segment_target(
        target.image,
        atlases,
        method="weighted",
        registration={"type_of_transform": "SyN", "reg_iterations": (40, 20, 10)},
    )
    score = mean_dice(as_labels(result.dseg), as_labels(target.dseg))
    # Mean Dice over the ~130 structures at 3 mm, fusing 2 atlases by local-NCC weighted voting,
    # measured on this machine: 0.56 after affine+SyN (40x20x10), 0.46 after affine only, 0.40
    # with centre-of-mass alignment only. The 0.50 floor leaves 0.06 for registration noise and
    # still fails if the deformable stage is lost. (Weighted voting is used because JLF's patch
    # search partly hides registration errors: 0.63 after SyN but already 0.61 after affine.)
    assert score > 0.50
    assert result.qc["passed"].all()
