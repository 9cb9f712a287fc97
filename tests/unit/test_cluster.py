"""Cluster support: the image-validation cache, per-family environments, resources in the
config, and the container recipe's install steps (README "Running on a cluster")."""

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

import atlas.bids
from atlas.bids import validate_images
from atlas.io import InputError

ROOT = Path(__file__).resolve().parents[2]


def _image(path: Path, constant=False) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ones((4, 5, 6), np.float32) if constant else np.arange(120.0).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(path))
    return str(path)


@pytest.fixture
def counted(monkeypatch):
    """Count the calls of check_nifti (the voxel reads) made through validate_images."""
    calls = []
    real = atlas.bids.check_nifti

    def check(path, *a, **k):
        calls.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(atlas.bids, "check_nifti", check)
    return calls


def test_validation_cache_reads_voxels_once_and_rechecks_changed_files(tmp_path, counted):
    paths = [_image(tmp_path / f"sub-{i}_T1w.nii.gz") for i in range(3)]
    df = pd.DataFrame({"img": [f"sub-{i}" for i in range(3)], "path": paths})
    cache = tmp_path / "work" / "cache" / "image_validation.json"
    assert list(validate_images(df, cache=cache).img) == list(df.img)
    assert len(counted) == 3 and cache.is_file()
    mtime = cache.stat().st_mtime_ns
    validate_images(df, cache=cache)
    assert len(counted) == 3  # warm: no voxel read, cache not rewritten
    assert cache.stat().st_mtime_ns == mtime
    # a file replaced by a bad one (new size/mtime) is checked again and fails
    _image(Path(paths[1]), constant=True)
    os.utime(paths[1], ns=(1, 1))
    with pytest.raises(InputError, match="constant"):
        validate_images(df, cache=cache)
    assert len(counted) == 4
    # the failure is cached too: skip mode excludes it without reading voxels again
    out = validate_images(df, on_bad_subject="skip", cache=cache)
    assert list(out.img) == ["sub-0", "sub-2"] and "sub-1" in out.attrs["excluded"]
    assert len(counted) == 4


def test_corrupt_cache_is_ignored(tmp_path, counted):
    df = pd.DataFrame({"img": ["sub-0"], "path": [_image(tmp_path / "a.nii.gz")]})
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    validate_images(df, cache=cache)
    assert len(counted) == 1


def _rules_text() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))


def test_every_rule_env_exists_and_rules_name_a_family():
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    envs = dict(re.findall(r'^(ENV_\w+) = "\.\./\.\./(envs/[\w.]+)"', common, re.M))
    assert set(envs) == {"ENV_ANTS", "ENV_TORCH", "ENV_REPORT"}
    for env in envs.values():
        spec = yaml.safe_load((ROOT / env).read_text())
        assert "python=3.11" in spec["dependencies"]
    rules = _rules_text()
    used = set(re.findall(r"^\s+conda:\n\s+(\w+)$", rules, re.M))
    assert used <= set(envs) | {"ENV"}, used
    families = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["cluster"]["families"]
    named = set(re.findall(r'job_resources\("(\w+)"', rules))
    assert named and named <= set(families)


def test_env_pins_match_the_constraints():
    def norm(req):
        return re.sub(r"[-_.]+", "-", req.lower())

    pins = dict(
        norm(line).split("==")
        for line in (ROOT / "envs" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for env in (ROOT / "envs").glob("*.yaml"):
        pip = next(
            d["pip"] for d in yaml.safe_load(env.read_text())["dependencies"] if isinstance(d, dict)
        )
        for req in pip:
            name, version = norm(req).split("==")
            assert pins[name] == version, (env.name, req)


def test_container_installs_as_the_readme_says():
    """The recipe's install RUN line is the README's install command, verbatim, and it
    applies the pinned versions (PIP_CONSTRAINT=envs/constraints.txt)."""
    readme = (ROOT / "README.md").read_text()
    install = re.search(r"^(python3 -m venv \.venv && .*?pip install -e \.)", readme, re.M)
    assert install
    recipe = (ROOT / "Containerfile").read_text()
    runs = re.findall(r"^RUN (.*)$", recipe, re.M)
    assert install.group(1) in runs
    assert re.search(r"^ENV PIP_CONSTRAINT=\S*envs/constraints\.txt", recipe, re.M)
