"""Differentiable warping layers shared by the 2D and 3D learned atlases.

Coordinate convention (used by every module of :mod:`atlas.learn`)
------------------------------------------------------------------
Images are tensors ``(batch, channels, *spatial)`` with ``ndim = len(spatial)`` in {2, 3}.
A displacement field ``u`` is a tensor ``(batch, ndim, *spatial)`` in **voxels**;
channel ``i`` is the displacement along array axis ``i`` (the axis of ``spatial[i]``).
Warping an image ``m`` by ``u`` returns ``m ∘ φ`` with ``φ(x) = x + u(x)``, i.e. the
moving image is *pulled back*: ``warped[x] = m[x + u(x)]``, evaluated by (bi/tri)linear
interpolation with ``torch.nn.functional.grid_sample(align_corners=True)``, so voxel
centre ``0`` maps to ``-1`` and voxel centre ``n-1`` to ``+1``. Samples outside the
image are taken from the nearest border voxel (``padding_mode="border"``).
World (mm) coordinates only appear at the I/O boundary (:mod:`atlas.learn.inference`).

References: Jaderberg et al. 2015 (spatial transformer networks); Balakrishnan et al.
2019, IEEE TMI 38(8) (VoxelMorph); Dalca et al. 2019, MedIA 57 (diffeomorphic
VoxelMorph, scaling and squaring); Arsigny et al. 2006, MICCAI (log-Euclidean
framework, exponential of stationary velocity fields).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def identity_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of a regular grid.

    Parameters
    ----------
    shape : sequence of ``ndim`` ints, the spatial shape.

    Returns
    -------
    Tensor ``(1, ndim, *shape)``; channel ``i`` holds the index along array axis ``i``.
    """
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


class SpatialTransformer(nn.Module):
    """Warp images by a dense displacement field: ``out[x] = image[x + u(x)]``.

    See the module docstring for the convention (voxels, channel ``i`` = array axis
    ``i``, ``align_corners=True``). Works for 2D and 3D; the grid is built lazily for the
    input's shape, device and dtype.

    Parameters
    ----------
    mode : ``"bilinear"`` (trilinear in 3D) for images and fields, ``"nearest"`` for
        label maps.
    """

    def __init__(self, mode: str = "bilinear"):
        super().__init__()
        self.mode = mode

    def forward(self, image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        """Warp ``image`` ``(B, C, *S)`` by ``displacement`` ``(B, ndim, *S)`` (voxels).

        Raises
        ------
        ValueError if the spatial shapes differ or the field has not ``ndim`` channels.
        """
        shape = displacement.shape[2:]
        ndim = len(shape)
        if displacement.shape[1] != ndim or image.shape[2:] != shape:
            raise ValueError(
                f"image {tuple(image.shape)} and displacement {tuple(displacement.shape)} "
                f"must be (B, C, *S) and (B, {ndim}, *S)"
            )
        loc = identity_grid(shape, displacement.device, displacement.dtype) + displacement
        scale = torch.tensor(
            [2.0 / max(n - 1, 1) for n in shape], device=loc.device, dtype=loc.dtype
        ).view(1, ndim, *([1] * ndim))
        loc = loc * scale - 1.0
        # grid_sample wants (B, *S, ndim) with the *last* array axis first (x, y, z order).
        grid = loc.permute(0, *range(2, ndim + 2), 1).flip(-1)
        return F.grid_sample(image, grid, mode=self.mode, padding_mode="border", align_corners=True)


class VecInt(nn.Module):
    """Exponential of a stationary velocity field by scaling and squaring.

    ``u = exp(v) - Id`` is computed as ``u_0 = v / 2**steps`` followed by ``steps``
    self-compositions ``u_{k+1} = u_k + u_k ∘ (Id + u_k)`` (Arsigny et al. 2006;
    Dalca et al. 2019, MedIA, Eq. 3). A zero velocity gives exactly a zero displacement,
    and ``exp(-v)`` is the inverse of ``exp(v)`` up to interpolation error.

    Parameters
    ----------
    steps : number of squarings (default 7, i.e. 128 time steps).

    Raises
    ------
    ValueError if ``steps`` is negative.
    """

    def __init__(self, steps: int = 7):
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.steps = steps
        self.transformer = SpatialTransformer("bilinear")

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        """Map a velocity field ``(B, ndim, *S)`` (voxels) to a displacement (voxels)."""
        u = velocity / (2**self.steps)
        for _ in range(self.steps):
            u = u + self.transformer(u, u)
        return u


class ResizeTransform(nn.Module):
    """Resample a displacement/velocity field to another grid size, rescaling its vectors.

    A field in voxels of a grid ``factor`` times coarser is linearly interpolated
    (``align_corners=True``) and multiplied by ``factor`` per axis so that it stays in
    voxels of the target grid.

    Parameters
    ----------
    shape : target spatial shape (``ndim`` ints).
    """

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(n) for n in shape)

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """Resize ``field`` ``(B, ndim, *S_in)`` (voxels of S_in) to ``(B, ndim, *shape)``."""
        src = field.shape[2:]
        if tuple(src) == self.shape:
            return field
        factors = [
            (n_out - 1) / max(n_in - 1, 1) for n_in, n_out in zip(src, self.shape, strict=True)
        ]
        mode = "bilinear" if len(src) == 2 else "trilinear"
        out = F.interpolate(field, size=self.shape, mode=mode, align_corners=True)
        scale = torch.tensor(factors, device=out.device, dtype=out.dtype)
        return out * scale.view(1, -1, *([1] * len(src)))


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Displacement of ``φ_first ∘ φ_second`` (apply ``second`` first when pulling back).

    With ``φ(x) = x + u(x)``: ``(φ_a ∘ φ_b)(x) = x + u_b(x) + u_a(x + u_b(x))``, so
    warping by the composition equals warping by ``first`` then by ``second``.

    Parameters
    ----------
    first, second : displacement fields ``(B, ndim, *S)`` in voxels.

    Returns
    -------
    Displacement ``(B, ndim, *S)`` in voxels.
    """
    return second + SpatialTransformer("bilinear")(first, second)


def integrate_velocity(velocity, steps: int = 7):
    """``exp(v) - Id`` of a numpy velocity field, by :class:`VecInt` (float64, CPU).

    For numpy callers (e.g. synthetic deformations): the same scaling and squaring as the
    networks, with linear interpolation and border padding.

    Parameters
    ----------
    velocity : array ``(ndim, *S)`` in voxels, ``ndim == len(S)`` in {2, 3}; channel ``i``
        is the velocity along array axis ``i``.
    steps : number of squarings (``2**steps`` time steps).

    Returns
    -------
    float64 array ``(ndim, *S)``: the displacement in voxels (pull-back convention of the
    module docstring: ``warped[x] = m[x + u(x)]``).

    Raises
    ------
    ValueError if ``velocity`` is not ``(ndim, *S)`` with ``ndim`` in {2, 3}.
    """
    v = np.asarray(velocity, dtype=np.float64)
    if v.ndim not in (3, 4) or v.shape[0] != v.ndim - 1:
        raise ValueError(f"velocity must be (ndim, *S) with ndim in (2, 3), got {v.shape}")
    with torch.no_grad():
        u = VecInt(steps)(torch.from_numpy(v)[None])
    return u[0].numpy()
