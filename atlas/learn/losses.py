"""Similarity and regularisation losses of the learned atlas (2D and 3D, any device).

All losses take tensors ``(B, C, *S)`` (images) or ``(B, ndim, *S)`` (velocity or
displacement fields in voxels, channel ``i`` along array axis ``i``) and return a
0-d tensor on the input's device; smaller is better.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _conv(ndim: int):
    return {2: F.conv2d, 3: F.conv3d}[ndim]


def mean_squared_local_ncc(
    a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-8
) -> torch.Tensor:
    """Mean local (windowed) squared normalised cross-correlation.

    For every voxel, ``cc = cov(a, b)^2 / (var(a) var(b) + eps)`` over a cubic window of
    ``window`` voxels per side (truncated at the image border), as in VoxelMorph
    (Balakrishnan et al. 2019, IEEE TMI, Eq. 5; Avants et al. 2008 for the windowed NCC).
    Window means are separable stride-1 average pooling (no device-specific kernels), so
    the function runs unchanged on CPU and GPU. Windows in which either image is constant
    contribute ~0.

    Parameters
    ----------
    a, b : tensors ``(B, 1, *S)``, ``len(S)`` in {2, 3}, same shape.
    window : odd window width in voxels.
    eps : floor of the product of the window variances (intensity units^4).

    Returns
    -------
    0-d tensor in [0, 1]; 1 for identical images with no constant window.

    Raises
    ------
    ValueError if the shapes differ, ``C != 1`` or ``window`` is not a positive odd int.
    """
    if a.shape != b.shape or a.shape[1] != 1:
        raise ValueError(f"expected two (B, 1, *S) tensors, got {tuple(a.shape)}, {tuple(b.shape)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd int, got {window}")
    ndim = a.dim() - 2
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[ndim]
    stats = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    # A box mean over a window truncated at the border is separable: the sum and the voxel
    # count both factor over axes, so one 1D pooling per axis gives the same window means
    # as an N-D pooling at ``ndim * window`` instead of ``window ** ndim`` operations.
    for axis in range(ndim):
        kernel = [1] * ndim
        kernel[axis] = window
        padding = [k // 2 for k in kernel]
        stats = pool(stats, kernel, stride=1, padding=padding, count_include_pad=False)
    mean_a, mean_b, mean_aa, mean_bb, mean_ab = stats.unbind(1)
    cross = mean_ab - mean_a * mean_b
    var_a = mean_aa - mean_a * mean_a
    var_b = mean_bb - mean_b * mean_b
    cc = cross * cross / (var_a * var_b + eps)
    return cc.mean()


def ncc_loss(a: torch.Tensor, b: torch.Tensor, window: int = 9) -> torch.Tensor:
    """``1 - mean_squared_local_ncc(a, b, window)`` (0 for identical textured images)."""
    return 1.0 - mean_squared_local_ncc(a, b, window)


def mse_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared intensity difference (intensity units squared)."""
    return F.mse_loss(a, b)


def _forward_differences(field: torch.Tensor):
    ndim = field.dim() - 2
    return [torch.diff(field, dim=2 + d) for d in range(ndim)]


