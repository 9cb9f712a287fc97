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


def last_iteration(tcfg: dict) -> int:
    """Index of the last registration iteration (``affine_iterations + syn_iterations - 1``):
    the only one whose inverse warps are kept (the final transforms)."""
    return int(tcfg["affine_iterations"]) + int(tcfg["syn_iterations"]) - 1


def coarse_schedule(iterations) -> list[int]:
    """A multi-resolution schedule without its finest level: the last entry set to 0
    (``[100, 50, 10]`` -> ``[100, 50, 0]``; ``[40, 20, 0]`` is unchanged)."""
    return [int(n) for n in iterations[:-1]] + [0]


def stage_params(k: int, tcfg: dict) -> dict:
    """Registration settings of iteration ``k`` for :func:`atlas.registration.register`:
    ``template.affine`` with ``transform="Affine"``, or ``template.affine`` updated by
    ``template.syn`` with ``transform="SyN"``; plus ``greedy`` = ``template.greedy`` and
    ``fireants`` = ``template.fireants`` (read by those backends only,
    :mod:`atlas.registration.greedy`, :mod:`atlas.registration.fireants`).

    With ``template.coarse_to_fine`` (default true), SyN iterations before the last skip
    the finest level of their schedule (:func:`coarse_schedule` of ``template.syn.iterations``,
    ``template.greedy.iterations`` and ``template.fireants.iterations``): early iterations
    only move the template towards the population centre, which the coarse levels do; the
    last iteration, whose transforms are the final ones, runs the full schedule. A
    cost-saving of the multi-resolution
    template construction of ``antsMultivariateTemplateConstruction2.sh`` practice
    (Avants et al. 2010), measured in ``benchmarks/template_ixi.py``.
    """
    from ..registration import fireants
    from ..registration.greedy import DEFAULTS

    greedy = dict(tcfg.get("greedy") or {})
    fire = dict(tcfg.get("fireants") or {})
    if stage(k, tcfg["affine_iterations"]) == "affine":
        return dict(tcfg["affine"], transform="Affine", greedy=greedy, fireants=fire)
    params = dict(tcfg["affine"], **tcfg["syn"], transform="SyN", greedy=greedy, fireants=fire)
    if tcfg.get("coarse_to_fine", True) and int(k) < last_iteration(tcfg):
        params["iterations"] = coarse_schedule(params["iterations"])
        greedy["iterations"] = coarse_schedule(greedy.get("iterations", DEFAULTS["iterations"]))
        fire["iterations"] = coarse_schedule(
            fire.get("iterations", fireants.DEFAULTS["iterations"])
        )
    return params
