"""Parse-time plan of the longitudinal stage (config block ``longitudinal``).

Which subjects are longitudinal (two or more sessions), the age of each session
(:func:`atlas.longitudinal.sessions.session_ages`), and which registration each iteration of a
single-subject template (SST) runs. The SST is built by the population template's SyGN jobs
(``template.init``, ``registration.register_to_template``, ``template.update``) with fewer
iterations: iteration 0 is rigid, iterations ``1 .. sst.affine_iterations - 1`` affine, then
``sst.syn_iterations`` SyN iterations (ANTs longitudinal pipeline, Tustison et al. 2019;
FreeSurfer's unbiased within-subject template, Reuter et al. 2012).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import pandas as pd

from ..io import InputError
from .sessions import session_ages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LongitudinalPlan:
    """Sessions of the longitudinal subjects.

    Attributes
    ----------
    sessions : one row per session of a longitudinal subject: ``subject``, ``session``,
        ``img``, ``subdir``, ``path``, ``age`` (config ``time_unit``), ``sex``; sorted by
        subject then session (natural order).
    single : subjects with one session (not longitudinal; listed in the QC table).
    identical : subjects whose session files are byte-identical (reported, still processed).
    """

    sessions: pd.DataFrame
    single: list[str] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(self.sessions.subject))

    def imgs(self, subject: str) -> list[str]:
        """Image ids (``sub-X_ses-Y``) of one subject's sessions, in session order."""
        return list(self.sessions.img[self.sessions.subject == subject])


def check_longitudinal_config(lcfg: dict) -> None:
    """Reject SST settings the algorithm cannot run.

    Raises
    ------
    InputError naming ``longitudinal.sst.affine_iterations`` (< 1: the rigid iteration is
    needed) or ``longitudinal.sst.syn_iterations`` (< 1).
    """
    for key in ("affine_iterations", "syn_iterations"):
        if int(lcfg["sst"][key]) < 1:
            raise InputError(f"config key longitudinal.sst.{key}: at least 1 is needed")


def _file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_longitudinal(lcfg: dict, images: pd.DataFrame | None, root) -> LongitudinalPlan | None:
    """The plan from every session's image (``images``: :func:`atlas.bids.find_t1w` with
    ``session="all"`` after validation; None when ``longitudinal.enabled`` is false).

    ``enabled: auto`` turns the stage on when a subject has two or more sessions; ``true``
    requires one. Returns None when the stage is off.

    Raises
    ------
    InputError naming ``longitudinal.enabled`` (true but no subject has two sessions), or
    the file of a missing / malformed age (:func:`session_ages`).
    """
    check_longitudinal_config(lcfg)
    enabled = lcfg["enabled"]
    if enabled is False or enabled == "false" or images is None:
        return None
    counts = images[images.session.notna()].groupby("subject").size()
    multi = counts.index[counts >= 2]
    if len(multi) == 0:
        if enabled is True or enabled == "true":
            raise InputError(
                "config key longitudinal.enabled: true, but no selected subject has two or "
                "more sessions (ses-* folders)"
            )
        return None
    single = sorted(set(images.subject) - set(multi))
    for s in single:
        log.warning("longitudinal: sub-%s has one session: not longitudinal", s)
    sessions = images[images.subject.isin(multi)].copy()
    sessions["age"] = session_ages(root, sessions, lcfg["time_unit"], lcfg["require_age"])
    identical = [
        s
        for s, rows in sessions.groupby("subject")
        if len({_file_digest(p) for p in rows.path}) < len(rows)
    ]
    for s in identical:
        log.warning("longitudinal: sub-%s has byte-identical session files", s)
    keep = ["subject", "session", "img", "subdir", "path", "age", "sex"]
    return LongitudinalPlan(sessions[keep].reset_index(drop=True), single, identical)


def sst_stage(k: int, lcfg: dict) -> str:
    """``"rigid"`` (k = 0), ``"affine"`` (k < ``sst.affine_iterations``) or ``"syn"``."""
    k = int(k)
    if k == 0:
        return "rigid"
    return "affine" if k < int(lcfg["sst"]["affine_iterations"]) else "syn"


def sst_params(k: int, lcfg: dict, tcfg: dict) -> dict:
    """Registration settings of SST iteration ``k`` for :func:`atlas.registration.register`:
    the population template's ``template.affine`` stage with ``transform`` Rigid or Affine,
    or ``template.affine`` updated by ``template.syn`` and then by ``longitudinal.sst.syn``
    with ``transform="SyN"``; plus ``greedy`` = ``longitudinal.greedy`` (read by the greedy
    backend only, ``longitudinal.backend``; ``{}`` = :data:`atlas.registration.greedy.DEFAULTS`).
    """
    greedy = dict(lcfg.get("greedy") or {})
    kind = sst_stage(k, lcfg)
    if kind == "syn":
        syn = {**tcfg["syn"], **lcfg["sst"].get("syn", {})}
        return dict(tcfg["affine"], **syn, transform="SyN", greedy=greedy)
    return dict(tcfg["affine"], transform=kind.capitalize(), greedy=greedy)


def sst_to_template_params(lcfg: dict, tcfg: dict) -> dict:
    """Settings of the one registration of an SST to the population template: those of the
    template's last iteration (:func:`atlas.template.plan.stage_params`, full SyN schedule)
    with ``greedy`` = ``longitudinal.greedy``, like the SST's own registrations."""
    from ..template.plan import last_iteration, stage_params

    return stage_params(last_iteration(tcfg), tcfg) | {"greedy": dict(lcfg.get("greedy") or {})}


def backend(lcfg: dict) -> str:
    """Registration engine of the SST registrations and of SST -> template
    (``longitudinal.backend``, default ``ants``: the engine the stage's accuracy and
    reliability were measured with, whatever ``template.backend`` is)."""
    return lcfg.get("backend") or "ants"


def sst_atlases(seg_plan, plan: LongitudinalPlan | None, bids_dir) -> dict[str, list[str]] | None:
    """Atlases that label each subject's SST by multi-atlas segmentation (template route).

    Parameters
    ----------
    seg_plan : :class:`atlas.segmentation.plan.SegmentationPlan`, or None without atlases.
    plan : the longitudinal plan (None: the stage is off).
    bids_dir : the workflow's BIDS root (the sessions' dataset).

    Returns
    -------
    subject -> atlas ids (atlas order): the atlases allowed to label every one of its
    sessions (:func:`atlas.segmentation.plan.image_atlases`: never one of the subject's own
    scans); None when there are no atlases or no longitudinal subjects (the SSTs then get the
    template's labels carried back).

    Raises
    ------
    InputError naming ``segmentation.atlases`` when no atlas is left for a subject.
    """
    from ..segmentation.plan import image_atlases

    if seg_plan is None or plan is None:
        return None
    allowed = image_atlases(seg_plan.labelled, plan.sessions, bids_dir)
    out = {}
    for subject in plan.subjects:
        imgs = plan.imgs(subject)
        out[subject] = [a for a in allowed[imgs[0]] if all(a in allowed[i] for i in imgs)]
        if not out[subject]:
            raise InputError(
                f"config key segmentation.atlases: no atlas left to label the SST of "
                f"sub-{subject} (every atlas is one of its sessions' subject or scan)"
            )
    return out


def n_sst_iterations(lcfg: dict) -> int:
    """Number of SST iterations (registrations of every session), rigid one included."""
    return int(lcfg["sst"]["affine_iterations"]) + int(lcfg["sst"]["syn_iterations"])
