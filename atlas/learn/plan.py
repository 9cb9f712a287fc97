"""What the learned-atlas rules run, from the config block ``learned`` (read at parse time).

``workflow/rules/learned.smk`` calls these functions when the workflow is parsed; they
decide and check, and the rules only name paths. Nothing here imports torch or ANTs, so
parsing stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..io import InputError
from ..segmentation.labels import TISSUE_CLASSES
from .data import read_tissue_table, sex_codes, tissue_lookup


@dataclass(frozen=True)
class LearnedPlan:
    """Decisions derived from the ``learned`` block.

    Attributes
    ----------
    name : template identifier of the outputs, ``<learned.name>Learned``.
    from_cohort : train on this run's normalised images (``learned.source: cohort``)
        rather than on a BIDS dataset already aligned to one grid.
    res_label : ``res-`` label of the atlas files (the run's resolution label for a
        cohort source, ``"1"`` for a dataset).
    use_aarn : fit the age-conditional affine network (cohort source with ``aarn``).
    learns_labels : the atlas learns label channels (``train.dice_weight > 0``).
    eval_labels : ``evaluation_labels`` for a cohort source, else None (no evaluation).
    device : torch device of the training job (``"cuda"`` with ``use_gpu``, else
        ``"auto"``: CUDA when visible, else CPU).
    tissue_names : tissues of the learned tissue maps (``learned.tissue_weight > 0``):
        CSF, GM, WM for a cohort source (Atropos, :func:`atlas.learn.jobs.atropos_tissues`),
        else read from the dataset's label table of ``learned.tissue_suffix``; empty
        otherwise.
    """

    name: str
    from_cohort: bool
    res_label: str
    use_aarn: bool
    learns_labels: bool
    eval_labels: dict | None
    device: str
    tissue_names: tuple = ()


def plan_learned(lcfg: dict, res_label: str) -> LearnedPlan:
    """The :class:`LearnedPlan` of config block ``lcfg`` for a run at ``res_label``."""
    from_cohort = lcfg["source"] == "cohort"
    return LearnedPlan(
        name=f"{lcfg['name']}Learned",
        from_cohort=from_cohort,
        res_label=res_label if from_cohort else "1",
        use_aarn=bool(lcfg["aarn"]) and from_cohort,
        learns_labels=lcfg["train"]["dice_weight"] > 0,
        eval_labels=lcfg["evaluation_labels"] if from_cohort else None,
        device="cuda" if lcfg["use_gpu"] else "auto",
        tissue_names=tuple(tissue_names(lcfg)),
    )


def tissue_names(lcfg: dict) -> list:
    """Tissues learned by the atlas when ``learned.tissue_weight > 0``: for a cohort source
    the Atropos classes :data:`atlas.segmentation.labels.TISSUE_CLASSES` (CSF, GM, WM); for
    a dataset source those of ``<learned.source>/<learned.tissue_suffix>.tsv``
    (:func:`atlas.learn.data.tissue_lookup`) when the table exists; else ``[]``
    (:func:`check_learned_config` reports a missing table)."""
    if lcfg["tissue_weight"] <= 0:
        return []
    if lcfg["source"] == "cohort":
        return list(TISSUE_CLASSES)
    if not lcfg["tissue_suffix"]:
        return []
    table = Path(lcfg["source"], f"{lcfg['tissue_suffix']}.tsv")
    return tissue_lookup(read_tissue_table(table))[1] if table.is_file() else []


def train_hyper(lcfg: dict) -> dict:
    """Training settings (:data:`atlas.learn.training.DEFAULT_CONFIG` keys) of the block:
    ``learned.train`` plus the variant switches ``learned.tissue_weight`` and
    ``learned.adversarial`` and the ``learned.discriminator`` settings."""
    disc = lcfg["discriminator"]
    return dict(lcfg["train"]) | {
        "tissue_weight": lcfg["tissue_weight"],
        "adversarial": lcfg["adversarial"],
        "adversarial_weight": disc["weight"],
        "disc_lr": disc["lr"],
        "disc_loss": disc["loss"],
        "disc_penalty": disc["penalty"],
        "disc_penalty_weight": disc["penalty_weight"],
        "disc_warmup_steps": disc["warmup_steps"],
        "disc_channels": list(disc["channels"]),
    }


def check_learned_config(lcfg: dict, images: pd.DataFrame) -> None:
    """Reject ``learned`` settings the run cannot honour, before any job starts.

    ``images`` is the run's image table (:func:`atlas.bids.find_t1w`: columns ``img``,
    ``age``, ``sex``).

    Raises
    ------
    atlas.io.InputError naming the config key: a cohort source with an image without age,
    fewer than two images, or ``train.use_sex`` with an image without F/M sex; a dataset
    source without ``participants.tsv``; ``train.dice_weight > 0`` without a dataset source
    and ``label_suffix``; ``tissue_weight > 0`` with ``train.dice_weight > 0``, with a cohort
    source and a ``tissue_suffix`` (its tissue maps come from Atropos), or with a dataset
    source without ``tissue_suffix`` or with an unreadable tissue table.
    """
    from_cohort = lcfg["source"] == "cohort"
    if from_cohort:
        missing = images.img[images.age.isna()]
        if len(missing):
            raise InputError(
                "config key learned.source: the cohort source needs an age for every image; "
                "missing for " + ", ".join(missing)
            )
        if len(images) < 2:
            raise InputError("config key learned.source: the cohort source needs two images")
        if lcfg["train"]["use_sex"] and sex_codes(images.sex) is None:
            raise InputError(
                "config key learned.train.use_sex: needs sex F or M for every image in "
                "participants.tsv"
            )
    elif not Path(lcfg["source"], "participants.tsv").is_file():
        raise InputError(f"config key learned.source: no participants.tsv in {lcfg['source']!r}")
    if lcfg["train"]["dice_weight"] > 0 and (from_cohort or not lcfg["label_suffix"]):
        raise InputError(
            "config key learned.train.dice_weight: > 0 needs a dataset source "
            "(learned.source) with learned.label_suffix"
        )
    _check_tissues(lcfg)


def _check_tissues(lcfg: dict) -> None:
    """The checks of ``learned.tissue_weight`` and ``learned.tissue_suffix`` (see
    :func:`check_learned_config`)."""
    if lcfg["tissue_weight"] <= 0:
        return
    if lcfg["train"]["dice_weight"] > 0:
        raise InputError(
            "config key learned.tissue_weight: > 0 with learned.train.dice_weight > 0 would "
            "write two _dseg atlases; learn labels or tissues"
        )
    if lcfg["source"] == "cohort":
        if lcfg["tissue_suffix"]:
            raise InputError(
                "config key learned.tissue_suffix: dataset source only; the tissue maps of a "
                "cohort source (learned.source: cohort) come from Atropos on each "
                "preprocessed image: set learned.tissue_suffix to null"
            )
        return
    if not lcfg["tissue_suffix"]:
        raise InputError(
            "config key learned.tissue_weight: > 0 with a dataset source (learned.source) "
            "needs learned.tissue_suffix, the file ending of its tissue segmentations"
        )
    table = Path(lcfg["source"], f"{lcfg['tissue_suffix']}.tsv")
    try:
        tissue_lookup(read_tissue_table(table))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"config key learned.tissue_suffix: {exc}") from exc


def train_params(lcfg: dict, images: pd.DataFrame) -> dict:
    """The cohort params of the training job (:func:`atlas.learn.jobs.train_atlas`):
    ``ages`` (in ``learned.age_units``), ``sex`` (F, M or n/a) and ``subjects`` of the run's
    images for a cohort source; the file endings ``image_suffix``, ``label_suffix`` (only
    when labels are learned) and ``tissue_suffix`` (only when tissues are learned) for a
    dataset source."""
    if lcfg["source"] == "cohort":
        return {
            "ages": [float(a) for a in images.age],
            "sex": [str(s) if str(s) in ("F", "M") else "n/a" for s in images.sex],
            "subjects": list(images.img),
        }
    learns_labels = lcfg["train"]["dice_weight"] > 0
    return {
        "image_suffix": lcfg["image_suffix"],
        "label_suffix": lcfg["label_suffix"] if learns_labels else None,
        "tissue_suffix": lcfg["tissue_suffix"] if lcfg["tissue_weight"] > 0 else None,
    }


def train_resources(lcfg: dict, resources: dict) -> dict:
    """``resources`` of the training job, with ``gpu=1`` when ``learned.use_gpu``."""
    return dict(resources, gpu=1) if lcfg["use_gpu"] else dict(resources)


def iterative_registration_params(tcfg: dict) -> dict:
    """Settings of the ANTs affine + SyN registration to the iterative template in the
    evaluation: those of the template's last SyN iteration, the full schedule (one source,
    :func:`atlas.template.plan.stage_params`)."""
    from ..template.plan import last_iteration, stage_params

    return stage_params(last_iteration(tcfg), tcfg)
