"""Pairwise registration: one small backend interface, transforms and their conventions.

Conventions (those of ANTs): ``fixed`` is the target space, ``moving`` the image that is
warped into it. A *forward* transform list maps points of the fixed space to the moving
space, so ``ants.apply_transforms(fixed, moving, fwd)`` resamples ``moving`` onto
``fixed``. Transform composition and the LPS/RAS conventions live in
:mod:`atlas.registration.transforms`.

Backends (:data:`BACKENDS`) are modules with the same functions:

- ``register(fixed, moving, params, affine_out, warp_out=None, inverse_warp_out=None,
  initial_transform=None) -> warped image``: one config stage (``params["transform"]`` in
  Rigid / Affine / SyN), transforms written as ANTs files (``.mat`` affine, ``.nii.gz``
  displacement fields in mm, LPS components; the inverse field only when
  ``inverse_warp_out`` is given, :func:`check_stage`);
- ``register_preset(fixed, moving, outprefix, ...) -> Registration``: a named preset
  returning forward and inverse :class:`TransformChain`.

``ants`` (antspyx) is the reference backend; ``greedy`` (picsl-greedy, Greedy's Python API on
SimpleITK images in memory) and ``fireants`` (FireANTs on torch, CUDA when available) write the
same files (:mod:`atlas.registration.greedy`, :mod:`atlas.registration.fireants`).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from .transforms import (
    FLIP,
    Registration,
    TransformChain,
    image_io,
    jacobian_determinant_sitk,
    read_affine_ras,
    read_warp,
    write_affine_ras,
    write_warp,
)

#: Registration backends by config name -> module implementing the interface above.
BACKENDS = {
    "ants": "atlas.registration.ants",
    "fireants": "atlas.registration.fireants",
    "greedy": "atlas.registration.greedy",
}


def backend(name: str = "ants") -> ModuleType:
    """The backend module for a config name (imported lazily: ``import ants`` takes ~3 s).

    Raises
    ------
    ValueError for a name not in :data:`BACKENDS`.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown registration backend {name!r}; choose from {sorted(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def check_stage(params: dict, warp_out, inverse_warp_out) -> str:
    """The transform of one registration stage (``params["transform"]``), checked.

    Raises
    ------
    ValueError for a transform other than Rigid / Affine / SyN, a SyN stage without
    ``warp_out``, or an ``inverse_warp_out`` without a SyN stage. A SyN stage without
    ``inverse_warp_out`` computes no inverse (the template's iterations before the last
    need only the forward warps; the inverse costs ~1.6 s of a Greedy pair at 2 mm).
    """
    transform = params["transform"]
    if transform not in ("Rigid", "Affine", "SyN"):
        raise ValueError(f"unknown transform {transform!r} (Rigid, Affine or SyN)")
    if transform == "SyN" and warp_out is None:
        raise ValueError("a SyN stage needs warp_out")
    if transform != "SyN" and (warp_out is not None or inverse_warp_out is not None):
        raise ValueError(f"a {transform} stage writes no warp")
    return transform


def set_determinism(seed: int, threads: int) -> None:
    """Fix what makes registrations differ between runs: the random sampling seed and the
    ITK thread count (ANTs reductions depend on it), before ANTs loads.

    A run is reproducible for a given ``threads``; the seed fixes the metric sampling (ANTs)
    and the affine sample jitter (Greedy, ``-seed``). ANTs is not imported here (~3 s a job):
    :mod:`atlas.registration.ants` copies the seed into ``ants.config`` when it loads.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed))
    if "ants" in sys.modules:  # already loaded: set it now
        sys.modules["ants"].config._random_seed = int(seed)


def uses_gpu(block) -> bool:
    """Whether the registrations of a config block with a ``backend`` key (``template``,
    ``segmentation.registration``) run on a GPU: the fireants backend with
    ``fireants.device: cuda``. Their rules then request the Snakemake resource ``gpu=1``
    (``auto`` requests none: it uses a GPU only where the job finds one)."""
    fire = block.get("fireants") or {}
    return block.get("backend") == "fireants" and fire.get("device") == "cuda"


def preset_kwargs(registration) -> dict:
    """:func:`register_preset` keywords of a config block ``{transform, iterations, backend,
    greedy, fireants}`` (``segmentation.registration``): ``iterations`` are the ANTs SyN
    iterations, the greedy and fireants backends read their own block
    (:data:`atlas.registration.greedy.DEFAULTS`, :data:`atlas.registration.fireants.DEFAULTS`
    for missing keys). A block without ``backend`` is ANTs."""
    name = registration.get("backend", "ants")
    kw = {"type_of_transform": registration["transform"], "backend_name": name}
    if name in ("greedy", "fireants"):
        kw[name] = dict(registration.get(name) or {})
    else:
        kw["reg_iterations"] = registration["iterations"]
    return kw


def register(*args, backend_name: str = "ants", **kwargs):
    """:func:`register` of the named backend (see the module docstring)."""
    return backend(backend_name).register(*args, **kwargs)


def register_preset(*args, backend_name: str = "ants", **kwargs):
    """:func:`register_preset` of the named backend (see the module docstring)."""
    return backend(backend_name).register_preset(*args, **kwargs)


__all__ = [
    "BACKENDS",
    "FLIP",
    "Registration",
    "TransformChain",
    "backend",
    "check_stage",
    "image_io",
    "jacobian_determinant_sitk",
    "uses_gpu",
    "preset_kwargs",
    "read_affine_ras",
    "read_warp",
    "register",
    "register_preset",
    "set_determinism",
    "write_affine_ras",
    "write_warp",
]
