"""Tests for atlas.segmentation: label tables, atlas checks, propagation, fusion, volumes, QC.

Everything runs on small synthetic arrays except ``test_miccai2012_two_atlas_segmentation``,
which labels one MICCAI 2012 subject from two others at 3 mm.
"""

from __future__ import annotations

import os
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nipype.algorithms.metrics import Overlap

from atlas import segmentation as seg
from atlas.metrics import dice, mean_dice

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
MICCAI = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "miccai2012"


def _write_table(path: Path, rows: list[tuple]) -> Path:
    lines = ["index\tname\tclass"] + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def table(tmp_path) -> pd.DataFrame:
    rows = [(1, "Left Putamen", "GM"), (2, "Left Cerebral White Matter", "WM")]
    rows += [(3, "CSF", "CSF"), (4, "Left vessel", "None")]
    return seg.read_label_table(_write_table(tmp_path / "dseg.tsv", rows))


def _labelled_phantom(rng: np.random.Generator, shape=(16, 16, 16)):
    """Nested cubes (labels 1, 2) with label-dependent intensity plus texture noise."""
    labels = np.zeros(shape, dtype=np.int64)
    labels[3:13, 3:13, 3:13] = 1
    labels[6:10, 6:10, 6:10] = 2
    image = labels * 100.0 + rng.normal(0.0, 20.0, shape)
    return image, labels


# ------------------------------------------------------------------------------ label tables


def test_read_label_table_classes(table):
    assert table["index"].tolist() == [1, 2, 3, 4]
    assert table["class"].tolist()[:3] == ["GM", "WM", "CSF"]
    assert pd.isna(table["class"].iloc[3])  # "None" means unclassified


def test_label_table_rejects_duplicates(tmp_path):
    path = _write_table(tmp_path / "dup.tsv", [(1, "A", ""), (1, "B", ""), (2, "B", "")])
    with pytest.raises(ValueError, match=r"dup\.tsv.*duplicate label index values \[1\]"):
        seg.read_label_table(path)
    path = _write_table(tmp_path / "dupname.tsv", [(1, "A", ""), (2, "A", "")])
    with pytest.raises(ValueError, match=r"dupname\.tsv.*duplicate label name values \['A'\]"):
        seg.read_label_table(path)


# ------------------------------------------------------------------------------ validation


def _save(tmp_path: Path, name: str, arr: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=None):
    img = ants.from_numpy(arr.astype(np.float32), spacing=spacing, origin=origin or (0, 0, 0))
    path = tmp_path / name
    ants.image_write(img, str(path))
    return path


def test_validate_atlas_accepts_good_atlas(tmp_path, table):
    labels = np.zeros((6, 6, 6))
    labels[2:4, 2:4, 2:4] = 2
    t1w = _save(tmp_path, "t1w.nii.gz", labels + 1)
    seg.validate_atlas(t1w, _save(tmp_path, "dseg.nii.gz", labels), table)


