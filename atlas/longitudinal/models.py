"""Linear mixed-effects model of volume against age (statsmodels ``mixedlm``).

``volume_ij = (b0 + u0_i) + (b1 + u1_i) (age_ij - mean age) + e_ij`` with a random intercept
and a random slope per subject (Laird & Ware 1982; used for longitudinal MRI volumes by
Bernal-Rusiel et al. 2013). Age is centred so that the intercept is the volume at the
cohort's mean age.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

COLUMNS = [
    "name",
    "term",
    "estimate",
    "std_error",
    "ci_low",
    "ci_high",
    "p_value",
    "n_subjects",
    "n_observations",
    "centre_age",
    "converged",
    "note",
]


def fit_volume_age(data: pd.DataFrame, name: str, alpha: float = 0.05) -> pd.DataFrame:
    """Fit volume ~ age with random intercept and slope per subject for one structure.

    Parameters
    ----------
    data : rows ``subject``, ``age`` (any unit; the slope is per that unit), ``volume_mm3``;
        rows with a missing age or volume are dropped.
    name : structure name written in the ``name`` column.
    alpha : 1 - confidence level of the Wald intervals.

    Returns
    -------
    DataFrame with :data:`COLUMNS`, one row per fixed effect (``intercept``: mm^3 at
    ``centre_age``; ``age``: mm^3 per age unit). When the model cannot be fitted (fewer than
    two subjects, no age spread within subjects, singular fit) one row with NaN estimates and
    the reason in ``note``; a fit that did not converge is kept with ``converged`` false.
    """
    import statsmodels.formula.api as smf

    d = data[["subject", "age", "volume_mm3"]].dropna()
    base = {"name": name, "n_subjects": d.subject.nunique(), "n_observations": len(d)}
    spread = d.groupby("subject").age.agg(lambda a: a.max() - a.min())
    why = None
    if d.subject.nunique() < 2:
        why = "fewer than two subjects with ages"
    elif not (spread > 0).any():
        why = "no subject has sessions at different ages"
    if why:
        return pd.DataFrame([base | {"term": "age", "note": why}], columns=COLUMNS)
    centre = float(d.age.mean())
    d = d.assign(age_c=d.age - centre, vol=d.volume_mm3)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = smf.mixedlm("vol ~ age_c", d, groups=d.subject, re_formula="~age_c").fit(
                reml=True, method=["lbfgs", "powell"]
            )
    except (np.linalg.LinAlgError, ValueError) as exc:
        return pd.DataFrame([base | {"term": "age", "note": f"fit failed: {exc}"}], columns=COLUMNS)
    ci = fit.conf_int(alpha)
    note = "; ".join(sorted({str(w.message).splitlines()[0] for w in caught}))
    rows = []
    for term, label in (("Intercept", "intercept"), ("age_c", "age")):
        rows.append(
            base
            | {
                "term": label,
                "estimate": float(fit.fe_params[term]),
                "std_error": float(fit.bse_fe[term]),
                "ci_low": float(ci.loc[term, 0]),
                "ci_high": float(ci.loc[term, 1]),
                "p_value": float(fit.pvalues[term]),
                "centre_age": centre,
                "converged": bool(fit.converged),
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def fit_structures(volumes: pd.DataFrame, names) -> pd.DataFrame:
    """:func:`fit_volume_age` for each structure of ``names`` present in ``volumes``
    (tidy rows ``subject``, ``age``, ``name``, ``volume_mm3``), concatenated."""
    fits = [fit_volume_age(volumes[volumes.name == n], n) for n in names]
    return pd.concat(fits, ignore_index=True) if fits else pd.DataFrame(columns=COLUMNS)
