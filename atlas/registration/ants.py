"""The ANTs registration backend (antspyx; SyN: Avants et al. 2008, Med Image Anal 12).

Conventions (those of ANTs): ``fixed`` is the target space, ``moving`` the image that is
warped into it. A *forward* transform list maps points of the fixed space to the moving
space, so ``ants.apply_transforms(fixed, moving, fwd)`` resamples ``moving`` onto ``fixed``.
Transform lists are applied to a point from the last entry to the first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ants

from ..io import atomic_path
from . import check_stage
from .transforms import Registration, TransformChain

if "ANTS_RANDOM_SEED" in os.environ:  # atlas.registration.set_determinism ran before ANTs loaded
    ants.config._random_seed = int(os.environ["ANTS_RANDOM_SEED"])


def registration_kwargs(params: dict) -> dict:
    """Map one config stage (see ``config/config.yaml``, ``template.stages``) to
    ``ants.registration`` keyword arguments."""
    kw = {
        "aff_metric": params.get("affine_metric", "mattes"),
        "aff_sampling": params.get("affine_metric_param", 32),
        "aff_iterations": tuple(params.get("affine_iterations", (2100, 1200, 1200, 10))),
        "aff_shrink_factors": tuple(params.get("affine_shrink_factors", (6, 4, 2, 1))),
        "aff_smoothing_sigmas": tuple(params.get("affine_smoothing_sigmas", (3, 2, 1, 0))),
    }
    if params["transform"] == "SyN":
        kw.update(
            syn_metric=params.get("metric", "CC"),
            syn_sampling=params.get("metric_param", 2),
            reg_iterations=tuple(params.get("iterations", (40, 20, 0))),
            grad_step=params.get("syn_gradient_step", 0.2),
            flow_sigma=params.get("flow_sigma", 3),
            total_sigma=params.get("total_sigma", 0),
        )
    return kw


def register(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    params: dict,
    affine_out,
    warp_out=None,
    inverse_warp_out=None,
    initial_transform=None,
) -> ants.ANTsImage:
    """Register ``moving`` to ``fixed`` (affine, or affine + SyN) and write the transforms.

    Parameters
    ----------
    fixed, moving : 3D images (any grids; world coordinates in mm).
    params : a stage of the template config; ``params["transform"]`` is ``"Rigid"``,
        ``"Affine"`` or ``"SyN"``. SyN runs as two ANTs calls: an affine registration
        with the configured affine schedule, then SyN (``SyNOnly``) initialised by it
        (antspyx's ``"SyN"`` preset would re-run a fixed 2100x1200x1200 affine schedule).
    affine_out : path of the forward affine (``.mat``; any initial transform collapsed in).
    warp_out, inverse_warp_out : paths of the forward / inverse displacement fields
        (``.nii.gz``, mm in LPS physical components); ``warp_out`` is required for SyN,
        the inverse is written only when given.
    initial_transform : path of an affine to start from; None starts from the
        centre-of-mass alignment.

    Returns
    -------
    ``moving`` resampled onto ``fixed`` (linear interpolation).

    Raises
    ------
    ValueError for an unknown transform or a SyN stage without ``warp_out``
    (:func:`atlas.registration.check_stage`).
    """
    transform = check_stage(params, warp_out, inverse_warp_out)
    kw = registration_kwargs(params)
    with tempfile.TemporaryDirectory(prefix="atlas-reg-") as tmpdir:
        out = ants.registration(
            fixed,
            moving,
            type_of_transform="Affine" if transform == "SyN" else transform,
            initial_transform=[str(initial_transform)] if initial_transform else None,
            outprefix=str(Path(tmpdir) / "a"),
            **kw,
        )
        if transform == "SyN":
            # SyNOnly from the affine: ANTs collapses the initial affine into its output
            out = ants.registration(
                fixed,
                moving,
                type_of_transform="SyNOnly",
                initial_transform=[out["fwdtransforms"][-1]],
                outprefix=str(Path(tmpdir) / "s"),
                **kw,
            )
        fwd = out["fwdtransforms"]
        targets = [(fwd[-1], affine_out)]
        if transform == "SyN":
            targets.append((fwd[0], warp_out))
        if inverse_warp_out is not None:
            targets.append((out["invtransforms"][-1], inverse_warp_out))
        for src, dst in targets:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        return out["warpedmovout"]


def register_preset(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    outprefix,
    *,
    fixed_mask: ants.ANTsImage | None = None,
    type_of_transform: str = "SyN",
    reg_iterations: Sequence[int] = (40, 20, 0),
    random_seed: int | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed`` with an ``ants.registration`` preset.

    The default ``"SyN"`` preset is ANTs' affine stage (centre-of-mass initialisation,
    Mattes MI, 4 levels) followed by symmetric normalisation (Avants et al. 2008) with
    Mattes MI; ``reg_iterations`` are the SyN iterations per level, coarse to fine (the
    default skips the full-resolution level, the fast setting used on 2-4 mm data). The
    affine stage samples the metric randomly: :func:`set_determinism` fixes the seed.

    Parameters
    ----------
    fixed, moving : ANTs images (any intensity scale; same dimensionality).
    outprefix : path prefix of the transform files ANTs writes, inside a directory the
        caller owns and removes (antspyx would otherwise leave them in /tmp).
    fixed_mask : optional mask restricting the SyN metric to the fixed-space region.
    type_of_transform : any ``ants.registration`` preset, e.g. ``"Affine"`` or
        ``"antsRegistrationSyNQuick[s]"``.
    reg_iterations : SyN iterations per level, coarse to fine.
    random_seed : metric sampling seed of this call (None: the global one).

    Returns
    -------
    :class:`Registration` whose chains name files under ``outprefix``.

    Raises
    ------
    ValueError when ``outprefix`` is empty or its directory does not exist.
    """
    if not outprefix or not Path(outprefix).parent.is_dir():
        raise ValueError(f"outprefix {outprefix!r} must lie in an existing directory")
    result = ants.registration(
        fixed,
        moving,
        type_of_transform=type_of_transform,
        mask=fixed_mask,
        reg_iterations=tuple(reg_iterations),
        outprefix=str(outprefix),
        **({} if random_seed is None else {"random_seed": random_seed}),
    )
    fwd, inv = result["fwdtransforms"], result["invtransforms"]
    return Registration(
        forward=TransformChain(tuple(fwd), (False,) * len(fwd)),
        inverse=TransformChain(tuple(inv), tuple(p.endswith(".mat") for p in inv)),
        warped=result["warpedmovout"],
    )
