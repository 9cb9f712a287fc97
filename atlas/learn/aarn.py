"""Age-conditional affine rescaling network (AARN).

Atlases are learned in an affinely normalised space, which removes head size and its
growth/shrinkage with age. Following the affine rescaling network of GAN-based 4D infant
atlases (a small MLP from age to the parameters of an affine map, fitted to the subjects'
normalisation affines), the AARN predicts the mean normalisation affine at an age, so that
the atlas at that age can be returned to age-specific size and position.

Convention: a normalisation affine ``M`` is a homogeneous ``(d+1, d+1)`` matrix in world
millimetres that maps points of the normalised (atlas) space to the subject's native space
(the direction of ANTs' forward transform with the atlas as fixed image, converted to the
images' world convention, e.g. RAS for NIfTI). ``M = [[A, t], [0, 1]]`` with
``A = R · H · diag(exp(s))``: ``s`` log-scales (``d``), ``H`` unit upper-triangular shears
(``d(d-1)/2``), ``R`` a rotation (1 angle in 2D, 3 Euler angles in 3D, radians), ``t`` the
translation (``d``, mm).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import io


def _rotation(angles: torch.Tensor, ndim: int) -> torch.Tensor:
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    if ndim == 2:
        return torch.stack([c[:, 0], -s[:, 0], s[:, 0], c[:, 0]], 1).view(-1, 2, 2)

    def rot(i, a, b):
        m = [[one, zero, zero], [zero, one, zero], [zero, zero, one]]
        m[a][a], m[a][b], m[b][a], m[b][b] = c[:, i], -s[:, i], s[:, i], c[:, i]
        return torch.stack([torch.stack(row, -1) for row in m], 1)

    return rot(2, 0, 1) @ rot(1, 2, 0) @ rot(0, 1, 2)  # Rz @ Ry @ Rx


class AARN(nn.Module):
    """MLP ``age -> (log-scales, shears, rotation, translation) -> affine matrix``.

    Parameters
    ----------
    ndim : 2 or 3, dimension of the affines.
    age_mean, age_std : years; ages are standardised with them before the MLP.
    hidden : width of the two hidden layers.
    translation_mm : mm per unit of the translation outputs, so that all outputs are of
        order one (translations of tens of mm from a zero-initialised output layer left the
        fit unconverged: 7-11 mm landmark RMS after 2000 steps on 8 infants, against < 1 mm
        with translations in units of the 80 mm landmark cube).

    The output layer starts at zero, i.e. the identity affine at every age.
    """

    def __init__(
        self,
        ndim: int = 3,
        age_mean: float = 0.0,
        age_std: float = 1.0,
        hidden: int = 32,
        translation_mm: float = 1.0,
    ):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        self.ndim = ndim
        self.hidden = hidden
        self.translation_mm = float(translation_mm)
        self.register_buffer("age_stats", torch.tensor([age_mean, age_std], dtype=torch.float64))
        n_rot = 1 if ndim == 2 else 3
        self.sizes = {"log_scale": ndim, "shear": ndim * (ndim - 1) // 2, "rotation": n_rot}
        self.sizes["translation"] = ndim
        self.mlp = nn.Sequential(
            nn.Linear(1, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, sum(self.sizes.values())),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def _params(self, ages) -> dict:
        ages = torch.as_tensor(ages, dtype=torch.float64).reshape(-1, 1)
        z = ((ages - self.age_stats[0]) / self.age_stats[1]).float()
        params = dict(
            zip(self.sizes, torch.split(self.mlp(z), list(self.sizes.values()), 1), strict=True)
        )
        params["translation"] = params["translation"] * self.translation_mm
        return params

    def forward(self, ages) -> torch.Tensor:
        """Affine matrices ``(N, d+1, d+1)`` (mm) for ``ages`` ``(N,)`` in years."""
        p = self._params(ages)
        n, d = p["log_scale"].shape[0], self.ndim
        shear = torch.eye(d).repeat(n, 1, 1)
        rows, cols = torch.triu_indices(d, d, offset=1)
        shear[:, rows, cols] = p["shear"]
        linear = _rotation(p["rotation"], d) @ shear @ torch.diag_embed(torch.exp(p["log_scale"]))
        top = torch.cat([linear, p["translation"][:, :, None]], 2)
        bottom = torch.zeros(n, 1, d + 1)
        bottom[:, 0, d] = 1.0
        return torch.cat([top, bottom], 1)

    def affine_parameters(self, ages) -> dict:
        """Predicted parameters at ``ages`` (years) as numpy arrays ``(N, k)``.

        Keys: ``log_scale`` (natural log of the scale factors), ``shear``, ``rotation``
        (radians), ``translation`` (mm).
        """
        with torch.no_grad():
            return {k: v.numpy().astype(np.float64) for k, v in self._params(ages).items()}

    def save(self, path) -> None:
        """Write weights and hyperparameters to ``path`` (torch format), atomically."""
        hyper = {"ndim": self.ndim, "hidden": self.hidden, "translation_mm": self.translation_mm}
        io.write_torch(hyper | {"state": self.state_dict()}, path)

    @classmethod
    def load(cls, path) -> AARN:
        """Read an AARN written by :meth:`save` (files without ``translation_mm`` predate it
        and have translations in mm)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        scale = ckpt.get("translation_mm", 1.0)
        model = cls(ckpt["ndim"], hidden=ckpt["hidden"], translation_mm=scale)
        model.load_state_dict(ckpt["state"])
        return model


