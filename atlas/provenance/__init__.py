"""Provenance of a run: software versions and the BIDS-Derivatives dataset description."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from .. import __version__

#: Packages whose versions shape the results.
SCIENTIFIC_PACKAGES = ("atlas", "antspyx", "snakemake", "nibabel", "numpy", "nilearn", "torch")


def software_versions() -> dict:
    """Versions of Python and of :data:`SCIENTIFIC_PACKAGES` (None where not installed)."""
    out = {"python": platform.python_version()}
    for name in SCIENTIFIC_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def dataset_description(name: str, bids_dir) -> dict:
    """BIDS-Derivatives ``dataset_description.json`` content with ``GeneratedBy``.

    ``name`` is the template name (config ``template.name``); ``bids_dir`` the source
    dataset, recorded as a ``file://`` URI.
    """
    return {
        "Name": f"atlas derivatives: {name}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "atlas",
                "Version": __version__,
                "Description": "Population template (SyGN) workflow in Snakemake",
            }
        ],
        "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
    }
