"""Provenance of a run: versions, code commit, checksums, dataset description and the
methods text with its citations.

- :mod:`~atlas.provenance.record`: software versions, code version, container, checksums,
  ``dataset_description.json`` content;
- :mod:`~atlas.provenance.methods`: the methods paragraph generated from the run's config
  and its BibTeX citations;
- :mod:`~atlas.provenance.jobs`: the job functions of the provenance rules.
"""

from .record import (
    checksum_table,
    code_version,
    container_image,
    dataset_description,
    sha256_file,
    software_versions,
)

__all__ = [
    "checksum_table",
    "code_version",
    "container_image",
    "dataset_description",
    "sha256_file",
    "software_versions",
]