def test_validate_atlas_rejects_grid_mismatch(tmp_path, table):
    labels = np.ones((6, 6, 6))
    t1w = _save(tmp_path, "t1w.nii.gz", labels, origin=(0.0, 0.0, 5.0))
    dseg = _save(tmp_path, "dseg.nii.gz", labels)
    with pytest.raises(ValueError, match=r"dseg\.nii\.gz and .*t1w\.nii\.gz.*origin"):
        seg.validate_atlas(t1w, dseg, table)
    t1w = _save(tmp_path, "t1w_2mm.nii.gz", labels, spacing=(2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="spacing"):
        seg.validate_atlas(t1w, dseg, table)


def test_validate_atlas_lists_missing_ids(tmp_path, table):
    labels = np.zeros((6, 6, 6))
    labels[0, 0, :3] = [1, 7, 9]
    dseg = _save(tmp_path, "sub-01_dseg.nii.gz", labels)
    t1w = _save(tmp_path, "t1w.nii.gz", labels)
    with pytest.raises(ValueError, match=r"sub-01_dseg\.nii\.gz: label ids \[7, 9\] are not in"):
        seg.validate_atlas(t1w, dseg, table)


def test_validate_atlas_rejects_empty_label_map(tmp_path, table):
    zeros = np.zeros((6, 6, 6))
    dseg = _save(tmp_path, "empty_dseg.nii.gz", zeros)
    with pytest.raises(ValueError, match=r"empty_dseg\.nii\.gz: label map is empty"):
        seg.validate_atlas(_save(tmp_path, "t1w.nii.gz", zeros + 1), dseg, table)


# ------------------------------------------------------------------------------ fusion


def test_majority_vote_of_three_known_maps():
    a = np.array([1, 1, 2, 0, 3]).reshape(1, 1, 5)
    b = np.array([1, 2, 2, 0, 3]).reshape(1, 1, 5)
    c = np.array([2, 2, 2, 1, 0]).reshape(1, 1, 5)
    # voxel by voxel: {1,1,2}->1, {1,2,2}->2, {2,2,2}->2, {0,0,1}->0, {3,3,0}->3
    dseg, probseg = seg.fuse("majority", None, None, np.stack([a, b, c]), probseg=True)
    np.testing.assert_array_equal(dseg.ravel(), [1, 2, 2, 0, 3])
    np.testing.assert_allclose(probseg[2].ravel(), [1 / 3, 2 / 3, 1, 0, 0])
    np.testing.assert_allclose(sum(probseg.values()), 1.0)


def test_weighted_vote_and_jlf_pick_the_atlas_identical_to_the_target():
    rng = np.random.default_rng(0)
    target, truth = _labelled_phantom(rng)
    images, labels = [target], [truth]
    for _ in range(2):  # two agreeing but misregistered (shifted 3 voxels), noisy atlases
        image, lab = _labelled_phantom(rng)
        images.append(np.roll(image, 3, axis=0) + rng.normal(0, 40.0, target.shape))
        labels.append(np.roll(lab, 3, axis=0))
    images, labels = np.stack(images), np.stack(labels)

    majority, _ = seg.fuse("majority", target, images, labels)
    assert mean_dice(majority, truth) < 0.8  # the wrong pair outvotes the right atlas
    weighted, _ = seg.fuse("weighted", target, images, labels, radius=1)
    jlf, probs = seg.fuse("jlf", target, images, labels, radius=1, search_radius=1, probseg=True)
    assert mean_dice(weighted, truth) > 0.97
    assert mean_dice(jlf, truth) > 0.97
    assert set(probs) == {0, 1, 2}
    np.testing.assert_allclose(sum(probs.values()), 1.0, atol=1e-4)


def test_staple_agrees_with_consensus():
    rng = np.random.default_rng(1)
    _, truth = _labelled_phantom(rng)
    raters = []
    for _ in range(3):  # each rater flips 5 % of the voxels to a random label
        noisy = truth.copy()
        flip = rng.random(truth.shape) < 0.05
        noisy[flip] = rng.integers(0, 3, flip.sum())
        raters.append(noisy)
    raters = np.stack(raters)
    dseg, probseg = seg.fuse("staple", None, None, raters)
    assert probseg is None
    unanimous = (raters == raters[0]).all(axis=0)
    np.testing.assert_array_equal(dseg[unanimous], raters[0][unanimous])
    assert mean_dice(dseg, truth) > 0.97


def test_fuse_rejects_unknown_method_and_missing_intensities():
    labels = np.zeros((2, 4, 4, 4), dtype=int)
    with pytest.raises(ValueError, match="unknown fusion method 'vote'"):
        seg.fuse("vote", None, None, labels)
    with pytest.raises(ValueError, match="needs the target and atlas intensities"):
        seg.fuse("jlf", None, None, labels)


# ------------------------------------------------------------------------------ evaluation


def test_dice_hd95_volume_similarity_by_hand(tmp_path):
    ref = np.zeros((5, 5, 1), dtype=np.int64)
    pred = np.zeros_like(ref)
    ref[1:4, 1:4] = 1  # 3x3 square
    pred[1:4, 2:5] = 1  # the same square shifted one column
    ref[4, 0] = 2  # a label the prediction misses
    spacing = (1.0, 2.0, 1.0)  # columns are 2 mm apart
    scores = seg.evaluate_segmentation(pred, ref, spacing).set_index("label")
    # label 1: |A|=|B|=9, |A∩B|=6 (columns 2-3) -> Dice = 2*6/(9+9) = 2/3
    assert scores.loc[1, "dice"] == pytest.approx(2 / 3)
    # Surfaces are the 8-voxel rings (erosion leaves only the centre). Per surface voxel, the
    # distance to the other ring: 0 for the 4 shared voxels (rows 1 and 3, columns 2-3), 1 mm
    # for one middle-row voxel (a row step to a shared voxel), 2 mm (one column) for the other
    # 3 -- in both directions, so 16 distances: eight 0, two 1, six 2 mm.
    # np.percentile(.., 95) -> position 0.95*15 = 14.25 in the sorted list, which is 2 mm.
    assert scores.loc[1, "hd95_mm"] == pytest.approx(2.0)
    assert scores.loc[1, "volume_similarity"] == pytest.approx(1.0)  # 9 vs 9 voxels
    # label 2: Dice 2*0/(0+1) = 0, HD95 undefined (inf), VS = 1 - |0-1|/(0+1) = 0
    assert scores.loc[2, "dice"] == 0.0
    assert np.isinf(scores.loc[2, "hd95_mm"])
    assert scores.loc[2, "volume_similarity"] == 0.0

    # cross-check Dice against nipype's Overlap on the same maps written as NIfTI
    affine = np.diag([*spacing, 1.0])
    for name, arr in (("ref", ref), ("pred", pred)):
        nib.save(nib.Nifti1Image(arr.astype(np.int16), affine), tmp_path / f"{name}.nii.gz")
    overlap = Overlap(
        volume1=str(tmp_path / "pred.nii.gz"),
        volume2=str(tmp_path / "ref.nii.gz"),
        out_file=str(tmp_path / "diff.nii.gz"),
    ).run()
    ours = dice(pred, ref)
    for label, value in zip(overlap.outputs.labels, overlap.outputs.roi_di, strict=True):
        assert ours[int(label)] == pytest.approx(value)


def test_evaluation_figure():
    scores = pd.DataFrame({"method": ["jlf", "jlf", "majority"], "dice": [0.8, 0.7, 0.6]})
    fig = seg.plot_evaluation(scores, metric="dice", by="method")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["jlf", "majority"]


# ------------------------------------------------------------------------------ volumes, tissue


def test_structure_volumes_known_count_and_spacing(table):
    dseg = np.zeros((4, 4, 4), dtype=np.int64)
    dseg[0, 0, :3] = 1  # 3 voxels
    dseg[1:3, 1:3, 1:3] = 2  # 8 voxels
    spacing = (1.0, 2.0, 0.5)  # 1 mm^3 per voxel
    vols = seg.structure_volumes(dseg, spacing, table, "sub-01")
    assert vols.columns.tolist() == ["subject", "label", "name", "volume_mm3"]
    assert vols["volume_mm3"].tolist() == [3.0, 8.0, 0.0, 0.0]
    assert seg.brain_volume(dseg, (2.0, 2.0, 2.0)) == 11 * 8.0
    other = seg.structure_volumes(dseg, (2.0, 2.0, 2.0), table, "sub-02")
    wide = seg.volumes_wide(pd.concat([vols, other]))
    assert wide.loc["sub-02", "Left Putamen"] == 24.0
    fig = seg.plot_volumes_vs_age(
        pd.concat([vols, other]), {"sub-01": 30, "sub-02": 70}, ["Left Putamen", "CSF"]
    )
    assert len(fig.axes) == 2


def test_tissue_probseg_hard_and_soft(table):
    dseg = np.array([1, 2, 3, 4, 0]).reshape(1, 1, 5)
    hard = seg.tissue_probseg(dseg, table)  # channels CSF, GM, WM
    np.testing.assert_array_equal(
        hard[:, 0, 0], [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0]]
    )
    probseg = {
        1: np.full(dseg.shape, 0.5),
        2: np.full(dseg.shape, 0.25),
        4: np.full(dseg.shape, 0.25),
    }
    soft = seg.tissue_probseg(dseg, table, probseg=probseg)
    np.testing.assert_allclose(soft[:, 0, 0, 0], [0.0, 0.5, 0.25])  # label 4 has no class


