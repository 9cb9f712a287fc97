"""Networks of the learned conditional atlas (Dalca et al. 2019, NeurIPS).

* :class:`UNet` — VoxelMorph encoder/decoder (Balakrishnan et al. 2019, IEEE TMI, Fig. 3).
* :class:`RegistrationNet` — (moving, fixed) -> stationary velocity field -> warp
  (diffeomorphic VoxelMorph, Dalca et al. 2019, MedIA).
* :class:`ConditionalTemplate` — attributes (age, optional sex) -> template image
  ``T(a) = base + decoder(MLP(a))`` (Dalca et al. 2019, NeurIPS, Sec. 3.1), optionally with
  label-probability channels.
* :class:`ConditionalAtlas` — both together; the template is the *moving* image, each
  subject the *fixed* image: ``T(a) ∘ exp(v) ≈ subject``.

All modules serve 2D and 3D; tensors are ``(B, C, *S)``; fields follow the convention
of :mod:`atlas.learn.layers` (voxels, channel ``i`` = array axis ``i``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ResizeTransform, SpatialTransformer, VecInt


def _conv(ndim: int):
    return {2: nn.Conv2d, 3: nn.Conv3d}[ndim]


def _interp_mode(ndim: int) -> str:
    return "bilinear" if ndim == 2 else "trilinear"


class ConvBlock(nn.Module):
    """``conv(3, stride) -> LeakyReLU(0.2)`` as in VoxelMorph."""

    def __init__(self, ndim: int, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = _conv(ndim)(cin, cout, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), 0.2)


class UNet(nn.Module):
    """VoxelMorph U-Net: strided-conv encoder, upsampling decoder with skip connections.

    Parameters
    ----------
    ndim : 2 or 3.
    in_channels : input channels (2 for a (moving, fixed) pair).
    enc : channels of the encoder levels; each halves the resolution.
    dec : channels of the decoder levels (``len(dec) >= n_up``); the first ``n_up``
        upsample (nearest) and concatenate the encoder feature of that resolution, the
        rest are convolutions at the output resolution.
    n_up : decoder upsamplings (default ``len(enc)``: output at the input resolution;
        ``len(enc) - 1``: output at half resolution, enough for a half-resolution
        velocity field and 4x cheaper than VoxelMorph's full-resolution decoder).

    Any spatial shape is accepted: decoder features are resized to the skip's shape.

    Raises
    ------
    ValueError if ``n_up`` is not in ``[0, len(enc)]`` or ``len(dec) < n_up``.
    """

    def __init__(
        self, ndim: int, in_channels: int, enc=(16, 32, 32, 32), dec=(32, 32, 32, 32, 16), n_up=None
    ):
        super().__init__()
        n_up = len(enc) if n_up is None else n_up
        if not 0 <= n_up <= len(enc) or len(dec) < n_up:
            raise ValueError(f"need 0 <= n_up <= len(enc) and len(dec) >= n_up, got {n_up}")
        self.ndim = ndim
        self.down = nn.ModuleList()
        c, skips = in_channels, [in_channels]
        for ch in enc:
            self.down.append(ConvBlock(ndim, c, ch, stride=2))
            c = ch
            skips.append(c)
        skips.pop()
        self.up = nn.ModuleList()
        for ch in dec[:n_up]:
            self.up.append(ConvBlock(ndim, c + skips.pop(), ch))
            c = ch
        self.extra = nn.ModuleList()
        for ch in dec[n_up:]:
            self.extra.append(ConvBlock(ndim, c, ch))
            c = ch
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        history = [x]
        for block in self.down:
            x = block(x)
            history.append(x)
        history.pop()
        for block in self.up:
            skip = history.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        for block in self.extra:
            x = block(x)
        return x


class RegistrationNet(nn.Module):
    """Diffeomorphic VoxelMorph: (moving, fixed) -> velocity ``v`` -> displacement ``exp(v)``.

    The velocity is predicted at ``1/int_downsize`` resolution (the U-Net decoder stops
    there), integrated there by scaling and squaring and resized to full resolution
    (Dalca et al. 2019, MedIA, Sec. 3.2).

    Parameters
    ----------
    shape : full-resolution spatial shape (voxels).
    enc, dec : U-Net channels (see :class:`UNet`).
    int_steps : scaling-and-squaring steps (7 by default).
    int_downsize : factor of the velocity grid, a power of 2 (1 = full resolution).

    Raises
    ------
    ValueError if ``int_downsize`` is not a power of 2 at most ``2**len(enc)``.
    """

    def __init__(
        self, shape, enc=(16, 32, 32, 32), dec=(32, 32, 32, 32, 16), int_steps=7, int_downsize=2
    ):
        super().__init__()
        self.shape = tuple(int(n) for n in shape)
        ndim = len(self.shape)
        levels = int(math.log2(int_downsize))
        if 2**levels != int_downsize or levels > len(enc):
            raise ValueError(
                f"int_downsize must be a power of 2 <= 2**len(enc), got {int_downsize}"
            )
        self.unet = UNet(ndim, 2, enc, dec, n_up=len(enc) - levels)
        self.flow = _conv(ndim)(self.unet.out_channels, ndim, 3, padding=1)
        # Small initial velocities (VoxelMorph initialisation): start near the identity.
        nn.init.normal_(self.flow.weight, 0.0, 1e-5)
        nn.init.zeros_(self.flow.bias)
        self.to_full = ResizeTransform(self.shape)
        self.integrate = VecInt(int_steps)
        self.transformer = SpatialTransformer("bilinear")

    def velocity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Velocity ``(B, ndim, *ceil(shape / int_downsize))``, voxels of that grid."""
        return self.flow(self.unet(torch.cat([moving, fixed], dim=1)))

    def displacement(self, velocity: torch.Tensor) -> torch.Tensor:
        """Full-resolution displacement ``exp(velocity) - Id`` ``(B, ndim, *shape)``, voxels."""
        return self.to_full(self.integrate(velocity))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor):
        """Register ``moving`` to ``fixed`` (both ``(B, 1, *shape)``).

        Returns
        -------
        (warped moving ``(B, 1, *shape)``, low-res velocity, displacement ``(B, ndim, *shape)``)
        """
        v = self.velocity(moving, fixed)
        u = self.displacement(v)
        return self.transformer(moving, u), v, u


