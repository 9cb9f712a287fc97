"""Job functions of the provenance rules (``workflow/rules/provenance.smk``)."""

from __future__ import annotations

from pathlib import Path

from .. import io
from .methods import bibtex, cited_keys, methods_text
from .record import checksum_table, code_version, dataset_description, software_versions


def dataset_files(*, images, out_json, out_config, name, bids_dir, config, command_line):
    """``dataset_description.json`` of the derivatives and ``atlas_config.json``: the
    resolved config, the command line, the code version, software versions, the seed and
    thread count, and the SHA-256 of every input image (``images``)."""
    code = code_version()
    inputs = checksum_table(images)
    snapshot = {
        "config": config,
        "command_line": command_line,
        "code": code,
        "software": software_versions(),
        "determinism": {"seed": config["seed"], "threads_per_job": config["threads_per_job"]},
        "inputs": inputs.to_dict(orient="records"),
    }
    io.write_all(
        [
            (io.write_json, dataset_description(name, bids_dir, code), out_json),
            (io.write_json, snapshot, out_config),
        ]
    )


def methods(*, out_methods, out_bib, config, n_images):
    """``methods.md`` (the methods paragraph of this run) and ``citations.bib`` (the
    entries it cites)."""
    text = methods_text(config, software_versions(), n_images)
    io.write_all(
        [
            (io.write_text, text, out_methods),
            (io.write_text, bibtex(cited_keys(text)), out_bib),
        ]
    )


def manifest(*, files, out_manifest):
    """``manifest.tsv`` at the top of the output folder: path (relative to that folder),
    size in bytes and SHA-256 of every output of the run (``files``)."""
    io.write_tsv(checksum_table(files, root=Path(out_manifest).parent), out_manifest)