def fit_aarn(
    ages, affines, steps: int = 2000, lr: float = 1e-2, radius_mm: float = 80.0, seed: int = 0
) -> AARN:
    """Fit an :class:`AARN` to subjects' normalisation affines.

    Minimises the mean squared distance (mm^2) between the points ``M_pred(age) p`` and
    ``M_subject p`` over the ``2**d`` corners ``p`` of a cube of half-width ``radius_mm``
    centred on the origin (a landmark error that weighs rotation/scale and translation in
    the same unit), with full-batch Adam and a cosine learning-rate decay to zero (the fit
    settles instead of oscillating at the last step); the translation outputs are in units of
    ``radius_mm`` (:class:`AARN` ``translation_mm``).

    Parameters
    ----------
    ages : ``(N,)`` years.
    affines : ``(N, d+1, d+1)`` homogeneous normalisation affines (see module docstring).
    steps, lr : Adam iterations and learning rate.
    radius_mm : half-width of the landmark cube, about the brain's half-extent.
    seed : torch seed for the MLP initialisation.

    Returns
    -------
    The fitted :class:`AARN` (eval mode).

    Raises
    ------
    ValueError if shapes are inconsistent or ``d`` is not 2 or 3.
    """
    ages = np.asarray(ages, dtype=np.float64)
    target = torch.as_tensor(np.asarray(affines), dtype=torch.float32)
    if target.ndim != 3 or target.shape[1] != target.shape[2] or len(target) != len(ages):
        raise ValueError(f"need affines (N, d+1, d+1) and ages (N,), got {tuple(target.shape)}")
    ndim = target.shape[1] - 1
    torch.manual_seed(seed)
    model = AARN(ndim, float(ages.mean()), float(ages.std() or 1.0), translation_mm=radius_mm)
    corners = torch.tensor(
        [
            [radius_mm * (2 * ((i >> k) & 1) - 1) for k in range(ndim)] + [1.0]
            for i in range(2**ndim)
        ]
    ).T
    goal = target @ corners
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = ((model(ages) @ corners - goal) ** 2).sum(1).mean()
        loss.backward()
        optimiser.step()
        schedule.step()
    model.eval()
    return model


def mean_scale(model: AARN, ages) -> np.ndarray:
    """Isotropic scale factor ``exp(mean(log_scale))`` at ``ages`` (years), shape ``(N,)``."""
    return np.exp(model.affine_parameters(ages)["log_scale"].mean(1))
