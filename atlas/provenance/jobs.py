"""Job functions of the provenance rules (``workflow/rules/provenance.smk``)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

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


def methods(*, out_methods, out_bib, config, n_images, n_longitudinal):
    """``methods.md`` (the methods paragraph of this run) and ``citations.bib`` (the
    entries it cites); ``n_longitudinal``: subjects tracked longitudinally."""
    text = methods_text(config, software_versions(), n_images, n_longitudinal)
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


_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"\*([^*]+)\*"), r"<em>\1</em>"),
]


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def markdown_to_html(text: str, title: str = "Methods") -> str:
    """A standalone HTML page (UTF-8) of the small Markdown subset the methods text uses:
    blocks separated by blank lines, ``#``/``##``/``###`` headings, paragraphs, inline
    ``code``, ``*emphasis*`` and ``**strong**``; everything else (``[@key]`` citations
    included) is kept as escaped text. ``title`` is the page title."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    body = []
    for block in blocks:
        heading = re.match(r"(#{1,3})\s+(.*)", block)
        if heading and "\n" not in block:
            n = len(heading.group(1))
            body.append(f"<h{n}>{_inline(heading.group(2))}</h{n}>")
        else:
            body.append(f"<p>{_inline(' '.join(block.split()))}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto;"
        "line-height:1.5;padding:0 1em}code{background:#eee}</style>\n"
        "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def methods_html(*, methods, out_html):
    """``methods.html``: the methods text (``methods``, ``methods.md``) as an HTML page
    (:func:`markdown_to_html`), the form in which it goes into the Snakemake report."""
    text = Path(methods).read_text(encoding="utf-8")
    io.write_text(markdown_to_html(text), out_html)


def excluded_table(*, out_table, excluded):
    """Table of the images left out of the run (config ``on_bad_subject: skip``), one row
    each: ``img`` (the image id) and ``reason`` (the validation message); ``excluded``
    maps image id -> reason. With none excluded, the table has its header only."""
    rows = [{"img": img, "reason": " ".join(str(why).split())} for img, why in excluded.items()]
    io.write_tsv(pd.DataFrame(rows, columns=["img", "reason"]), out_table)