class ConditionalTemplate(nn.Module):
    """Attribute-conditional template ``T(a) = base + residual(a)``.

    ``a`` (normalised attributes, e.g. ``[(age - mean) / std, sex]``) goes through an MLP
    to a feature map at ``1 / 2**levels`` resolution, which ``levels - 1`` upsample+conv
    blocks decode to residual channels at half resolution, linearly upsampled to full
    resolution (Dalca et al. 2019, NeurIPS, Fig. 2; the half-resolution residual avoids
    full-resolution convolutions, the dominant CPU cost). The base image is a free
    full-resolution parameter initialised from the cohort's affine mean image.

    Parameters
    ----------
    shape : spatial shape (voxels).
    n_attributes : length of the attribute vector.
    base : initial base image ``(*shape)`` (the affine mean image).
    base_labels : optional initial label logits ``(K, *shape)``; when given, the template
        has ``1 + K`` channels: intensity then label probabilities (softmax of
        ``base_labels + residual``).
    base_tissues : optional initial tissue logits ``(K_t, *shape)`` (background first);
        when given, ``K_t`` tissue-probability channels follow (their own softmax), the
        tissue maps of the tissue-guided atlas (Li group's anatomy-realistic GAN atlas).
    hidden : MLP width; ``channels`` : decoder width; ``levels`` : log2 of the
        MLP-output grid's downsampling (>= 1).

    Raises
    ------
    ValueError if ``levels < 1``.
    """

    def __init__(
        self,
        shape,
        n_attributes,
        base,
        base_labels=None,
        hidden=64,
        channels=16,
        levels=3,
        base_tissues=None,
    ):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.shape = tuple(int(n) for n in shape)
        ndim = len(self.shape)
        self.ndim = ndim
        self.channels = channels
        self.low = tuple(max(1, math.ceil(n / 2**levels)) for n in self.shape)
        self.base = nn.Parameter(
            torch.as_tensor(base, dtype=torch.float32).reshape(1, 1, *self.shape)
        )
        n_labels = 0
        if base_labels is not None:
            labels = torch.as_tensor(base_labels, dtype=torch.float32)
            self.base_labels = nn.Parameter(labels.reshape(1, -1, *self.shape))
            n_labels = labels.shape[0]
        self.n_labels = n_labels
        self.n_tissues = 0
        if base_tissues is not None:
            tissues = torch.as_tensor(base_tissues, dtype=torch.float32)
            self.base_tissues = nn.Parameter(tissues.reshape(1, -1, *self.shape))
            self.n_tissues = tissues.shape[0]
        self.mlp = nn.Sequential(
            nn.Linear(n_attributes, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, channels * math.prod(self.low)),
            nn.LeakyReLU(0.2),
        )
        self.decoder = nn.ModuleList(ConvBlock(ndim, channels, channels) for _ in range(levels - 1))
        self.head = _conv(ndim)(channels, 1 + n_labels + self.n_tissues, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, attributes: torch.Tensor) -> torch.Tensor:
        """Template ``(B, 1 + K + K_t, *shape)`` for normalised ``attributes``
        ``(B, n_attributes)``: intensity, label probabilities, tissue probabilities (each
        group non-negative and summing to 1 per voxel)."""
        x = self.mlp(attributes).view(-1, self.channels, *self.low)
        for block in self.decoder:
            x = block(F.interpolate(x, scale_factor=2, mode=_interp_mode(self.ndim)))
        res = F.interpolate(self.head(x), size=self.shape, mode=_interp_mode(self.ndim))
        out = [self.base + res[:, :1]]
        k = 1 + self.n_labels
        if self.n_labels:
            out.append(torch.softmax(self.base_labels + res[:, 1:k], dim=1))
        if self.n_tissues:
            out.append(torch.softmax(self.base_tissues + res[:, k:], dim=1))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]