def test_atropos_tissue_orders_classes_by_t1_intensity():
    rng = np.random.default_rng(2)
    truth = np.zeros((18, 18, 18), dtype=np.int64)
    truth[2:16, 2:16, 2:16] = 1  # CSF (dark on T1w)
    truth[4:14, 4:14, 4:14] = 2  # GM
    truth[7:11, 7:11, 7:11] = 3  # WM (bright)
    image = ants.from_numpy((truth * 100.0 + rng.normal(0, 10, truth.shape)).astype(np.float32))
    mask = ants.from_numpy((truth > 0).astype(np.float32))
    dseg, probseg = seg.atropos_tissue(image, mask)
    assert probseg.shape == (3, *truth.shape)
    assert mean_dice(dseg, truth) > 0.95


# ------------------------------------------------------------------------------ propagation, QC


def _transform_file(tmp_path: Path, name: str, matrix, translation) -> str:
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=np.asarray(matrix, float)
    )
    tx.set_parameters(np.concatenate([np.asarray(matrix, float).ravel(), translation]))
    path = str(tmp_path / name)
    ants.write_transform(tx, path)
    return path


def test_transform_chain_interpolates_once_in_the_documented_order(tmp_path):
    rng = np.random.default_rng(3)
    labels = ants.from_numpy(rng.integers(0, 5, (9, 9, 9)).astype(np.float32))
    # two non-commuting grid-aligned maps: a 90 degree rotation about the grid centre, and a
    # shift; with nearest-neighbour-exact geometry, composing must equal applying them in turn
    rot = _transform_file(tmp_path, "rot.mat", [[0, -1, 0], [1, 0, 0], [0, 0, 1]], [8, 0, 0])
    shift = _transform_file(tmp_path, "shift.mat", np.eye(3), [2, 1, 0])
    first = seg.TransformChain((rot,), (False,))
    second = seg.TransformChain((shift,), (False,))
    once = seg.propagate(labels, labels, first.then(second), labels=True).numpy()
    twice = seg.propagate(
        labels, seg.propagate(labels, labels, first, labels=True), second, labels=True
    ).numpy()
    assert first.then(second).paths == (shift, rot)
    np.testing.assert_array_equal(once, twice)
    reverse = seg.propagate(labels, labels, second.then(first), labels=True).numpy()
    assert not np.array_equal(once, reverse)