def diffusion_loss(field: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser ``mean ||∇v||^2`` with forward differences (voxels^2 / voxel^2).

    Balakrishnan et al. 2019, IEEE TMI, Eq. 4. ``field`` is ``(B, ndim, *S)``.
    """
    return sum((g * g).mean() for g in _forward_differences(field))


def laplacian(field: torch.Tensor) -> torch.Tensor:
    """Discrete Laplacian of each channel in the normalised domain ``[-1, 1]^ndim``.

    The ``2 ndim + 1``-point stencil is divided by ``h_d^2`` with ``h_d = 2 / (n_d - 1)``,
    the grid step of ``grid_sample``'s normalised coordinates, so the weight ``alpha`` of
    :func:`operator_loss` does not depend on the image resolution. Borders are
    replicate-padded (zero normal derivative).

    Parameters
    ----------
    field : ``(B, C, *S)``.

    Returns
    -------
    Tensor of the same shape.
    """
    ndim = field.dim() - 2
    channels = field.shape[1]
    kernel = torch.zeros((3,) * ndim, device=field.device, dtype=field.dtype)
    centre = (1,) * ndim
    for d in range(ndim):
        inv_h2 = ((field.shape[2 + d] - 1) / 2.0) ** 2
        for offset in (0, 2):
            kernel[centre[:d] + (offset,) + centre[d + 1 :]] += inv_h2
        kernel[centre] -= 2.0 * inv_h2
    kernel = kernel.expand((channels, 1) + (3,) * ndim)
    padded = F.pad(field, (1, 1) * ndim, mode="replicate")
    return _conv(ndim)(padded, kernel, groups=channels)


def operator_loss(field: torch.Tensor, alpha: float) -> torch.Tensor:
    """``mean ||L v||^2`` with the differential operator ``L = -alpha Δ + Id``.

    The Cauchy-Navier-type smoothness norm of LDDMM (Beg et al. 2005, IJCV, Eq. 6;
    Wu et al. use a cascade of decreasing ``alpha``, see :func:`reg_alpha`).
    ``Δ`` is :func:`laplacian` (normalised domain), ``v`` is in voxels.

    Raises
    ------
    ValueError if ``alpha`` is negative.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    lv = field - alpha * laplacian(field)
    return (lv * lv).mean()


def reg_alpha(alpha, step: int, steps: int) -> float:
    """``alpha`` of :func:`operator_loss` at training ``step`` of ``steps``.

    ``alpha`` is a float (constant) or a sequence of stages, e.g. ``[0.01, 0.005, 0.001]``
    for the three-stage cascade, each stage lasting ``steps / len(alpha)`` steps.
    """
    if isinstance(alpha, int | float):
        return float(alpha)
    stage = min(step * len(alpha) // max(steps, 1), len(alpha) - 1)
    return float(alpha[stage])


def centrality_loss(mean_displacement: torch.Tensor) -> torch.Tensor:
    """``mean ||ū||^2`` of the running-mean displacement ``ū`` ``(1, ndim, *S)`` (voxels^2).

    Pushes the average atlas-to-subject deformation to the identity so that the
    template stays at the centre of the cohort (Dalca et al. 2019, NeurIPS, Sec. 3.2).
    """
    return (mean_displacement * mean_displacement).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``1 - mean soft Dice`` over labels of probability/one-hot maps ``(B, K, *S)``.

    ``Dice_k = 2 Σ p_k t_k / (Σ p_k + Σ t_k)`` per batch element and label (Milletari et
    al. 2016, V-Net, Eq. 1 without squares; Balakrishnan et al. 2019, Eq. 8).

    Raises
    ------
    ValueError if the shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    dims = tuple(range(2, pred.dim()))
    inter = (pred * target).sum(dims)
    total = pred.sum(dims) + target.sum(dims)
    return 1.0 - ((2.0 * inter + eps) / (total + eps)).mean()


def cross_entropy(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``mean_voxels -Σ_k t_k log p_k`` of probability maps ``pred`` and one-hot (or soft)
    ``target`` ``(B, K, *S)``; probabilities are floored at ``eps`` (log of warped maps
    that interpolate to 0).

    Raises
    ------
    ValueError if the shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return -(target * pred.clamp_min(eps).log()).sum(1).mean()


def tissue_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Supervision of the atlas tissue maps: soft Dice over the tissues (background channel
    0 excluded, :func:`dice_loss`) plus the cross-entropy over all channels.

    The soft Dice alone is not a proper scoring rule: its minimiser is not the tissue
    posterior (it saturates towards 0 / 1 by class size), so the argmax of the learned maps
    (the atlas ``_dseg``) is biased; measured on a validation split of the OASIS 2D
    training subjects (600 steps) the learned maps lost WM Dice to the tissue maps voted
    by 20 subjects (0.817 vs 0.845). The cross-entropy's minimiser is the posterior
    (a proper scoring rule), and Dice + cross-entropy with equal weights is the compound
    loss of nnU-Net (Isensee et al. 2021, Nat. Methods): 0.869 WM Dice on the same split.

    Parameters
    ----------
    pred : tissue probabilities ``(B, K, *S)``, background first (softmax output).
    target : one-hot tissue maps of the same shape.
    """
    return dice_loss(pred[:, 1:], target[:, 1:]) + cross_entropy(pred, target)


ADVERSARIAL_LOSSES = ("lsgan", "hinge")


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """Discriminator loss of patch logits ``real`` and ``fake`` (any equal-rank tensors).

    ``lsgan``: ``mean (D(x) - 1)^2 + mean D(G)^2`` (Mao et al. 2017, ICCV, Eq. 9, a = 0,
    b = c = 1); ``hinge``: ``mean relu(1 - D(x)) + mean relu(1 + D(G))`` (Lim & Ye 2017;
    Miyato et al. 2018, Eq. 16).

    Raises
    ------
    ValueError for another ``kind``.
    """
    if kind == "lsgan":
        return ((real - 1.0) ** 2).mean() + (fake**2).mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    raise ValueError(f"adversarial loss must be one of {ADVERSARIAL_LOSSES}, got {kind!r}")


def generator_loss(fake: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """Generator (atlas) adversarial loss of the fake patch logits: ``mean (D(G) - 1)^2``
    (``lsgan``, Mao et al. 2017, Eq. 9, c = 1) or ``-mean D(G)`` (``hinge``).

    Raises
    ------
    ValueError for another ``kind``.
    """
    if kind == "lsgan":
        return ((fake - 1.0) ** 2).mean()
    if kind == "hinge":
        return -fake.mean()
    raise ValueError(f"adversarial loss must be one of {ADVERSARIAL_LOSSES}, got {kind!r}")


def gradient_penalty(critic, points: torch.Tensor, attributes: torch.Tensor, target=0.0):
    """``mean_b (||∇_x mean_p D(x_b, y_b)_p|| - target)^2`` at ``points`` ``(B, C, *S)``.

    ``target = 0`` at real images is the R1 penalty ``||∇D||^2`` (Mescheder et al. 2018,
    ICML, Eq. 9, without the ``γ/2`` factor, which is the caller's weight); ``target = 1``
    at random interpolates of real and fake images is the WGAN-GP penalty (Gulrajani et al.
    2017, NeurIPS, Eq. 3). ``critic(points, attributes)`` returns ``(B, ...)`` logits,
    averaged per batch element. For a linear critic ``D(x) = <w, x>`` the value is
    ``(||w|| - target)^2``. The graph is kept so the penalty can be back-propagated.
    """
    points = points.detach().requires_grad_(True)
    scores = critic(points, attributes).flatten(1).mean(1)
    (grad,) = torch.autograd.grad(scores.sum(), points, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)
    return ((norms - target) ** 2).mean()


def ramp(step: int, warmup_steps: int) -> float:
    """Linear warm-up factor ``min(1, step / warmup_steps)`` (1 when ``warmup_steps <= 0``):
    the adversarial weight starts at 0 so the atlas is first shaped by the similarity loss
    (early adversarial training of an untrained atlas can collapse)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
