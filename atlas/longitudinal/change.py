"""Volumes, Jacobian integration and change between sessions (arrays and tables only).

Tensor-based morphometry through a within-subject template: the volume a structure of the
single-subject template (SST) occupies in session ``s`` is the integral of the Jacobian
determinant of the SST -> session map over the structure (Jacobian integration; Ashburner &
Friston 2000, Hua et al. 2013, as in the ANTs longitudinal pipeline, Tustison et al. 2019).
Every session is measured with the same labels up to the deformation, so label noise cancels
in the change (Reuter et al. 2012). :func:`jacobian_integration` is that measure for one
session from its session -> SST transform files: the workflow's session job, the one-process
SST of tests and benchmarks (:mod:`atlas.longitudinal.sst`) and the benchmark's naive route
all go through it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .sessions import UNIT_YEARS


def log_jacobian(det: np.ndarray, affine_linear: np.ndarray | None = None) -> np.ndarray:
    """Log-Jacobian determinant of a transform ``x -> A(x + u(x))``.

    Parameters
    ----------
    det : Jacobian determinant of the deformable part ``x + u(x)``, any shape (unitless).
    affine_linear : ``(3, 3)`` linear part of the affine ``A`` applied after it (None: the
        identity); its determinant multiplies every voxel's.

    Returns
    -------
    ``log(det * |det A|)`` (float64, same shape); ``-inf`` / NaN where ``det <= 0`` (folding).
    """
    extra = 0.0 if affine_linear is None else np.log(abs(np.linalg.det(affine_linear)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(det, dtype=np.float64)) + extra


def jacobian_volumes(
    log_jac: np.ndarray, dseg: np.ndarray, table: pd.DataFrame, voxel_mm3: float
) -> pd.DataFrame:
    """Volumes of the labelled structures of a template mapped into one session.

    Parameters
    ----------
    log_jac : log-Jacobian determinant of the template -> session map on the template grid
        (``(X, Y, Z)``, :func:`log_jacobian`); non-finite voxels count as 0 volume.
    dseg : labels of the template, same shape (0 = background).
    table : label table (``index``, ``name``).
    voxel_mm3 : template voxel volume (mm^3).

    Returns
    -------
    DataFrame ``label``, ``name``, ``volume_mm3`` (sum of ``exp(log_jac)`` x voxel volume over
    the structure), ``mean_log_jacobian``; then ``total_brain`` (every non-zero label) and
    ``total_GM``, ``total_WM``, ``total_CSF`` (labels of that ``class`` of the table, as
    :func:`atlas.segmentation.volumes.image_volumes`), without ``label``.
    """
    jac = np.exp(np.where(np.isfinite(log_jac), log_jac, -np.inf))
    dseg = np.asarray(dseg).astype(np.int64)
    rows = []
    for idx, name in zip(table["index"], table["name"], strict=True):
        m = dseg == int(idx)
        rows.append((int(idx), name, *_integrate(jac, log_jac, m, voxel_mm3)))
    rows.append((pd.NA, "total_brain", *_integrate(jac, log_jac, dseg > 0, voxel_mm3)))
    classes = table["class"] if "class" in table else pd.Series("", index=table.index)
    for tissue in ("GM", "WM", "CSF"):
        m = np.isin(dseg, table.loc[classes == tissue, "index"].astype(int))
        rows.append((pd.NA, f"total_{tissue}", *_integrate(jac, log_jac, m, voxel_mm3)))
    return pd.DataFrame(rows, columns=["label", "name", "volume_mm3", "mean_log_jacobian"])


def jacobian_integration(domain, affine, warp, dseg: np.ndarray, table: pd.DataFrame):
    """Volumes of the labelled structures of ``domain`` in one session (Jacobian integration).

    Parameters
    ----------
    domain : ``ants.ANTsImage`` on whose grid the labels live (the SST).
    affine, warp : the session -> SST registration's affine (``.mat``) and warp files, i.e.
        the forward transform list ``[warp, affine]`` mapping a ``domain`` point ``x`` to
        ``A(x + u(x))`` in the session.
    dseg : integer labels on the ``domain`` grid; ``table`` : label table (``index``,
        ``name``, optional ``class``), as :func:`jacobian_volumes`.

    Returns
    -------
    ``(volumes, det, log_jac)``: the :func:`jacobian_volumes` table, the Jacobian
    determinant of the warp (:func:`atlas.registration.jacobian_determinant_sitk`) and the
    log-Jacobian of the whole map (:func:`log_jacobian`, the affine's determinant included),
    both arrays on ``domain``.
    """
    from ..registration import jacobian_determinant_sitk, read_affine_ras

    det = jacobian_determinant_sitk(warp).T  # the warp lies on the domain's grid
    lj = log_jacobian(det, read_affine_ras(affine)[:3, :3])
    volumes = jacobian_volumes(lj, dseg, table, float(np.prod(domain.spacing)))
    return volumes, det, lj


def _integrate(jac, log_jac, mask, voxel_mm3) -> tuple[float, float]:
    if not mask.any():
        return 0.0, np.nan
    lj = log_jac[mask]
    return float(jac[mask].sum() * voxel_mm3), float(lj[np.isfinite(lj)].mean())


def annualised_percent(v0, v1, t0, t1, time_unit: str = "years"):
    """Percentage change ``100 (v1 - v0) / v0`` and its rate per year.

    Parameters
    ----------
    v0, v1 : volumes (mm^3) at ages ``t0``, ``t1`` (``time_unit``); scalars or arrays.

    Returns
    -------
    ``(percent, percent_per_year)``; the rate is NaN where ``t1 - t0`` is 0 or unknown.
    """
    v0, v1 = np.asarray(v0, float), np.asarray(v1, float)
    years = (np.asarray(t1, float) - np.asarray(t0, float)) * UNIT_YEARS[time_unit]
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = 100.0 * (v1 - v0) / v0
        rate = np.where(years != 0, pct / years, np.nan)
    return pct, rate


def change_table(volumes: pd.DataFrame, time_unit: str = "years") -> pd.DataFrame:
    """Change between sessions of every subject, structure and method.

    Parameters
    ----------
    volumes : tidy rows ``subject``, ``session``, ``age`` (``time_unit``), ``method``,
        ``name``, ``volume_mm3`` and ``reason`` (empty when the session passed QC; else why
        its volume must not be used: its changes are NaN with that reason). Sessions are
        taken in row order per subject.

    Returns
    -------
    DataFrame ``subject``, ``method``, ``name``, ``comparison`` (``consecutive`` or
    ``from_first``), ``session_from``, ``session_to``, ``interval_years``, ``change_mm3``,
    ``change_pct``, ``annualised_pct_per_year``, ``reason``.
    """
    rows = []
    for (subject, method, name), g in volumes.groupby(["subject", "method", "name"], sort=False):
        g = g.reset_index(drop=True)
        for j in range(1, len(g)):
            for comparison, i in (("consecutive", j - 1), ("from_first", 0)):
                a, b = g.iloc[i], g.iloc[j]
                reason = "; ".join(r for r in (a.reason, b.reason) if isinstance(r, str) and r)
                pct, rate = annualised_percent(a.volume_mm3, b.volume_mm3, a.age, b.age, time_unit)
                bad = bool(reason)
                rows.append(
                    {
                        "subject": subject,
                        "method": method,
                        "name": name,
                        "comparison": comparison,
                        "session_from": a.session,
                        "session_to": b.session,
                        "interval_years": (b.age - a.age) * UNIT_YEARS[time_unit],
                        "change_mm3": np.nan if bad else b.volume_mm3 - a.volume_mm3,
                        "change_pct": np.nan if bad else float(pct),
                        "annualised_pct_per_year": np.nan if bad else float(rate),
                        "reason": reason,
                    }
                )
    return pd.DataFrame(rows)
