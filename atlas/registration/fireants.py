"""The FireANTs registration backend (Jena et al. 2024, "FireANTs: Adaptive Riemannian
Optimization for Multi-Scale Diffeomorphic Matching", arXiv:2404.01249): affine and greedy
deformable registration as first-order optimisation in PyTorch, on a GPU when there is one.

Same functions and conventions as :mod:`atlas.registration.ants` (``fixed`` is the target
space; forward transforms map fixed-space points to the moving space; files in ANTs/ITK
formats), so every consumer of the ANTs files works unchanged. A fireants job never loads
ANTs when its images are SimpleITK images (:func:`atlas.registration.jobs.register_to_template`).

Conventions converted here (checked by point mapping against ANTs in
``tests/unit/test_registration_backends.py``):

- FireANTs' images (``fireants.io.Image``) carry ``torch2phy``: the map of normalised torch
  grid coordinates (``(x, y, z)`` in ``[-1, 1]`` along the ITK index axes i, j, k,
  ``align_corners=True``) to ITK **LPS** physical points. Its affine (rigid, moments)
  matrices ``y = A x + t`` map LPS points of the fixed space to the moving space: an ANTs
  ``.mat`` as it is (written through :func:`atlas.registration.transforms.write_affine_ras`
  after ``F M F``).
- Its deformable result samples the moving image at torch coordinates ``A_t x + u(x)``
  (``A_t = phy2torch_moving · A · torch2phy_fixed``; ``u`` a displacement in the *moving*
  image's normalised units, on the fixed grid). The physical map is ``A X + M u(X)``
  (``M`` the linear part of the moving ``torch2phy``), so the ANTs field applied before the
  affine (chain ``[warp, affine]``) is ``w(X) = A^-1 M u(X)``: mm, LPS components, on the
  fixed grid. FireANTs' own ``save_as_ants_transforms`` writes the composed field
  (affine included) instead, which the template's shape update could not split.
- The inverse field is ITK's fixed-point inverse of ``w``
  (:func:`atlas.registration.transforms.invert_warp`, as the greedy backend), only when asked.

Settings: a stage's ``params`` are read for ``transform`` only (the ANTs optimiser keys have
no FireANTs meaning); FireANTs' own settings come from ``params["fireants"]`` (config
``template.fireants`` / ``segmentation.registration.fireants``), keys as in :data:`DEFAULTS`.
Images are scaled to ``[0, 1]`` (min-max) for the metric (FireANTs' MI assumes that range;
CC is invariant); the warped image returned has the original intensities.

Determinism: CPU runs with a fixed thread count (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``,
which :func:`atlas.registration.set_determinism` sets, copied to ``torch.set_num_threads``)
are bit-identical (no random sampling; tested). ``torch.use_deterministic_algorithms`` is
not set: its import costs ~3.7 s a job and CPU needs it not. On CUDA, ``grid_sample``'s
backward accumulates with atomics: reruns differ by float rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from .transforms import (
    FLIP,
    Registration,
    as_sitk,
    invert_warp,
    itk_threads,
    register_preset_with,
    register_stage,
    registration_seed,
)

#: FireANTs settings (config ``template.fireants`` / ``segmentation.registration.fireants``).
#: ``scales``: downsampling factor per level, coarse to fine, shared by both stages;
#: ``affine_iterations`` / ``iterations``: Adam steps per level of the affine (or rigid) and
#: deformable stages (0 skips a level); metrics ``cc`` (local NCC, window
#: ``cc_kernel_size`` voxels), ``mi`` (global mutual information, Gaussian Parzen windows) or
#: ``mse``; ``fusedcc`` / ``fusedmi`` are the CUDA-fused versions (``fireants_fused_ops``,
#: built from source; without it FireANTs falls back to ``cc`` / ``mi``); ``affine_lr`` /
#: ``lr``: Adam learning rates (affine: matrix entries and mm; deformable: normalised grid
#: units per step of FireANTs' Riemannian Adam); ``smooth_grad_sigma`` / ``smooth_warp_sigma``:
#: Gaussian sigma (voxels of the level) of the update and of the displacement field;
#: ``device``: ``auto`` (CUDA when available, else CPU), ``cuda`` or ``cpu``. Chosen by the
#: sweep in README "Benchmarks" (MICCAI 2012 train pairs, 2 mm, CPU).
DEFAULTS = {
    "scales": [4, 2, 1],
    "affine_metric": "mi",
    "affine_iterations": [200, 100, 50],
    "affine_lr": 0.003,
    "metric": "cc",
    "cc_kernel_size": 5,
    "iterations": [100, 50, 25],
    "lr": 0.5,
    "smooth_grad_sigma": 1.0,
    "smooth_warp_sigma": 0.5,
    "device": "auto",
}

#: Smallest side (voxels) of a fixed image for the deformable stage (FireANTs' MIN_IMG_SIZE).
MIN_SIDE = 32


def device(name: str = "auto") -> str:
    """The torch device of a ``device`` setting: ``auto`` = ``cuda`` when torch sees a GPU.

    Raises
    ------
    ValueError for another name; RuntimeError for ``cuda`` without a GPU (CPU torch build).
    """
    import torch

    if name not in ("auto", "cuda", "cpu"):
        raise ValueError(f"fireants device {name!r}: auto, cuda or cpu")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("fireants device cuda: torch sees no GPU (README, 'GPU install')")
    return name


def _load() -> None:
    """Import FireANTs quietly: it prints its fused-ops status, warns that they are missing
    (the CPU path), sets its loggers to INFO and configures the root logger on import."""
    import contextlib
    import io
    import warnings

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its logger.warn calls
            import fireants.io.image  # noqa: F401
            import fireants.registration.affine  # noqa: F401
            import fireants.registration.greedy  # noqa: F401
            import fireants.registration.moments  # noqa: F401
            import fireants.registration.rigid  # noqa: F401
    finally:
        logging.disable(logging.NOTSET)
        root.handlers[:], root.level = handlers, level
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("fireants"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _batch(image, dev):
    """``(BatchedImages scaled to [0, 1], the unscaled tensor)`` of a SimpleITK image."""
    import contextlib
    import io

    from fireants.io.image import BatchedImages, Image

    with contextlib.redirect_stdout(io.StringIO()):
        img = Image(image, device=dev)
    raw = img.array.clone()
    lo, hi = raw.min(), raw.max()
    img.array = (raw - lo) / (hi - lo) if hi > lo else raw - lo
    return BatchedImages([img]), raw


def _stage_kwargs(s, fixed, moving, prefix: str = "") -> dict:
    """Keywords of a FireANTs registration class shared by both stages, from the settings
    ``{prefix}iterations``, ``{prefix}metric``, ``{prefix}lr`` (affine: ``affine_``)."""
    return dict(
        scales=list(s["scales"]),
        iterations=[int(n) for n in s[f"{prefix}iterations"]],
        fixed_images=fixed,
        moving_images=moving,
        loss_type=s[f"{prefix}metric"],
        optimizer="Adam",
        optimizer_lr=float(s[f"{prefix}lr"]),
        cc_kernel_size=int(s["cc_kernel_size"]),
        progress_bar=False,
    )


def _affine_stage(fixed, moving, *, dof, settings, initial):
    """The optimised ``(4, 4)`` LPS fixed->moving matrix (torch) and its registration."""
    import torch
    from fireants.registration.affine import AffineRegistration
    from fireants.registration.moments import MomentsRegistration
    from fireants.registration.rigid import RigidRegistration

    dev = fixed.device
    if initial is None:  # centre-of-mass alignment (order-1 moments), as ANTs starts
        moments = MomentsRegistration(1, fixed, moving, moments=1, transl_mode="com")
        moments.optimize()
        start = moments.get_affine_init().to(torch.float32)
    else:
        lps = FLIP @ np.asarray(initial, dtype=np.float64) @ FLIP
        start = torch.as_tensor(lps[None, :3], dtype=torch.float32, device=dev)
    common = _stage_kwargs(settings, fixed, moving, "affine_")
    if dof == 6:
        reg = RigidRegistration(
            **common,
            init_translation=start[:, :, 3].contiguous(),
            init_moment=start[:, :, :3].contiguous(),
        )
        reg.optimize()
        return reg.get_rigid_matrix().detach(), reg
    reg = AffineRegistration(**common, init_rigid=start)
    reg.optimize()
    return reg.get_affine_matrix().detach(), reg


def _field(reg, fixed_sitk, affine_lps):
    """The ANTs displacement field ``w = A^-1 M u`` of a FireANTs deformable registration
    (module docstring) as a SimpleITK vector image (mm, LPS) on the fixed grid."""
    import SimpleITK as sitk
    import torch

    with torch.no_grad():
        u = reg.get_warp_parameters(reg.fixed_images, reg.moving_images)["grid"][0]
    m = reg.moving_images.get_torch2phy()[0, :3, :3].double().cpu().numpy()
    linear = np.linalg.solve(affine_lps[:3, :3], m)  # A^-1 M
    w = u.detach().double().cpu().numpy() @ linear.T  # (Z, Y, X, 3), components x y z = LPS
    field = sitk.GetImageFromArray(w, isVector=True)
    field.CopyInformation(fixed_sitk)
    return field


def run_fireants(
    fixed,
    moving,
    *,
    dof: int,
    deformable: bool,
    inverse: bool = True,
    settings=None,
    initial=None,
    seed=None,
    reslice=False,
):
    """Affine (and optionally greedy deformable) FireANTs registration of ``moving`` to
    ``fixed``.

    Parameters
    ----------
    fixed, moving : 3D images, ``ants.ANTsImage`` or SimpleITK (any grids; world mm).
    dof : 6 (``RigidRegistration``) or 12 (``AffineRegistration``).
    deformable : also run ``GreedyRegistration`` (compositive, FireANTs' default) from the
        affine.
    inverse : with ``deformable``, also compute the inverse field (ITK fixed-point).
    settings : FireANTs settings overriding :data:`DEFAULTS`.
    initial : ``(4, 4)`` RAS fixed->moving matrix to start from; None = centre-of-mass
        alignment (FireANTs' ``MomentsRegistration``, first order).
    seed : torch seed (None: ``ANTS_RANDOM_SEED``); FireANTs samples nothing at random, the
        seed is set for any op that would.
    reslice : also return ``moving`` resampled onto ``fixed`` through the result (FireANTs'
        trilinear sampling, 0 outside) as a SimpleITK image, 4th value.

    Returns
    -------
    ``(affine_ras, warp, inverse_warp)`` as :func:`atlas.registration.greedy.run_greedy`.

    Raises
    ------
    ValueError for a deformable registration of a fixed image with a side under
    :data:`MIN_SIDE` voxels (FireANTs' greedy stage resamples every level to at least that
    size, and then fails at full resolution).
    """
    import warnings

    import torch

    s = dict(DEFAULTS, **(settings or {}))
    fixed_sitk, moving_sitk = as_sitk(fixed), as_sitk(moving)
    if deformable and min(fixed_sitk.GetSize()) < MIN_SIDE:
        raise ValueError(
            f"fireants deformable registration needs a fixed image of at least {MIN_SIDE}"
            f" voxels a side, not {fixed_sitk.GetSize()}"
        )
    _load()
    from fireants.registration.greedy import GreedyRegistration

    threads = torch.get_num_threads()
    torch.set_num_threads(itk_threads())
    torch.manual_seed(registration_seed(seed))
    try:
        with warnings.catch_warnings():  # FireANTs' logger.warn calls (deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            dev = device(s["device"])
            fixed_b, _ = _batch(fixed_sitk, dev)
            moving_b, moving_raw = _batch(moving_sitk, dev)
            affine_t, reg = _affine_stage(fixed_b, moving_b, dof=dof, settings=s, initial=initial)
            affine_lps = affine_t[0].double().cpu().numpy()
            warp = inverse_warp = None
            if deformable:
                reg = GreedyRegistration(
                    **_stage_kwargs(s, fixed_b, moving_b),
                    smooth_grad_sigma=float(s["smooth_grad_sigma"]),
                    smooth_warp_sigma=float(s["smooth_warp_sigma"]),
                    init_affine=affine_t,
                )
                reg.optimize()
                warp = _field(reg, fixed_sitk, affine_lps)
                inverse_warp = invert_warp(warp) if inverse else None
            result = (FLIP @ affine_lps @ FLIP, warp, inverse_warp)
            if reslice:
                result += (_resliced(reg, fixed_b, moving_raw, fixed_sitk),)
            return result
    finally:
        torch.set_num_threads(threads)


def _resliced(reg, fixed_b, moving_raw, fixed_sitk):
    """The unscaled moving image resampled onto the fixed grid by a FireANTs registration
    (trilinear, 0 outside), as a SimpleITK image."""
    import SimpleITK as sitk
    import torch

    with torch.no_grad():
        out = reg.evaluate(fixed_b, moving_raw)[0, 0].cpu().numpy()
    resliced = sitk.GetImageFromArray(out.astype(np.float32))
    resliced.CopyInformation(fixed_sitk)
    return resliced


def register(
    fixed,
    moving,
    params: dict,
    affine_out,
    warp_out=None,
    inverse_warp_out=None,
    initial_transform=None,
):
    """Register ``moving`` to ``fixed`` (Rigid, Affine, or affine + greedy deformable) with
    FireANTs and write the transforms as ANTs files (see
    :func:`atlas.registration.greedy.register`: same parameters, files and return value);
    ``params.get("fireants")`` overrides :data:`DEFAULTS`.

    Raises
    ------
    ValueError for an unknown transform or a SyN stage without ``warp_out``
    (:func:`atlas.registration.check_stage`).
    """
    paths = (affine_out, warp_out, inverse_warp_out, initial_transform)
    return register_stage(run_fireants, "fireants", fixed, moving, params, *paths)


def register_preset(
    fixed,
    moving,
    outprefix,
    *,
    fixed_mask=None,
    type_of_transform: str = "SyN",
    reg_iterations: Sequence[int] | None = None,
    random_seed: int | None = None,
    fireants: Mapping | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed`` with FireANTs, for the callers of
    :func:`atlas.registration.ants.register_preset` (as
    :func:`atlas.registration.greedy.register_preset`: ``"Rigid"``, ``"Affine"`` or any
    SyN-family preset = affine + greedy deformable; files under ``outprefix`` with ANTs'
    names). ``reg_iterations``: deformable iterations per level (None:
    ``fireants["iterations"]`` or :data:`DEFAULTS`); ``fireants`` overrides :data:`DEFAULTS`.
    ``fixed_mask`` is not used (FireANTs' masked metrics need the mask as an image channel
    of both images); the metric covers the whole fixed grid.

    Raises
    ------
    ValueError when ``outprefix`` is empty or its directory does not exist.
    """
    opts = dict(settings=fireants, reg_iterations=reg_iterations, seed=random_seed)
    return register_preset_with(run_fireants, fixed, moving, outprefix, type_of_transform, **opts)
