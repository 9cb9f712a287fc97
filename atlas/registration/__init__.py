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
  displacement fields in mm, LPS components);
- ``register_preset(fixed, moving, outprefix, ...) -> Registration``: a named preset
  returning forward and inverse :class:`TransformChain`.

``ants`` (antspyx) is the reference backend and the only one today.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from .transforms import (
    FLIP,
    Registration,
    TransformChain,
    jacobian_determinant_image,
    read_affine_ras,
    read_warp,
    write_warp,
)

#: Registration backends by config name -> module implementing the interface above.
BACKENDS = {"ants": "atlas.registration.ants"}


def backend(name: str = "ants") -> ModuleType:
    """The backend module for a config name (imported lazily: ``import ants`` takes ~3 s).

    Raises
    ------
    ValueError for a name not in :data:`BACKENDS`.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown registration backend {name!r}; choose from {sorted(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def set_determinism(seed: int, threads: int) -> None:
    """Fix what makes registrations differ between runs: the random sampling seed and the
    ITK thread count (ANTs reductions depend on it), before ANTs loads.

    A run is reproducible for a given ``threads``; the seed fixes the metric sampling.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed))
    import ants

    ants.config._random_seed = int(seed)


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
    "jacobian_determinant_image",
    "read_affine_ras",
    "read_warp",
    "register",
    "register_preset",
    "set_determinism",
    "write_warp",
]
