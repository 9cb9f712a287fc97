"""Tests of the job functions of atlas.segmentation.jobs on small synthetic images.

Atlases are copies of one labelled phantom (nested cubes with label-dependent intensity plus
noise), so with identity transforms every atlas passes QC with NCC 1 and fusion must give
back the phantom's labels exactly. Jobs that write several outputs are checked to write none
of them when they fail.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from atlas.io import InputError
from atlas.registration import write_warp
from atlas.segmentation import RegistrationQCError, jobs

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (16, 16, 16)
FUSION = {
    "method": "majority",
    "min_ncc": 0.5,
    "min_atlases": 1,
    "label_interpolation": "nearestNeighbor",
    "patch_radius_mm": 1.0,
    "search_radius_mm": 1.0,
}


def _phantom(seed=0):
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[3:13, 3:13, 3:13] = 1
    labels[6:10, 6:10, 6:10] = 2
    labels[3:5, 3:5, 3:5] = 3
    image = labels * 100.0 + 50.0 * (labels > 0) + np.random.default_rng(seed).normal(0, 5, SHAPE)
    return image.astype(np.float32), labels


def _write(path: Path, array) -> str:
    ants.image_write(ants.from_numpy(np.asarray(array, dtype=np.float32)), str(path))
    return str(path)


def _read(path) -> np.ndarray:
    return ants.image_read(str(path)).numpy()


@pytest.fixture
def data(tmp_path) -> dict:
    """Target and two atlases (same phantom), identity affine and zero warp, label table."""
    image, labels = _phantom()
    d = {
        "image": _write(tmp_path / "target_T1w.nii.gz", image),
        "mask": _write(tmp_path / "target_mask.nii.gz", labels > 0),
        "dseg": _write(tmp_path / "target_dseg.nii.gz", labels),
        "labels": labels,
        "atlas_images": [_write(tmp_path / f"a{i}_T1w.nii.gz", image) for i in range(2)],
        "atlas_dsegs": [_write(tmp_path / f"a{i}_dseg.nii.gz", labels) for i in range(2)],
    }
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    d["affine"] = str(tmp_path / "identity.mat")
    ants.write_transform(tx, d["affine"])
    d["warp"] = str(
        write_warp(np.zeros((*SHAPE, 3)), nib.load(d["image"]).affine, tmp_path / "w.nii.gz")
    )
    d["table"] = tmp_path / "dseg.tsv"
    d["table"].write_text("index\tname\tclass\n1\tGrey\tGM\n2\tWhite\tWM\n3\tVessel\tn/a\n")
    return d


def _fusion_inputs(data, route="direct") -> dict:
    kw = {
        "table": data["table"],
        "atlas_images": data["atlas_images"],
        "atlas_dsegs": data["atlas_dsegs"],
        "atlas_affines": [data["affine"]] * 2,
        "atlas_warps": [data["warp"]] * 2,
        "atlas_ids": ["a0", "a1"],
    }
    if route == "template":
        kw |= {"target_affine": data["affine"], "target_inverse_warp": data["warp"]}
    return kw


def _probseg_paths(folder: Path, stem="x") -> list[str]:
    return [str(folder / f"{stem}_label-{t}_probseg.nii.gz") for t in ("CSF", "GM", "WM")]


def _no_files(folder: Path, pattern="out*") -> bool:
    return not list(folder.glob(pattern)) and not list(folder.glob(".*"))


# ------------------------------------------------------------------------------ conventions


def test_jobs_are_keyword_only_without_catch_alls():
    for name in jobs.__all__:
        params = inspect.signature(getattr(jobs, name)).parameters.values()
        assert all(p.kind is p.KEYWORD_ONLY for p in params), name


def test_fusion_settings_are_checked(tmp_path, data):
    with pytest.raises(ValueError, match=r"params.fusion: missing keys \['min_ncc'\], unknown"):
        jobs.fuse_target(
            image=data["image"],
            mask=data["mask"],
            out_dseg=str(tmp_path / "out_dseg.nii.gz"),
            out_qc=str(tmp_path / "out_qc.tsv"),
            name="sub-t",
            fusion={k: v for k, v in FUSION.items() if k != "min_ncc"} | {"min_nc": 0.5},
            **_fusion_inputs(data),
        )


def test_every_rule_step_names_a_job():
    rules = (ROOT / "workflow/rules/segment.smk").read_text()
    steps = set(re.findall(r'step="segmentation\.(\w+)"', rules))
    assert steps == set(jobs.__all__)


# ------------------------------------------------------------------------------ atlases


def _settings(**kw) -> dict:
    return {
        "resolution": 2.0,
        "skull_strip": "skip",
        "head_template": None,
        "head_mask": None,
        "intensity": "percentile",
        "max_brain_ml": 2500.0,
        "margin_mm": 2.0,
        "seed": 1,
    } | kw


def test_prepare_atlas_preprocesses_like_the_workflow_images(tmp_path, data):
    from atlas.preprocess.jobs import preprocess

    # a 24 mm head of 1 mm voxels: the preprocessed T1w is on a 2 mm grid
    image = np.pad(_phantom()[0] + 10.0, 4)
    labels = np.pad(data["labels"], 4)
    t1w = _write(tmp_path / "atlas_T1w.nii.gz", image)
    dseg = _write(tmp_path / "atlas_dseg.nii.gz", labels)
    outs = {k: str(tmp_path / f"out_{k}.nii.gz") for k in ("image", "mask", "dseg")}
    kw = {"t1w": t1w, "reference_image": t1w, "settings": _settings()}
    jobs.prepare_atlas(
        dseg=dseg, table=data["table"], **kw, **{f"out_{k}": v for k, v in outs.items()}
    )
    np.testing.assert_array_equal(_read(outs["dseg"]), labels)  # native grid, integers
    assert ants.image_read(outs["image"]).spacing == (2.0, 2.0, 2.0)
    assert set(np.unique(_read(outs["mask"]))) <= {0.0, 1.0}
    # the same preprocessing as the preprocess rule's job with the same settings
    ref = {k: str(tmp_path / f"ref_{k}") for k in ("image.nii.gz", "mask.nii.gz", "json")}
    preprocess(
        **kw, out_image=ref["image.nii.gz"], out_mask=ref["mask.nii.gz"], out_json=ref["json"]
    )
    np.testing.assert_array_equal(_read(outs["image"]), _read(ref["image.nii.gz"]))
    np.testing.assert_array_equal(_read(outs["mask"]), _read(ref["mask.nii.gz"]))


def test_prepare_atlas_takes_a_workflow_images_preprocessing(tmp_path, data, monkeypatch):
    """A held-out scan that is also a workflow image brings that image's preprocess outputs:
    they are copied, and the scan is not preprocessed again."""
    import atlas.preprocess.jobs as pjobs

    def refuse(*args, **kwargs):
        raise AssertionError("preprocessed twice")

    monkeypatch.setattr(pjobs, "preprocess_image", refuse)
    pre_image = _write(tmp_path / "pre_T1w.nii.gz", np.pad(data["labels"], 2) / 10.0)
    pre_mask = _write(tmp_path / "pre_mask.nii.gz", np.pad(data["labels"], 2) > 0)
    outs = {k: str(tmp_path / f"out_{k}.nii.gz") for k in ("image", "mask", "dseg")}
    jobs.prepare_atlas(
        t1w=data["image"],
        dseg=data["dseg"],
        table=data["table"],
        reference_image=data["image"],
        settings=_settings(),
        preprocessed_image=pre_image,
        preprocessed_mask=pre_mask,
        **{f"out_{k}": v for k, v in outs.items()},
    )
    np.testing.assert_array_equal(_read(outs["image"]), _read(pre_image))
    np.testing.assert_array_equal(_read(outs["mask"]), _read(pre_mask))
    np.testing.assert_array_equal(_read(outs["dseg"]), data["labels"])


def _loads_ants(code: str) -> bool:
    """Run ``code`` (a job call) in a fresh interpreter, as a Snakemake job runs; whether it
    imported ANTs."""
    import subprocess
    import sys

    code = f"import sys\n{code}\nprint('ants' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[-1] == "True"  # the last line: after a backend's own output


def test_prepare_atlas_copy_does_not_load_ants(tmp_path, data):
    """The copy of a workflow image's preprocessing runs without importing ANTs (about 2.5 CPU s
    per job): checked in a fresh interpreter, as a Snakemake job runs it."""
    pre = _write(tmp_path / "pre_T1w.nii.gz", np.pad(data["labels"], 2) / 10.0)
    files = {k: data[k] for k in ("dseg", "table")} | {"t1w": data["image"]}
    files |= {"reference_image": data["image"], "preprocessed_image": pre}
    files |= {"preprocessed_mask": pre} | {
        f"out_{k}": tmp_path / f"out_{k}.nii.gz" for k in ("image", "mask", "dseg")
    }
    kwargs = {k: str(v) for k, v in files.items()}
    code = "from atlas.segmentation.jobs import prepare_atlas\n"
    assert not _loads_ants(code + f"prepare_atlas(settings={{}}, **{kwargs!r})")
    assert Path(kwargs["out_dseg"]).exists()


def test_prepare_atlas_refuses_unknown_labels_and_writes_nothing(tmp_path, data):
    labels = data["labels"].copy()
    labels[0, 0, 0] = 9
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"label ids \[9\] are not in the label table"):
        jobs.prepare_atlas(
            t1w=data["image"],
            dseg=_write(tmp_path / "bad_dseg.nii.gz", labels),
            table=data["table"],
            reference_image=data["image"],
            out_image=str(out / "i.nii.gz"),
            out_mask=str(out / "m.nii.gz"),
            out_dseg=str(out / "d.nii.gz"),
            settings=_settings(),
        )
    assert not out.exists()


def test_register_atlas_writes_transforms_that_reproduce_the_warped_atlas(
    tmp_path, data, monkeypatch
):
    import tempfile

    from atlas.registration import TransformChain
    from atlas.segmentation import propagate

    monkeypatch.setenv("ANTS_RANDOM_SEED", "1")
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    moving = _write(tmp_path / "moving.nii.gz", np.roll(_phantom()[0], 1, axis=0))
    outs = {
        "out_affine": str(tmp_path / "out_affine.mat"),
        "out_warp": str(tmp_path / "out_warp.nii.gz"),
        "out_inverse_warp": str(tmp_path / "out_inverse-warp.nii.gz"),
        "out_warped": str(tmp_path / "out_warped.nii.gz"),
    }
    registration = {"transform": "SyN", "iterations": [10, 0, 0]}
    jobs.register_atlas(fixed=data["image"], moving=moving, registration=registration, **outs)
    assert all(Path(p).is_file() for p in outs.values())
    assert list(private.iterdir()) == []  # ANTs's own files were removed
    fixed = ants.image_read(data["image"])
    chain = TransformChain.forward(outs["out_affine"], outs["out_warp"])
    again = propagate(fixed, ants.image_read(moving), chain, labels=False).numpy()
    np.testing.assert_allclose(again, _read(outs["out_warped"]), atol=1e-3)
    # direct route: affine and warp only
    jobs.register_atlas(
        fixed=data["image"],
        moving=moving,
        registration=registration,
        out_affine=str(tmp_path / "d_affine.mat"),
        out_warp=str(tmp_path / "d_warp.nii.gz"),
    )
    assert (tmp_path / "d_warp.nii.gz").is_file()


def test_register_atlas_with_greedy_never_loads_ants(tmp_path, data):
    """With the greedy backend the registration job (template route: one per atlas) reads,
    registers and resamples with SimpleITK and Greedy in a fresh interpreter without
    importing ANTs; its warped atlas matches the atlas carried through the written
    transforms by ``ants.apply_transforms``: two linear interpolators, compared away from the
    border voxels (where they treat samples outside the moving image differently). Measured:
    mean |difference| 0.04 % and max 0.5 % of the intensity range (at the phantom's 100-unit
    edges); bounds 0.2 % and 2 %."""
    from atlas.registration import TransformChain
    from atlas.segmentation import propagate

    moving = _write(tmp_path / "moving.nii.gz", np.roll(_phantom()[0], 1, axis=0))
    kwargs = {"fixed": data["image"], "moving": moving} | {
        f"out_{k}": str(tmp_path / f"out_{k}{ext}")
        for k, ext in (("affine", ".mat"), ("warp", ".nii.gz"), ("warped", ".nii.gz"))
    }
    kwargs["out_inverse_warp"] = str(tmp_path / "out_inverse-warp.nii.gz")
    registration = {"transform": "SyN", "backend": "greedy", "greedy": {"iterations": [10, 0]}}
    code = (
        "from atlas.registration import set_determinism\n"
        "from atlas.segmentation.jobs import register_atlas\n"
        "set_determinism(1, 1)\n"  # as workflow/scripts/run.py does
        f"register_atlas(registration={registration!r}, **{kwargs!r})"
    )
    assert not _loads_ants(code)
    fixed = ants.image_read(data["image"])
    chain = TransformChain.forward(kwargs["out_affine"], kwargs["out_warp"])
    again = propagate(fixed, ants.image_read(moving), chain, labels=False).numpy()
    diff = np.abs(again - _read(kwargs["out_warped"]))[1:-1, 1:-1, 1:-1]
    print("|difference| mean", diff.mean(), "max", diff.max(), "range", np.ptp(again))
    assert diff.mean() < 0.002 * np.ptp(again) and diff.max() < 0.02 * np.ptp(again)


def test_write_label_table_applies_tissue_classes(tmp_path, data):
    out = tmp_path / "labels.tsv"
    jobs.write_label_table(table=data["table"], out_table=out, tissue_classes={"CSF": [3]})
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert table["class"].tolist() == ["n/a", "n/a", "CSF"]


# ------------------------------------------------------------------------------ fusion


@pytest.mark.parametrize("route", ["direct", "template"])
@pytest.mark.parametrize("method", ["majority", "jlf"])
def test_fuse_target_gives_back_the_atlas_labels(tmp_path, data, route, method):
    probseg = _probseg_paths(tmp_path, "out")
    jobs.fuse_target(
        image=data["image"],
        mask=data["mask"],
        out_dseg=str(tmp_path / "out_dseg.nii.gz"),
        out_qc=str(tmp_path / "out_qc.tsv"),
        out_probseg=probseg,
        name="sub-t",
        fusion=FUSION | {"method": method},
        **_fusion_inputs(data, route),
    )
    np.testing.assert_array_equal(_read(tmp_path / "out_dseg.nii.gz"), data["labels"])
    qc = pd.read_csv(tmp_path / "out_qc.tsv", sep="\t")
    assert qc.columns.tolist() == ["name", "atlas", "ncc", "passed"]
    assert qc["passed"].all() and np.allclose(qc["ncc"], 1.0)
    csf, gm, wm = (_read(p) for p in probseg)
    np.testing.assert_allclose(gm, data["labels"] == 1, atol=1e-5)
    np.testing.assert_allclose(wm, data["labels"] == 2, atol=1e-5)
    assert not csf.any()  # label 3 has no class


def test_fuse_target_too_few_atlases_writes_nothing(tmp_path, data):
    with pytest.raises(RegistrationQCError, match="only 2 of 2"):
        jobs.fuse_target(
            image=data["image"],
            mask=data["mask"],
            out_dseg=str(tmp_path / "out_dseg.nii.gz"),
            out_qc=str(tmp_path / "out_qc.tsv"),
            name="sub-t",
            fusion=FUSION | {"min_atlases": 3},
            **_fusion_inputs(data),
        )
    assert _no_files(tmp_path)


def test_fuse_target_labels_the_template_with_its_table(tmp_path, data):
    inputs = _fusion_inputs(data)
    probseg = _probseg_paths(tmp_path, "out")
    jobs.fuse_target(
        image=data["image"],
        mask=data["mask"],
        out_dseg=str(tmp_path / "out_dseg.nii.gz"),
        out_table=str(tmp_path / "out_dseg.tsv"),
        out_probseg=probseg,
        out_qc=str(tmp_path / "out_qc.tsv"),
        name="template",
        fusion=FUSION,
        tissue_classes={"CSF": [3], "GM": [1], "WM": [2]},
        **inputs,
    )
    np.testing.assert_array_equal(_read(tmp_path / "out_dseg.nii.gz"), data["labels"])
    table = pd.read_csv(tmp_path / "out_dseg.tsv", sep="\t")
    assert table["class"].tolist() == ["GM", "WM", "CSF"]
    np.testing.assert_allclose(_read(probseg[0]), data["labels"] == 3, atol=1e-5)
    assert pd.read_csv(tmp_path / "out_qc.tsv", sep="\t")["name"].eq("template").all()


def test_atropos_jobs_give_template_tissue_maps(tmp_path, data):
    for i in range(2):
        jobs.atropos_to_template(
            image=data["image"],
            mask=data["mask"],
            template=data["image"],
            affine=data["affine"],
            warp=data["warp"],
            out_probseg=_probseg_paths(tmp_path, f"img{i}"),
        )
    posteriors = np.stack([_read(p) for p in _probseg_paths(tmp_path, "img0")])
    inside = data["labels"] > 0
    np.testing.assert_allclose(posteriors.sum(0)[inside], 1.0, atol=1e-3)
    probseg = _probseg_paths(tmp_path, "out")
    jobs.atropos_template(
        template=data["image"],
        mask=data["mask"],
        probseg=[p for i in range(2) for p in _probseg_paths(tmp_path, f"img{i}")],
        out_dseg=str(tmp_path / "out_dseg.nii.gz"),
        out_table=str(tmp_path / "out_dseg.tsv"),
        out_probseg=probseg,
    )
    dseg = _read(tmp_path / "out_dseg.nii.gz")
    assert not dseg[~inside].any()
    # the phantom's labels 1, 2, 3 are its dark, middle and bright intensities: CSF, GM, WM
    assert np.mean(dseg[inside] == data["labels"][inside]) > 0.95
    np.testing.assert_allclose(_read(probseg[2]), posteriors[2] * inside, atol=1e-5)
    table = pd.read_csv(tmp_path / "out_dseg.tsv", sep="\t")
    assert table["name"].tolist() == ["CSF", "GM", "WM"]


# ------------------------------------------------------------------------------ volumes


def test_subject_volumes(tmp_path, data):
    out = tmp_path / "vols.tsv"
    jobs.subject_volumes(dseg=data["dseg"], table=data["table"], out_tsv=out, img="sub-t")
    vols = pd.read_csv(out, sep="\t").set_index("name")["volume_mm3"]
    counts = np.bincount(data["labels"].ravel())
    assert vols["White"] == counts[2] and vols["Vessel"] == counts[3]
    assert vols["total_brain"] == counts[1:].sum()
    assert vols["total_GM"] == counts[1] and vols["total_CSF"] == 0


def _group_inputs(tmp_path, data) -> dict:
    volumes, qc = [], []
    for i, img in enumerate(("sub-a", "sub-b")):
        volumes.append(tmp_path / f"{img}_vols.tsv")
        jobs.subject_volumes(dseg=data["dseg"], table=data["table"], out_tsv=volumes[-1], img=img)
        qc.append(tmp_path / f"{img}_qc.tsv")
        qc[-1].write_text(f"name\tatlas\tncc\tpassed\n{img}\ta{i}\t0.9\tTrue\n")
    participants = pd.DataFrame(
        {"img": ["sub-a", "sub-b"], "subject": ["a", "b"], "session": [None, None]}
    ).assign(age=[30.0, 60.0], sex=["F", "M"])
    return {"volumes": volumes, "qc": qc, "participants": participants}


def _group_outputs(folder: Path) -> dict:
    names = ("tidy.tsv", "wide.tsv", "qc.tsv", "figure.png")
    return {f"out_{n.split('.')[0]}": str(folder / f"out_{n}") for n in names}


def test_group_volumes(tmp_path, data):
    outs = _group_outputs(tmp_path / "group")
    jobs.group_volumes(**_group_inputs(tmp_path, data), **outs, structures=["White"])
    tidy = pd.read_csv(outs["out_tidy"], sep="\t")
    assert set(tidy["participant_id"]) == {"sub-a", "sub-b"}
    wide = pd.read_csv(outs["out_wide"], sep="\t").set_index("img")
    assert wide.loc["sub-b", "age"] == 60.0 and wide.loc["sub-a", "White"] == 64.0
    assert len(pd.read_csv(outs["out_qc"], sep="\t")) == 2
    assert Path(outs["out_figure"]).stat().st_size > 0


def test_group_volumes_unknown_structure_writes_nothing(tmp_path, data):
    """The job used to write three tables and then raise on an unknown structure."""
    folder = tmp_path / "group"
    with pytest.raises(InputError, match=r"segmentation.volume_plot: unknown structures \['X'\]"):
        jobs.group_volumes(
            **_group_inputs(tmp_path, data), **_group_outputs(folder), structures=["X"]
        )
    assert not folder.exists() or not list(folder.iterdir())


# ------------------------------------------------------------------------------ evaluation


def _fold(tmp_path, data, name, **kw):
    out = tmp_path / f"{name}_scores.tsv"
    jobs.evaluate_fold(
        image=data["image"],
        mask=data["mask"],
        dseg=data["dseg"],
        table=data["table"],
        atlas_images=data["atlas_images"],
        atlas_dsegs=data["atlas_dsegs"],
        out_scores=str(out),
        name=name,
        atlas_ids=["a0", "a1"],
        methods=["majority", "staple"],
        fusion=FUSION,
        **{"registration": {"transform": "SyN", "iterations": [5, 0, 0]}} | kw,
    )
    return out


def test_evaluate_fold_template_and_direct_routes(tmp_path, data, monkeypatch):
    monkeypatch.setenv("ANTS_RANDOM_SEED", "1")
    identity = {
        "atlas_affines": [data["affine"]] * 2,
        "atlas_warps": [data["warp"]] * 2,
        "target_affine": data["affine"],
        "target_inverse_warp": data["warp"],
    }
    template = pd.read_csv(_fold(tmp_path, data, "tpl", **identity), sep="\t")
    assert template["method"].unique().tolist() == ["majority", "staple"]
    assert (template["dice"] == 1.0).all() and (template["hd95_mm"] == 0.0).all()
    assert template["name"].tolist()[:3] == ["Grey", "White", "Vessel"]
    assert (template["propagation_s"] > 0).all() and (template["fusion_s"] >= 0).all()
    # direct route: each atlas is registered to the scan here (affine: SyN is erratic on a
    # 16-voxel phantom, where its coarsest level has 2 voxels)
    affine = {"transform": "Affine", "iterations": [0]}
    direct = pd.read_csv(_fold(tmp_path, data, "direct", registration=affine), sep="\t")
    assert direct["dice"].min() > 0.9


def test_evaluation_report(tmp_path, data):
    identity = {"atlas_affines": [data["affine"]] * 2, "atlas_warps": [data["warp"]] * 2}
    scores = [_fold(tmp_path, data, n, **identity) for n in ("s1", "s2")]
    outs = {
        "out_table": str(tmp_path / "out_table.tsv"),
        "out_summary": str(tmp_path / "out_summary.tsv"),
        "out_figure": str(tmp_path / "out_figure.png"),
    }
    jobs.evaluation_report(scores=scores, **outs)
    summary = pd.read_csv(outs["out_summary"], sep="\t")
    assert summary[["subject", "method"]].values.tolist() == [
        ["s1", "majority"],
        ["s1", "staple"],
        ["s2", "majority"],
        ["s2", "staple"],
    ]
    assert (summary["mean_dice"] == 1.0).all() and (summary["n_labels"] == 3).all()
    assert len(pd.read_csv(outs["out_table"], sep="\t")) == 12
    assert Path(outs["out_figure"]).stat().st_size > 0


def test_evaluation_report_failure_writes_nothing(tmp_path):
    bad = tmp_path / "bad_scores.tsv"
    bad.write_text("subject\tmethod\tdice\ns\tjlf\t0.5\n")  # no hd95_mm column
    with pytest.raises(KeyError):
        jobs.evaluation_report(
            scores=[bad],
            out_table=str(tmp_path / "out_table.tsv"),
            out_summary=str(tmp_path / "out_summary.tsv"),
            out_figure=str(tmp_path / "out_figure.png"),
        )
    assert _no_files(tmp_path)
