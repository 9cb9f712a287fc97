"""Age-conditional patch discriminator of the adversarial atlas (Atlas-GAN).

Method: Atlas-GAN (Dey et al. 2021, ICCV, "Generative Adversarial Registration for
Improved Conditional Deformable Templates", Sec. 3.2): a discriminator judges whether the
atlas at a subject's age, warped to that subject, looks like a real subject of that age.
Real = subject images, fake = ``T(a) ∘ φ``. The discriminator is a PatchGAN (Isola et al.
2017, CVPR) with spectral normalisation on every weight (Miyato et al. 2018, ICLR) and
projection conditioning (Miyato & Koyama 2018, ICLR, "cGANs with projection
discriminator", Eq. 3): ``D(x, y)_p = ψ(h_p) + <V y, h_p>`` for the features ``h_p`` of
patch ``p`` and the normalised attributes ``y`` (age, optional sex).
Its losses (least squares or hinge) and gradient penalties are in :mod:`atlas.learn.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .networks import _conv


class PatchDiscriminator(nn.Module):
    """Spectrally normalised, attribute-conditioned patch discriminator for 2D or 3D images.

    Parameters
    ----------
    ndim : 2 or 3.
    n_attributes : length of the attribute vector (1 = normalised age; 2 = age and sex).
    channels : feature channels of the strided ``conv(3, stride 2) -> LeakyReLU(0.2)``
        levels; each halves the resolution, so a patch logit sees a receptive field of
        ``2**(len(channels) + 1) + 1`` voxels per side.
    in_channels : image channels (1: intensity).
    shift, scale : intensity standardisation of the input, ``(x - shift) / scale`` (the
        training images' mean and standard deviation; buffers saved with the weights).
        Spectral normalisation bounds each layer's gain by 1, so the logit gap between real
        and fake is bounded by their intensity difference in a patch: on the OASIS slices
        (intensities in [0, 0.75]) a discriminator trained alone on subjects vs the
        conditional atlas warped to them separated them less well (least-squares loss 0.23
        after 300 steps) than on unit-scale inputs (0.16), the scale spectrally normalised
        discriminators are built for (inputs in [-1, 1] in Miyato et al. 2018).

    Raises
    ------
    ValueError if ``ndim`` is not 2 or 3 or ``channels`` is empty.
    """

    def __init__(
        self,
        ndim: int,
        n_attributes: int,
        channels=(16, 32, 64),
        in_channels: int = 1,
        shift: float = 0.0,
        scale: float = 1.0,
    ):
        super().__init__()
        if ndim not in (2, 3) or not channels:
            raise ValueError(f"need ndim in (2, 3) and channels, got {ndim}, {channels}")
        conv = _conv(ndim)
        layers, c = [], in_channels
        for ch in channels:
            layers.append(spectral_norm(conv(c, ch, 3, stride=2, padding=1)))
            c = ch
        self.features = nn.ModuleList(layers)
        self.psi = spectral_norm(conv(c, 1, 1))
        self.embed = spectral_norm(nn.Linear(n_attributes, c, bias=False))
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, image: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """Patch logits ``(B, 1, *P)`` of images ``(B, in_channels, *S)`` with attributes
        ``(B, n_attributes)``; ``P = ceil(S / 2**len(channels))``."""
        h = (image - self.shift) / self.scale
        for layer in self.features:
            h = F.leaky_relu(layer(h), 0.2)
        y = self.embed(attributes).view(*attributes.shape[:1], -1, *([1] * (h.dim() - 2)))
        return self.psi(h) + (y * h).sum(1, keepdim=True)
