"""What a run records about itself: software versions, code version, inputs and outputs.

Everything here is read-only inspection (no file is written): versions of the packages that
shape the results, the git commit of the workflow checkout (or the installed version), the
container image when one is used, and SHA-256 checksums of files.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from .. import __version__

#: Distributions whose versions shape the results (PyPI names).
SCIENTIFIC_PACKAGES = (
    "atlas",
    "antspyx",
    "SimpleITK",
    "torch",
    "nibabel",
    "nipype",
    "numpy",
    "scipy",
    "pandas",
    "nilearn",
    "pybids",
    "snakemake",
)

#: Environment variables naming the container image a run executes in (Apptainer /
#: Singularity set the first two; ``ATLAS_CONTAINER_IMAGE`` is set by our own recipes).
CONTAINER_VARIABLES = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "ATLAS_CONTAINER_IMAGE")


def software_versions() -> dict:
    """Versions of Python, :data:`SCIENTIFIC_PACKAGES` (None where not installed) and the
    ITK release inside SimpleITK (``ITK``); antspyx bundles its own ITK build, identified by
    the antspyx version."""
    out = {"python": platform.python_version()}
    for name in SCIENTIFIC_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import SimpleITK as sitk

        out["ITK"] = sitk.Version_ITKVersionString()
    except ImportError:
        out["ITK"] = None
    return out


def code_version(root=None) -> dict:
    """The workflow's code version: ``{"version", "commit", "dirty"}``.

    ``commit`` is the git commit of the checkout holding this package (``root``: the
    repository folder, default the parent of the package) and ``dirty`` whether tracked
    files differ from it; both are None when the code is not a git checkout (an installed
    wheel), and then ``version`` alone identifies it.
    """
    root = Path(root) if root else Path(__file__).resolve().parents[2]
    out = {"version": __version__, "commit": None, "dirty": None}

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20
        )

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode == 0 and (root / ".git").exists():
            out["commit"] = head.stdout.strip()
            out["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def container_image() -> str | None:
    """The container image this process runs in, from :data:`CONTAINER_VARIABLES`, or None."""
    for name in CONTAINER_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in ``chunk``-byte blocks.

    Raises
    ------
    FileNotFoundError when ``path`` does not exist.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_table(paths, root=None) -> pd.DataFrame:
    """One row per file: ``path`` (relative to ``root`` when given and inside it), ``bytes``
    and ``sha256``, sorted by path."""
    rows = []
    for p in map(Path, paths):
        name = str(p)
        if root is not None:
            try:
                name = str(p.resolve().relative_to(Path(root).resolve()))
            except ValueError:
                name = str(p)
        rows.append({"path": name, "bytes": p.stat().st_size, "sha256": sha256_file(p)})
    return pd.DataFrame(rows, columns=["path", "bytes", "sha256"]).sort_values("path")


def dataset_description(name: str, bids_dir, code: dict | None = None) -> dict:
    """BIDS-Derivatives ``dataset_description.json`` content.

    ``name`` is the template name (config ``template.name``); ``bids_dir`` the source
    dataset, recorded as a ``file://`` URI; ``code`` is :func:`code_version` (computed when
    None). ``GeneratedBy`` carries the version (with ``+g<commit>`` from a git checkout,
    ``.dirty`` when it has local changes), the full commit in its description and the
    container image when there is one (BIDS ``GeneratedBy.Container``).
    """
    code = code or code_version()
    version, description = code["version"], "Population template (SyGN) workflow in Snakemake"
    if code.get("commit"):
        # PEP 440 local version, as setuptools-scm writes it: 0.1.0+g<commit>[.dirty]
        version += f"+g{code['commit'][:12]}" + (".dirty" if code.get("dirty") else "")
        description += f"; git commit {code['commit']}" + (
            " with local changes" if code.get("dirty") else ""
        )
    generated = {"Name": "atlas", "Version": version, "Description": description}
    image = container_image()
    if image:
        generated["Container"] = {"Type": "apptainer", "Tag": image}
    return {
        "Name": f"atlas derivatives: {name}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
    }
