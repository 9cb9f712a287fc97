"""The Greedy registration backend (picsl-greedy, the engine of ASHS and ITK-SNAP; Yushkevich
et al. 2016, "Fast automatic segmentation of hippocampal subfields and medial temporal lobe
subregions in 3 Tesla and 7 Tesla T2-weighted MRI", Alzheimer's & Dementia 12(7), P126).

Same functions and conventions as :mod:`atlas.registration.ants` (``fixed`` is the target
space; forward transforms map fixed-space points to the moving space; files in ANTs/ITK
formats), so every consumer of the ANTs files (``ants.apply_transforms``,
:class:`atlas.registration.TransformChain`, ``jacobian_determinant_sitk``, the template
shape update) works unchanged. Images go to Greedy as SimpleITK images in memory.

Conventions converted here (checked by point mapping against ANTs in
``tests/unit/test_registration_backends.py``):

- Greedy's affine matrices are ``(4, 4)`` maps of **RAS** physical points of the fixed
  space to the moving space; ANTs ``.mat`` files hold the same map on **LPS** points, so
  :func:`atlas.registration.transforms.write_affine_ras` flips them (``F M F``).
- Greedy's displacement fields (and their inverses,
  :func:`atlas.registration.transforms.invert_warp`) are ITK vector
  images, mm in LPS physical components, on the fixed grid and applied before the affine
  (``-r warp affine``): the ANTs layout, so they are written as they are.

Settings: a registration stage's ``params`` (``template.affine`` / ``template.syn``, see
``config/config.yaml``) are read for ``transform`` only; the ANTs optimiser keys
(``affine_*``, ``metric``, ``iterations``, ``syn_gradient_step``, ``flow_sigma``,
``total_sigma``) have no Greedy meaning and are ignored. Greedy's own settings come from
``params["greedy"]`` (config ``template.greedy``), keys as in :data:`DEFAULTS`.
"""

from __future__ import annotations

import io as _io
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from .transforms import (
    Registration,
    as_sitk,
    invert_warp,
    itk_threads,
    register_preset_with,
    register_stage,
    registration_seed,
)

#: Greedy settings (config ``template.greedy`` / ``segmentation.registration.greedy``).
#: ``iterations`` per level coarse to fine (level ``i`` of ``n`` at shrink ``2^(n-1-i)``);
#: ``metric_radius`` in voxels (NCC patch half-width, ``-m NCC 2x2x2``); ``smoothing_vox``
#: = Greedy ``-s``: sigma of the update field and of the total field, voxels; ``svf``:
#: stationary velocity model (``-sv``, diffeomorphic, inverse by exponentiating -v).
DEFAULTS = {
    "affine_metric": "NCC",
    "affine_iterations": [100, 50, 0],
    "metric": "NCC",
    "metric_radius": 2,
    "iterations": [100, 50, 10],
    "smoothing_vox": [1.732, 0.7071],
    "svf": False,
}


def _metric(name: str, radius: int) -> str:
    name = str(name).upper()
    return f"{name} {'x'.join([str(int(radius))] * 3)}" if name in ("NCC", "WNCC") else name


def _levels(iterations) -> str:
    return "x".join(str(int(n)) for n in iterations)


def run_greedy(
    fixed,
    moving,
    *,
    dof: int,
    deformable: bool,
    inverse: bool = True,
    settings=None,
    initial=None,
    fixed_mask=None,
    seed=None,
    reslice=False,
):
    """Affine (and optionally deformable) Greedy registration of ``moving`` to ``fixed``.

    Parameters
    ----------
    fixed, moving : ``ants.ANTsImage`` 3D images (any grids; world coordinates in mm).
    dof : 6 (rigid) or 12 (affine).
    deformable : also run the deformable stage (``-m``, ``-n``, ``-s``, optionally ``-sv``)
        from the affine.
    inverse : with ``deformable``, also compute the inverse field (:func:`invert_warp`).
    settings : Greedy settings overriding :data:`DEFAULTS`.
    initial : ``(4, 4)`` RAS fixed->moving matrix to start from; None = centre-of-mass
        alignment (``-ia-moments 1``, as ANTs' default initialisation).
    fixed_mask : optional ``ants.ANTsImage`` restricting the metric (``-gm``).
    reslice : also resample ``moving`` onto ``fixed`` through the result (Greedy ``-r``,
        linear interpolation, 0 outside) and return it as a 4th value (SimpleITK).
    seed : seed of the affine stage's sample jitter (``-seed``); None = ``ANTS_RANDOM_SEED``
        as :func:`atlas.registration.set_determinism` set it (Greedy's own default, 0, is
        not reproducible).

    Returns
    -------
    ``(affine_ras, warp, inverse_warp)``: the ``(4, 4)`` RAS fixed->moving matrix and the
    SimpleITK displacement fields (mm, LPS; None without ``deformable``, the inverse None
    without ``inverse``).

    Raises
    ------
    RuntimeError from Greedy on a failed registration.
    """
    from picsl_greedy import Greedy3D

    s = dict(DEFAULTS, **(settings or {}))
    g = Greedy3D()
    images = {"fix": as_sitk(fixed), "mov": as_sitk(moving), "aff": None}
    mask = ""
    if fixed_mask is not None:
        images["gmask"], mask = as_sitk(fixed_mask), "-gm gmask"
    common = f"-d 3 -threads {itk_threads()} -seed {registration_seed(seed)} -i fix mov {mask}"
    log = _io.StringIO()
    with tempfile.TemporaryDirectory(prefix="atlas-greedy-") as tmp:
        init = f"{tmp}/init.mat"  # Greedy reads an initial matrix from a file only
        if initial is None:  # centre-of-mass alignment (order-1 moments), as ANTs starts
            g.execute(f"{common} -moments 1 -o init", out=log, err=log, init=None, **images)
            init = "init"
        else:
            np.savetxt(init, np.asarray(initial, dtype=np.float64))
        g.execute(
            f"{common} -ia {init} -a -dof {int(dof)}"
            f" -m {_metric(s['affine_metric'], s['metric_radius'])}"
            f" -n {_levels(s['affine_iterations'])} -o aff",
            out=log,
            err=log,
            **images,
        )
    affine = np.asarray(g["aff"], dtype=np.float64)
    if not deformable:
        return (affine, None, None) + ((_reslice(g, "aff", log),) if reslice else ())
    sigmas = " ".join(f"{float(v)}vox" for v in s["smoothing_vox"])
    g.execute(
        f"{common} -it aff -m {_metric(s['metric'], s['metric_radius'])}"
        f" -n {_levels(s['iterations'])} -s {sigmas} {'-sv' if s['svf'] else ''}"
        " -wp 0 -o warp",
        out=log,
        err=log,
        warp=None,
    )
    result = (affine, g["warp"], invert_warp(g["warp"]) if inverse else None)
    return result + ((_reslice(g, "warp aff", log),) if reslice else ())


