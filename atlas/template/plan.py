"""Which registration each template iteration runs, from the config block ``template``.

Iterations ``0 .. affine_iterations - 1`` are affine, the next ``syn_iterations`` are SyN
(affine + deformable); iteration ``k`` registers every image to template ``k`` and its
join job writes template ``k + 1``.
"""

from __future__ import annotations

from ..io import InputError


def check_template_config(tcfg: dict) -> None:
    """Reject template settings the algorithm cannot run.

    Raises
    ------
    atlas.io.InputError naming the config key (``template.syn_iterations`` < 1).
    """
    if int(tcfg["syn_iterations"]) < 1:
        raise InputError("config key template.syn_iterations: at least one SyN iteration is needed")


def stage(k: int, n_affine: int) -> str:
    """``"affine"`` for iteration ``k`` < ``n_affine``, else ``"syn"``."""
    return "affine" if int(k) < int(n_affine) else "syn"


def stage_params(k: int, tcfg: dict) -> dict:
    """Registration settings of iteration ``k`` for :func:`atlas.registration.register`:
    ``template.affine`` with ``transform="Affine"``, or ``template.affine`` updated by
    ``template.syn`` with ``transform="SyN"``; plus ``greedy`` = ``template.greedy`` (read by
    the greedy backend only, :mod:`atlas.registration.greedy`)."""
    greedy = dict(tcfg.get("greedy") or {})
    if stage(k, tcfg["affine_iterations"]) == "affine":
        return dict(tcfg["affine"], transform="Affine", greedy=greedy)
    return dict(tcfg["affine"], **tcfg["syn"], transform="SyN", greedy=greedy)
