"""Job function of the ``dataset_description`` rule (``workflow/rules/preprocess.smk``)."""

from __future__ import annotations

from .. import io
from . import dataset_description, software_versions


def dataset_files(*, out_json, out_config, name, bids_dir, config):
    """``dataset_description.json`` of the derivatives and a snapshot of the resolved
    config with software versions (``atlas_config.json``)."""
    description = dataset_description(name, bids_dir)
    snapshot = {"config": config, "software": software_versions()}
    io.write_all([(io.write_json, description, out_json), (io.write_json, snapshot, out_config)])
