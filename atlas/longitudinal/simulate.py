"""Simulated follow-up scans with a known change (issue 12 accuracy and order-bias checks).

A follow-up is made from a real scan by a known smooth deformation: the whole brain shrinks
by ``brain_pct`` % (uniform scaling about the centroid of the labels) and one structure by
``structure_pct`` % in all (a ball around it scaled uniformly, with a cosine taper to the
identity over ``taper_mm``: the taper conserves the volume of ball + taper, so the brain
change stays ``brain_pct`` %). Both scans then get a small rigid motion (so both are
interpolated once and share the same blur; an interpolated follow-up against an untouched
baseline differs in blur, which biased SyN by ~1 %) and fresh Gaussian noise. The true
changes are exact: ``s_g^-3 - 1`` for the brain and ``(s_g + s_l - 1)^-3 - 1`` for the
structure, which lies inside the uniformly scaled ball (the deformation's Jacobian there is
``(s_g + s_l - 1)^3``). Design as in Camara et al. 2008 (simulated atrophy to validate
Jacobian integration) and the ANTs/FreeSurfer longitudinal validations (Reuter et al. 2012,
Tustison et al. 2019) that shrink a known structure.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Rigid motion of (baseline, follow-up): Euler angles (degrees) then translation (mm),
#: about the image's centre of mass.
MOTIONS = ((-1.0, 0.5, 1.0, 0.7, 0.9, -0.6), (2.0, -1.0, 0.0, 1.5, -1.0, 0.5))


@dataclass(frozen=True)
class SimulatedPair:
    """A baseline and its simulated follow-up.

    Attributes
    ----------
    baseline, followup : ``ants.ANTsImage`` (float32, the grid of the input scan).
    labels : the input labels moved with the baseline (nearest label), on the same grid.
    true_structure_pct, true_brain_pct : the exact % volume change follow-up vs baseline.
    true_log_ratio : the simulated deformation's log volume ratio follow-up / baseline
        (``-log det(I + grad u)``) moved with the baseline (linear), on its grid: what a
        registration would recover exactly (to first order in ``u``; uniform over the
        structure's ball, so exact there).
    """

    baseline: object
    followup: object
    labels: object
    true_structure_pct: float
    true_brain_pct: float
    true_log_ratio: object = None


def _ras_affine(image) -> np.ndarray:
    """``(4, 4)`` RAS voxel-to-world matrix of an ANTs image (ANTs stores LPS)."""
    lin = np.asarray(image.direction) @ np.diag(image.spacing)
    flip = np.diag([-1.0, -1.0, 1.0])
    out = np.eye(4)
    out[:3, :3] = flip @ lin
    out[:3, 3] = flip @ np.asarray(image.origin)
    return out


def _taper(r, radius, taper_mm):
    t = np.clip((r - radius) / taper_mm, 0, 1)
    return 0.5 * (1 + np.cos(np.pi * t))


def shrink_displacement(
    labels: np.ndarray,
    spacing,
    structure: int,
    structure_pct: float,
    brain_pct: float = 1.0,
    margin_mm: float = 6.0,
    taper_mm: float = 12.0,
) -> tuple[np.ndarray, float, float]:
    """The displacement of the simulated shrink and the exact % changes it makes.

    Parameters
    ----------
    labels : ``(X, Y, Z)`` integer labels of the baseline (0 = background).
    spacing : voxel size (mm) along the three array axes.
    structure : label id of the structure shrunk by ``structure_pct`` % in all.
    brain_pct : % shrink of every labelled voxel (uniform scaling about their centroid).
    margin_mm, taper_mm : the ball is the structure's largest distance from its centroid
        plus ``margin_mm``; the scaling tapers to the identity over ``taper_mm`` outside it.

    Returns
    -------
    ``(u, true_structure_pct, true_brain_pct)``: ``u`` ``(X, Y, Z, 3)`` displacement in
    voxels along the array axes (follow-up voxel ``x`` samples the baseline at ``x + u``).

    Raises
    ------
    ValueError when ``structure`` is not in ``labels``.
    """
    lab = np.asarray(labels).astype(np.int64)
    pts = np.argwhere(lab == int(structure))
    if not len(pts):
        raise ValueError(f"label {structure} is not in the labels")
    sp = np.asarray(spacing, dtype=float)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in lab.shape], indexing="ij"), -1)
    idx = idx.astype(float)
    c_b = np.argwhere(lab > 0).mean(0)
    c_s = pts.mean(0)
    radius = np.linalg.norm((pts - c_s) * sp, axis=1).max() + margin_mm
    s_g = (1 - brain_pct / 100) ** (-1 / 3)
    s_l = (1 - structure_pct / 100) ** (-1 / 3) - s_g + 1
    g = _taper(np.linalg.norm((idx - c_s) * sp, axis=-1), radius, taper_mm)[..., None]
    u = (s_g - 1) * (idx - c_b) + (s_l - 1) * g * (idx - c_s)
    return u, 100 * ((s_g + s_l - 1) ** -3 - 1), 100 * (s_g**-3 - 1)


def simulate_followup(
    base,
    labels,
    structure: int,
    structure_pct: float,
    *,
    noise: float,
    seed: int,
    brain_pct: float = 1.0,
    motions=MOTIONS,
) -> SimulatedPair:
    """A baseline and a follow-up of ``base`` with a known shrink (module docstring).

    Parameters
    ----------
    base : ``ants.ANTsImage``, a preprocessed scan (any grid, world space in mm).
    labels : ``ants.ANTsImage`` of its labels on the same grid.
    structure, structure_pct, brain_pct : see :func:`shrink_displacement`.
    noise : sd of the Gaussian noise added inside the head of each scan, as a fraction of
        the median intensity inside the labels.
    seed : seed of the noise.
    motions : per scan, rigid Euler angles (degrees) and translation (mm).

    Returns
    -------
    :class:`SimulatedPair`.
    """
    import ants

    from ..metrics import jacobian_determinant
    from ..registration.transforms import write_warp

    u, true_s, true_b = shrink_displacement(
        labels.numpy(), base.spacing, structure, structure_pct, brain_pct
    )
    sp = np.asarray(base.spacing, dtype=float)
    log_ratio = -np.log(jacobian_determinant(u * sp, sp)).astype("float32")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="atlas-sim-") as tmp:
        warp = str(write_warp(u, _ras_affine(base), Path(tmp) / "warp.nii.gz"))
        rigid = []
        for j, params in enumerate(motions):
            tx = ants.create_ants_transform(
                transform_type="Euler3DTransform",
                center=list(base.get_center_of_mass()),
                parameters=[*np.deg2rad(params[:3]), *params[3:]],
                precision="float",
            )
            rigid.append(str(Path(tmp) / f"rigid{j}.mat"))
            ants.write_transform(tx, rigid[-1])
        baseline = ants.apply_transforms(base, base, [rigid[0]])
        moved_labels = ants.apply_transforms(base, labels, [rigid[0]], interpolator="genericLabel")
        moved_ratio = ants.apply_transforms(base, base.new_image_like(log_ratio), [rigid[0]])
        followup = ants.apply_transforms(base, base, [warp, rigid[1]])
    lab = labels.numpy()
    scale = float(np.median(base.numpy()[lab > 0]))
    noisy = []
    for img in (baseline, followup):
        arr = img.numpy()
        arr = arr + rng.normal(0, noise * scale, arr.shape) * (arr > 0)
        noisy.append(img.new_image_like(arr.astype("float32")))
    return SimulatedPair(
        noisy[0], noisy[1], moved_labels, float(true_s), float(true_b), moved_ratio
    )