def test_label_interpolators_agree_on_a_grid_aligned_shift_and_unknown_ones_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, (9, 9, 9))
    image = ants.from_numpy(labels.astype(np.float32))
    # ANTs maps fixed points into the moving image: a +2 voxel x translation reads label(x + 2)
    shift = seg.TransformChain(
        (_transform_file(tmp_path, "s.mat", np.eye(3), [2, 0, 0]),), (False,)
    )
    for interpolation in seg.LABEL_INTERPOLATIONS:
        out = seg.propagate(image, image, shift, labels=True, label_interpolation=interpolation)
        np.testing.assert_array_equal(out.numpy()[:-2], labels[2:])
        assert not out.numpy()[-2:].any()  # mapped outside the moving image
    with pytest.raises(ValueError, match="label_interpolation 'linear'"):
        seg.propagate(image, image, shift, labels=True, label_interpolation="linear")


@pytest.mark.parametrize(
    ("radius_mm", "spacing", "voxels"),
    [
        (2.0, (1.0, 1.0, 1.0), 2),
        (3.0, (1.0,) * 3, 3),
        (3.0, (2.0,) * 3, 2),
        (2.0, (4.0,) * 3, 1),
        (3.0, (4.0,) * 3, 1),
        (0.0, (1.0,) * 3, 1),
        (3.0, (1.0, 1.0, 3.0), 3),
    ],
)
def test_radius_voxels_keeps_physical_size_and_at_least_one_voxel(radius_mm, spacing, voxels):
    assert seg.radius_voxels(radius_mm, spacing) == voxels


def test_radius_voxels_rejects_negative_radius():
    with pytest.raises(ValueError, match="radius_mm >= 0"):
        seg.radius_voxels(-1.0, (1.0, 1.0, 1.0))


