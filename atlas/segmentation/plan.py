"""Parse-time planning of the segmentation: which atlases label which image, what is evaluated.

Everything here runs when the workflow is parsed (``workflow/rules/segment.smk``), before any
job: it resolves the ``segmentation`` config block into tables and dicts the rules read, and
raises :class:`atlas.io.InputError` naming the config key at fault, so a bad atlas set stops
the run with one message. :func:`plan_segmentation` resolves the atlases and what each
labels; :func:`fusion_settings`, :func:`evaluation_methods` and :func:`segment_targets` give
the rules' params and targets.

Atlases are raw labelled scans. An atlas never labels its own scan nor another session of its
subject (:func:`same_scan_or_subject`), in the workflow's images as in the evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..bids import find_t1w
from ..io import InputError, check_nifti
from .labels import read_label_table
from .volumes import TOTALS

FUSION_METHODS = ("majority", "weighted", "jlf", "staple")
"""Label-fusion methods by config name, accepted by :func:`atlas.segmentation.fusion.fuse`."""

EVALUATION_MODES = ("none", "loo", "split")
"""Values of ``segmentation.evaluation.mode``."""


def find_atlases(atlases, label_table=None, evaluation=None) -> tuple[pd.DataFrame, Path]:
    """Resolve the ``segmentation.atlases`` config into a table of labelled scans.

    Parameters
    ----------
    atlases : either a list of ``{t1w, dseg[, id]}`` mappings, or a mapping describing a BIDS
        dataset: ``bids_dir``, ``labels`` (derivatives folder relative to ``bids_dir`` holding
        ``<img>_desc-<desc>_dseg.nii.gz`` next to the same sub-/ses- folders), ``desc``, and
        optionally ``participant_label``, ``exclude_participant_label`` and ``session``
        (as for the workflow's own inputs, but ``session`` defaults to ``all``).
    label_table : label table TSV; default (BIDS form only)
        ``<bids_dir>/<labels>/desc-<desc>_dseg.tsv``.
    evaluation : the ``segmentation.evaluation`` config; with ``mode: split`` the
        participants.tsv column ``split_column`` marks rows as ``train`` (atlases) or ``test``
        (held out for evaluation); other rows are dropped.

    Returns
    -------
    (table, label_table_path). The table has one row per labelled scan with columns ``id``
    (``sub-X[_ses-Y]`` or the given id), ``subject``, ``dataset`` (resolved BIDS root or
    None), ``t1w``, ``dseg``, ``age`` and ``role`` (``atlas`` or ``test``).

    Raises
    ------
    :class:`atlas.io.InputError` naming the config key or file at fault: missing files,
    unreadable headers, duplicate ids, a bad label table, or an empty split.
    """
    evaluation = evaluation or {}
    if isinstance(atlases, Mapping):
        rows, default_table = _bids_atlases(atlases)
        label_table = default_table if label_table is None else label_table
        if evaluation.get("mode") == "split":
            rows = _split_roles(rows, Path(atlases["bids_dir"]), evaluation)
    else:
        rows = _listed_atlases(atlases)
        if evaluation.get("mode") == "split":
            raise InputError(
                "config key segmentation.evaluation.mode: split needs atlases given as a BIDS "
                "dataset (its participants.tsv holds the split)"
            )
    if label_table is None:
        raise InputError("config key segmentation.label_table: needed for a list of atlases")
    _check_atlas_rows(rows, label_table)
    return rows, Path(label_table)


def _bids_atlases(atlases: Mapping) -> tuple[pd.DataFrame, Path]:
    """Labelled scans of a BIDS dataset and the default label table path."""
    root = Path(atlases["bids_dir"])
    labels = root / atlases.get("labels", "derivatives/labels")
    desc = atlases.get("desc")
    images = find_t1w(
        root,
        atlases.get("participant_label", []),
        atlases.get("exclude_participant_label", []),
        atlases.get("session", "all"),
    )
    suffix = f"desc-{desc}_dseg" if desc else "dseg"
    rows = pd.DataFrame(
        {
            "id": images["img"],
            "subject": images["subject"],
            "dataset": str(root.resolve()),
            "t1w": images["path"],
            "dseg": [
                str(labels / d / "anat" / f"{i}_{suffix}.nii.gz")
                for d, i in zip(images["subdir"], images["img"], strict=True)
            ],
            "age": images["age"],
            "role": "atlas",
        }
    )
    return rows, labels / f"{suffix}.tsv"


def _split_roles(rows: pd.DataFrame, root: Path, evaluation: Mapping) -> pd.DataFrame:
    """Roles from the participants.tsv split column: train -> atlas, test -> test; rows with
    another value are dropped."""
    column = evaluation.get("split_column", "split")
    ptsv = root / "participants.tsv"
    parts = pd.read_csv(ptsv, sep="\t", dtype=str) if ptsv.is_file() else pd.DataFrame()
    if column not in parts:
        raise InputError(
            f"config key segmentation.evaluation.split_column: {ptsv} has no column {column!r}"
        )
    ids = parts["participant_id"].str.removeprefix("sub-")
    split = dict(zip(ids, parts[column], strict=True))
    train, test = evaluation.get("train", "train"), evaluation.get("test", "test")
    rows = rows.assign(role=rows["subject"].map(split).map({train: "atlas", test: "test"}))
    rows = rows.dropna(subset=["role"]).reset_index(drop=True)
    for role, value in (("atlas", train), ("test", test)):
        if not (rows["role"] == role).any():
            raise InputError(
                f"config key segmentation.evaluation: no {role} scan with a label map "
                f"({column} = {value!r})"
            )
    return rows


def _listed_atlases(entries: Sequence[Mapping]) -> pd.DataFrame:
    """Labelled scans given as a list of ``{t1w, dseg[, id]}``."""
    entries = list(entries)
    return pd.DataFrame(
        {
            "id": [
                str(e.get("id") or Path(e["t1w"]).name.split(".")[0].removesuffix("_T1w"))
                for e in entries
            ],
            "subject": None,
            "dataset": None,
            "t1w": [str(e["t1w"]) for e in entries],
            "dseg": [str(e["dseg"]) for e in entries],
            "age": float("nan"),
            "role": "atlas",
        }
    )


def _check_atlas_rows(rows: pd.DataFrame, label_table) -> None:
    """Unique, file-name-safe ids; readable NIfTI headers; a valid label table."""
    dup = rows.loc[rows["id"].duplicated(), "id"].tolist()
    if dup:
        raise InputError(f"config key segmentation.atlases: duplicate atlas ids {dup}")
    bad = [i for i in rows["id"] if not all(c.isalnum() or c in "_-" for c in i)]
    if bad:
        raise InputError(f"config key segmentation.atlases: ids must be [A-Za-z0-9_-]: {bad}")
    for path in [*rows["t1w"], *rows["dseg"]]:
        check_nifti(path, read_data=False)
    try:
        read_label_table(label_table)
    except (OSError, ValueError) as exc:
        raise InputError(f"config key segmentation.label_table: {exc}") from exc


def same_scan_or_subject(atlas: Mapping, dataset, subject, t1w) -> bool:
    """Whether an atlas row (from :func:`find_atlases`) must not label a target: it is the same
    file, or the same subject of the same BIDS dataset (a rescan would inflate the result)."""
    if Path(atlas["t1w"]).resolve() == Path(t1w).resolve():
        return True
    return (
        atlas["dataset"] is not None
        and dataset is not None
        and str(Path(dataset).resolve()) == atlas["dataset"]
        and atlas["subject"] == subject
    )


def atlas_ids(labelled: pd.DataFrame) -> list[str]:
    """Ids of the labelled scans that serve as atlases (role ``atlas``), in table order."""
    return labelled.loc[labelled["role"] == "atlas", "id"].tolist()


def evaluation_ids(labelled: pd.DataFrame, mode: str) -> list[str]:
    """Ids of the labelled scans that are segmented and scored: none, every atlas (``loo``,
    each labelled by the others) or the ``test`` scans (``split``).

    Raises
    ------
    InputError for an unknown mode, or ``loo`` with fewer than two atlases.
    """
    if mode not in EVALUATION_MODES:
        raise InputError(
            f"config key segmentation.evaluation.mode: {mode!r} not in {EVALUATION_MODES}"
        )
    if mode == "none":
        return []
    if mode == "split":
        return labelled.loc[labelled["role"] == "test", "id"].tolist()
    atlases = atlas_ids(labelled)
    if len(atlases) < 2:
        raise InputError("config key segmentation.evaluation.mode: loo needs at least two atlases")
    return atlases


def image_atlases(labelled: pd.DataFrame, images: pd.DataFrame, bids_dir) -> dict[str, list]:
    """Atlases allowed to label each workflow image: every atlas except the image's own scan
    and other sessions of its subject.

    Parameters
    ----------
    labelled : :func:`find_atlases` table.
    images : the workflow's images (``atlas.bids.find_t1w``: ``img``, ``subject``, ``path``).
    bids_dir : the workflow's BIDS root (the images' dataset).

    Returns
    -------
    dict image id -> atlas ids, in atlas order.

    Raises
    ------
    InputError naming the first image left without any atlas.
    """
    atlases = labelled[labelled["role"] == "atlas"]
    allowed = {
        img: [
            a["id"]
            for _, a in atlases.iterrows()
            if not same_scan_or_subject(a, bids_dir, subject, path)
        ]
        for img, subject, path in zip(images["img"], images["subject"], images["path"], strict=True)
    }
    for img, ids in allowed.items():
        if not ids:
            raise InputError(f"config key segmentation.atlases: no atlas left to label {img}")
    return allowed


def eval_atlases(labelled: pd.DataFrame, held_out: str) -> list[str]:
    """Atlases that label a held-out scan: every atlas except the scan itself and rescans of
    its subject."""
    row = labelled.set_index("id", drop=False).loc[held_out]
    return [
        a["id"]
        for _, a in labelled[labelled["role"] == "atlas"].iterrows()
        if not same_scan_or_subject(a, row["dataset"], row["subject"], row["t1w"])
    ]


def eval_images(
    labelled: pd.DataFrame, eval_ids: Sequence[str], images: pd.DataFrame
) -> dict[str, str]:
    """Held-out scans that are also workflow images (same file after resolving links): held-out
    id -> image id. In the template route their evaluation reuses the image's template
    transforms from the template build (the preprocessing is the same function of the same
    file) instead of registering the scan again."""
    by_path = {Path(p).resolve(): i for i, p in zip(images["img"], images["path"], strict=True)}
    t1w = labelled.set_index("id")["t1w"]
    paths = {a: Path(t1w[a]).resolve() for a in eval_ids}
    return {a: by_path[p] for a, p in paths.items() if p in by_path}


FUSION_KEYS = frozenset(
    {
        "method",
        "min_ncc",
        "min_atlases",
        "label_interpolation",
        "patch_radius_mm",
        "search_radius_mm",
    }
)
"""Keys of :func:`fusion_settings` (the ``fusion`` param of the fusion and evaluation jobs)."""


def fusion_settings(seg: Mapping) -> dict:
    """The ``fusion`` param of the fusion and evaluation jobs from the ``segmentation`` config
    block: ``method`` (key ``fusion``), ``min_ncc`` and ``min_atlases`` (``qc``),
    ``label_interpolation``, ``patch_radius_mm``, ``search_radius_mm``.

    Raises
    ------
    InputError for a fusion method not in :data:`FUSION_METHODS`.
    """
    if seg["fusion"] not in FUSION_METHODS:
        raise InputError(
            f"config key segmentation.fusion: {seg['fusion']!r} not in {FUSION_METHODS}"
        )
    return {
        "method": seg["fusion"],
        "min_ncc": seg["qc"]["min_ncc"],
        "min_atlases": seg["qc"]["min_atlases"],
        "label_interpolation": seg["label_interpolation"],
        "patch_radius_mm": seg["patch_radius_mm"],
        "search_radius_mm": seg["search_radius_mm"],
    }


def evaluation_methods(seg: Mapping) -> list[str]:
    """Fusion methods scored by the evaluation: ``evaluation.methods``, default the fusion.

    Raises
    ------
    InputError for a method not in :data:`FUSION_METHODS`.
    """
    methods = list(seg["evaluation"].get("methods") or [seg["fusion"]])
    unknown = sorted(set(methods) - set(FUSION_METHODS))
    if unknown:
        raise InputError(
            f"config key segmentation.evaluation.methods: {unknown} not in {FUSION_METHODS}"
        )
    return methods


def check_volume_plot(structures: Sequence[str], label_table) -> None:
    """Raise InputError unless every ``segmentation.volume_plot`` name is a structure of the
    label table or a total (:data:`atlas.segmentation.volumes.TOTALS`)."""
    names = set(read_label_table(label_table)["name"]) | set(TOTALS)
    unknown = sorted(set(structures) - names)
    if unknown:
        raise InputError(
            f"config key segmentation.volume_plot: {unknown} are not structures of {label_table}"
        )


@dataclass(frozen=True)
class SegmentationPlan:
    """What the segmentation rules need, resolved once at parse time.

    Attributes
    ----------
    labelled : :func:`find_atlases` table, indexed by ``id`` (column kept).
    label_table : path of the label table.
    atlases : ids of the atlases (:func:`atlas_ids`).
    eval_ids : held-out scans scored (:func:`evaluation_ids`).
    image_atlases : image id -> atlases labelling it (:func:`image_atlases`).
    eval_images : held-out id -> workflow image id of the same file (:func:`eval_images`).
    """

    labelled: pd.DataFrame
    label_table: Path
    atlases: list[str]
    eval_ids: list[str]
    image_atlases: dict[str, list[str]]
    eval_images: dict[str, str]

    def eval_atlases(self, held_out: str) -> list[str]:
        """:func:`eval_atlases` of this plan's table."""
        return eval_atlases(self.labelled, held_out)


