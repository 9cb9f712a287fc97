"""Provenance: what a run records about itself, and the methods text of its config."""

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from atlas.provenance import (
    checksum_table,
    code_version,
    dataset_description,
    sha256_file,
    software_versions,
)
from atlas.provenance import jobs as provenance_jobs
from atlas.provenance.methods import CITATIONS, bibtex, cited_keys, methods_text

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config():
    """The default config (config/config.yaml), as Snakemake resolves it."""
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_checksums_are_sha256(tmp_path):
    data = b"atlas" * 100_000
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "a.nii.gz"
    f.write_bytes(data)
    assert sha256_file(f, chunk=4096) == hashlib.sha256(data).hexdigest()
    table = checksum_table([f], root=tmp_path)
    assert table.to_dict(orient="records") == [
        {"path": "sub/a.nii.gz", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]


def test_code_version_of_a_checkout_and_of_a_plain_folder(tmp_path):
    here = code_version()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode == 0:
        assert here["commit"] == head.stdout.decode().strip()
        assert isinstance(here["dirty"], bool)
    plain = code_version(tmp_path)
    assert plain["commit"] is None and plain["dirty"] is None and plain["version"]


def test_dataset_description_names_commit_and_container(tmp_path, monkeypatch):
    code = {"version": "0.1.0", "commit": "a" * 40, "dirty": True}
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/atlas_0.1.0.sif")
    desc = dataset_description("tpl", tmp_path, code)
    generated = desc["GeneratedBy"][0]
    assert generated["Version"] == "0.1.0+gaaaaaaaaaaaa.dirty"
    assert "a" * 40 in generated["Description"]
    assert generated["Container"]["Tag"] == "/images/atlas_0.1.0.sif"
    assert desc["DatasetType"] == "derivative"
    monkeypatch.delenv("APPTAINER_CONTAINER")
    plain = dataset_description("tpl", tmp_path, {"version": "0.1.0", "commit": None})
    assert plain["GeneratedBy"][0]["Version"] == "0.1.0"
    assert "Container" not in plain["GeneratedBy"][0]


def test_methods_text_states_the_parameters_that_ran(config):
    versions = software_versions()
    text = methods_text(config, versions, n_images=12)
    t = config["template"]
    assert "from 12 T1-weighted images" in text
    assert f"{t['affine_iterations']} affine and {t['syn_iterations']} deformable" in text
    assert "100x50x10 iterations" in text and f"seed {config['seed']}" in text  # greedy
    assert f"antspyx {versions['antspyx']}" in text
    # stages that did not run are not described
    assert "joint label fusion" not in text and "age-conditional" not in text
    config = json.loads(json.dumps(config))
    config["segmentation"]["atlases"] = [{"t1w": "a.nii.gz", "dseg": "a_dseg.nii.gz"}]
    config["learned"]["enabled"] = True
    config["template"]["sharpen"] = False
    text = methods_text(config, versions, n_images=12)
    assert "joint label fusion [@wang2013] (patch radius 2 mm, search radius 3 mm)" in text
    assert "age-conditional deformable atlas [@dalca2019]" in text
    assert "sharpened" not in text


@pytest.mark.parametrize(
    ("backend", "phrase", "key"),
    [
        ("ants", "symmetric normalisation (SyN)", "avants2008"),
        ("greedy", "greedy diffeomorphic registration with Greedy", "yushkevich2016"),
        ("fireants", "diffeomorphic registration with FireANTs", "jena2024"),
    ],
)
def test_methods_text_names_the_registration_engine_of_each_stage(config, backend, phrase, key):
    """Each stage's paragraph describes the engine its own ``backend`` key chose, with that
    engine's settings and citation; the other engines are not mentioned."""
    config = json.loads(json.dumps(config))
    config["segmentation"]["atlases"] = [{"t1w": "a.nii.gz", "dseg": "a_dseg.nii.gz"}]
    for block in (config["template"], config["segmentation"]["registration"]):
        block["backend"] = backend
    config["template"].setdefault("greedy", {})["iterations"] = [7, 5, 3]
    text = methods_text(config, software_versions(), 12, n_longitudinal=3)
    template, segmentation, longitudinal = (
        next(p for p in text.split("\n\n") if p.startswith(start))
        for start in ("A population template", "Labelled atlases", "3 subjects with two")
    )
    assert phrase in template and phrase in segmentation
    assert f"[@{key}]" in template
    assert ("7x5x3 iterations" in template) == (backend == "greedy")
    # the longitudinal stage keeps its own engine (longitudinal.backend, default ants)
    assert "symmetric normalisation (SyN)" in longitudinal and "[@reuter2012]" in longitudinal
    for other in {"ants": "SyN) [@", "greedy": "Greedy [@", "fireants": "FireANTs [@"}.items():
        if other[0] != backend:
            assert other[1] not in template + segmentation
    assert key in cited_keys(text) and bibtex(cited_keys(text))


def test_every_citation_has_a_bibtex_entry(config):
    text = methods_text(config, software_versions(), 3)
    keys = cited_keys(text)
    assert {"tustison2010", "yushkevich2016", "avants2010", "fonov2011"} <= set(keys)
    bib = bibtex(keys)
    assert re.findall(r"^@\w+\{(\w+),", bib, flags=re.M) == keys
    for key, entry in CITATIONS.items():
        assert entry.count("{") == entry.count("}"), key
    with pytest.raises(KeyError, match="nosuchkey"):
        bibtex(["nosuchkey"])


def test_provenance_jobs(tmp_path, config):
    image = tmp_path / "sub-01_T1w.nii.gz"
    image.write_bytes(b"not really an image")
    out = {n: tmp_path / "out" / n for n in ("dd.json", "cfg.json", "methods.md", "c.bib")}
    provenance_jobs.dataset_files(
        images=[image],
        out_json=out["dd.json"],
        out_config=out["cfg.json"],
        name="tpl",
        bids_dir=tmp_path,
        config=config,
        command_line="snakemake --cores 2",
    )
    snap = json.loads(out["cfg.json"].read_text())
    assert snap["inputs"][0]["sha256"] == sha256_file(image)
    assert snap["command_line"] == "snakemake --cores 2"
    assert snap["determinism"] == {"seed": config["seed"], "threads_per_job": 1}
    assert snap["software"]["antspyx"] and snap["software"]["ITK"]
    provenance_jobs.methods(
        out_methods=out["methods.md"],
        out_bib=out["c.bib"],
        config=config,
        n_images=1,
        n_longitudinal=0,
    )
    assert out["methods.md"].read_text().startswith("# Methods")
    assert "@article{tustison2010," in out["c.bib"].read_text()
    provenance_jobs.manifest(files=list(out.values()), out_manifest=tmp_path / "out" / "m.tsv")
    table = pd.read_csv(tmp_path / "out" / "m.tsv", sep="\t")
    assert sorted(table.path) == sorted(out)
    assert table.set_index("path").sha256["c.bib"] == sha256_file(out["c.bib"])