def test_segment_target_reports_atlases_failing_registration_qc(tmp_path):
    rng = np.random.default_rng(4)
    image, labels = _labelled_phantom(rng)
    target = ants.from_numpy(image.astype(np.float32))
    good = seg.Atlas("good", target, ants.from_numpy(labels.astype(np.float32)))
    noise = ants.from_numpy(rng.normal(0, 1, image.shape).astype(np.float32))
    bad = seg.Atlas("bad", noise, ants.from_numpy(np.roll(labels, 4, 0).astype(np.float32)))
    identity = seg.TransformChain(
        (_transform_file(tmp_path, "id.mat", np.eye(3), [0, 0, 0]),), (False,)
    )
    mask = ants.from_numpy(np.ones(image.shape, dtype=np.float32))
    with pytest.warns(UserWarning, match=r"\['bad'\] failed registration QC"):
        result = seg.segment_target(
            target, [good, bad], method="majority", mask=mask, transforms=[identity] * 2
        )
    assert result.qc["passed"].tolist() == [True, False]
    assert result.qc.loc[0, "ncc"] == pytest.approx(1.0)
    np.testing.assert_array_equal(result.dseg.numpy(), labels)
    with pytest.raises(seg.RegistrationQCError, match="only 1 of 2") as err:
        seg.segment_target(
            target,
            [good, bad],
            method="majority",
            mask=mask,
            transforms=[identity] * 2,
            min_atlases=2,
        )
    assert err.value.qc["atlas"].tolist() == ["good", "bad"]


@pytest.mark.filterwarnings("error")  # any atlas failing registration QC fails the test
def test_leave_one_out_on_identical_atlases(monkeypatch):
    # Tiny noisy phantoms make ANTs' randomly sampled metric fragile: unseeded, an identical pair
    # occasionally ends below the QC threshold, so fix the seed.
    monkeypatch.setenv("ANTS_RANDOM_SEED", "42")
    rng = np.random.default_rng(5)
    image, labels = _labelled_phantom(rng)
    atlas = [
        seg.Atlas(
            f"sub-0{i}",
            ants.from_numpy(image.astype(np.float32)),
            ants.from_numpy(labels.astype(np.float32)),
        )
        for i in range(3)
    ]
    scores = seg.leave_one_out(
        atlas, method="majority", registration={"type_of_transform": "Translation"}
    )
    assert scores["subject"].unique().tolist() == ["sub-00", "sub-01", "sub-02"]
    assert scores["dice"].min() > 0.99


# ------------------------------------------------------------------------------ real data


def _miccai_or_skip() -> Path:
    if not (MICCAI / "participants.tsv").exists():
        message = f"MICCAI 2012 data not found at {MICCAI.resolve()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return MICCAI


def _load_miccai(root: Path, subject: str, resolution: float) -> seg.Atlas:
    anat = f"{subject}/ses-1/anat/{subject}_ses-1"
    t1w = ants.image_read(str(root / f"{anat}_T1w.nii.gz"))
    dseg = ants.image_read(
        str(root / "derivatives/manual" / f"{anat}_desc-neuromorphometrics_dseg.nii.gz")
    )
    t1w = ants.resample_image(t1w, (resolution,) * 3, use_voxels=False, interp_type=0)
    dseg = ants.resample_image_to_target(dseg, t1w, interp_type="genericLabel")
    return seg.Atlas(subject, t1w, dseg)


def test_miccai2012_two_atlas_segmentation(monkeypatch):
    root = _miccai_or_skip()
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
    reference = target.dseg.numpy().round().astype(np.int64)
    score = mean_dice(result.dseg.numpy().round().astype(np.int64), reference)
    # Mean Dice over the ~130 structures at 3 mm, fusing 2 atlases by local-NCC weighted voting,
    # measured on this machine: 0.56 after affine+SyN (40x20x10), 0.46 after affine only, 0.40
    # with centre-of-mass alignment only. The 0.50 floor leaves 0.06 for registration noise and
    # still fails if the deformable stage is lost. (Weighted voting is used because JLF's patch
    # search partly hides registration errors: 0.63 after SyN but already 0.61 after affine.)
    assert score > 0.50
    assert result.qc["passed"].all()