def plan_segmentation(seg: Mapping, images: pd.DataFrame, bids_dir) -> SegmentationPlan | None:
    """The :class:`SegmentationPlan` of a ``segmentation`` config block for the workflow's
    ``images`` (from ``bids_dir``); None when no atlases are configured.

    Raises
    ------
    InputError naming the config key at fault (see the functions called).
    """
    if not seg["atlases"]:
        return None
    labelled, label_table = find_atlases(seg["atlases"], seg["label_table"], seg["evaluation"])
    labelled = labelled.set_index("id", drop=False)
    eval_ids = evaluation_ids(labelled, seg["evaluation"]["mode"])
    check_volume_plot(seg.get("volume_plot") or [], label_table)
    return SegmentationPlan(
        labelled=labelled,
        label_table=label_table,
        atlases=atlas_ids(labelled),
        eval_ids=eval_ids,
        image_atlases=image_atlases(labelled, images, bids_dir),
        eval_images=eval_images(labelled, eval_ids, images),
    )


def segment_targets(
    plan: SegmentationPlan | None, outputs: Mapping[str, Sequence[str]], *, probseg: bool
) -> list[str]:
    """Files the segmentation adds to ``rule all``.

    Parameters
    ----------
    plan : the plan, or None without atlases (then nothing is added).
    outputs : file lists by group: ``table`` (label table of the segmentations), ``dseg``
        (per image), ``probseg`` (per image tissue maps), ``template``, ``group`` and
        ``evaluation``.
    probseg : whether per-image tissue maps are requested (``segmentation.probseg``).

    Returns
    -------
    The files of every group that applies: ``probseg`` only when requested, ``evaluation``
    only when scans are held out.
    """
    if plan is None:
        return []
    groups = ["table", "dseg", "template", "group"]
    groups += ["probseg"] if probseg else []
    groups += ["evaluation"] if plan.eval_ids else []
    return [str(f) for g in groups for f in outputs[g]]