def _reslice(g, transforms: str, log):
    """``mov`` resampled onto ``fix`` through ``transforms`` (Greedy's cache names)."""
    g.execute(f"-d 3 -rf fix -rm mov resliced -r {transforms}", out=log, err=log, resliced=None)
    return g["resliced"]


def register(
    fixed,
    moving,
    params: dict,
    affine_out,
    warp_out=None,
    inverse_warp_out=None,
    initial_transform=None,
):
    """Register ``moving`` to ``fixed`` (Rigid, Affine, or affine + deformable) with Greedy
    and write the transforms as ANTs files (see :func:`atlas.registration.ants.register`).

    Parameters
    ----------
    fixed, moving : 3D images, both ``ants.ANTsImage`` or both SimpleITK images (then ANTs
        is never loaded: the job saves its ~3 s import).
    params : a stage of the template config; ``params["transform"]`` is ``"Rigid"``
        (``-dof 6``), ``"Affine"`` (``-dof 12``) or ``"SyN"`` (``-dof 12`` then Greedy's
        deformable stage); ``params.get("greedy")`` overrides :data:`DEFAULTS`.
    affine_out : path of the forward affine (``.mat``, ITK/LPS; the initial transform is
        the optimisation's start, so the written affine contains it).
    warp_out, inverse_warp_out : forward / inverse displacement fields (``.nii.gz``, mm in
        LPS components); ``warp_out`` is required for SyN, the inverse is computed and
        written only when given.
    initial_transform : path of an ANTs ``.mat`` affine to start from; None starts from the
        centre-of-mass alignment.

    Returns
    -------
    ``moving`` resampled onto ``fixed`` (linear interpolation): ``ants.apply_transforms``
    of the written files for ANTs images, Greedy's reslicing for SimpleITK images.

    Raises
    ------
    ValueError for an unknown transform or a SyN stage without ``warp_out``
    (:func:`atlas.registration.check_stage`).
    """
    return register_stage(
        run_greedy,
        "greedy",
        fixed,
        moving,
        params,
        affine_out,
        warp_out,
        inverse_warp_out,
        initial_transform,
    )


def register_preset(
    fixed,
    moving,
    outprefix,
    *,
    fixed_mask=None,
    type_of_transform: str = "SyN",
    reg_iterations: Sequence[int] | None = None,
    random_seed: int | None = None,
    greedy: Mapping | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed`` with Greedy, for the callers of
    :func:`atlas.registration.ants.register_preset`.

    ``type_of_transform``: ``"Rigid"`` (``-dof 6``), ``"Affine"`` (``-dof 12``) or any
    SyN-family ANTs preset name (``"SyN"``, ``"SyNRA"``, ``"antsRegistrationSyNQuick[s]"``):
    affine then Greedy's deformable stage. ``reg_iterations``: deformable iterations per
    level, coarse to fine (None: ``greedy["iterations"]`` or :data:`DEFAULTS`); ``greedy``
    overrides :data:`DEFAULTS`. ``random_seed``: the seed of the affine stage's sample jitter
    (None: ``ANTS_RANDOM_SEED``). Files are written under ``outprefix`` with ANTs' names
    (``0GenericAffine.mat``, ``1Warp.nii.gz``, ``1InverseWarp.nii.gz``).

    Returns
    -------
    :class:`Registration` whose chains name files under ``outprefix``.

    Raises
    ------
    ValueError when ``outprefix`` is empty or its directory does not exist.
    """
    return register_preset_with(
        run_greedy,
        fixed,
        moving,
        outprefix,
        type_of_transform,
        settings=greedy,
        reg_iterations=reg_iterations,
        fixed_mask=fixed_mask,
        seed=random_seed,
    )