class ConditionalAtlas(nn.Module):
    """Conditional template + registration network (Dalca et al. 2019, NeurIPS, Fig. 2).

    ``forward(subject, attributes)`` builds ``T(a)``, registers it (moving) to the subject
    (fixed) and returns a dict with ``template`` ``(B, 1 + K, *S)``, ``warped`` (the
    template channels warped to the subject), ``velocity`` (low-res, voxels) and
    ``displacement`` (``exp(v) - Id``, voxels, atlas -> subject pull-back).
    ``exp(-v)`` (:meth:`inverse_displacement`) carries subject data into atlas space.

    Parameters
    ----------
    template : a :class:`ConditionalTemplate`.
    registration : a :class:`RegistrationNet` of the same shape.
    """

    def __init__(self, template: ConditionalTemplate, registration: RegistrationNet):
        super().__init__()
        self.template = template
        self.registration = registration

    def forward(self, subject: torch.Tensor, attributes: torch.Tensor) -> dict:
        tpl = self.template(attributes)
        warped, v, u = self.registration(tpl[:, :1], subject)
        if tpl.shape[1] > 1:
            warped = torch.cat([warped, self.registration.transformer(tpl[:, 1:], u)], dim=1)
        return {"template": tpl, "warped": warped, "velocity": v, "displacement": u}

    def inverse_displacement(self, velocity: torch.Tensor) -> torch.Tensor:
        """Displacement of ``exp(-v)`` (voxels): pulls subject images into atlas space."""
        return self.registration.displacement(-velocity)
