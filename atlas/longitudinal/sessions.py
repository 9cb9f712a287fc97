"""Age of each session of a BIDS dataset, in a configurable time unit.

Sources, in order: ``sub-<label>/sub-<label>_sessions.tsv`` (column ``age``); else
``participants.tsv`` ``age`` taken as the age at the subject's earliest ``acq_time`` plus the
time between that and the session's ``acq_time`` in ``*_scans.tsv`` (BIDS specification,
"Sessions file" and "Scans file"). This module reads those tables (parse time); the ages it
returns feed :mod:`atlas.longitudinal.change` and :mod:`atlas.longitudinal.models`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import InputError

#: Length of one time unit in years (Julian year: 365.25 days; week = 7 days).
UNIT_YEARS = {"years": 1.0, "months": 1.0 / 12.0, "weeks": 7.0 / 365.25, "days": 1.0 / 365.25}


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype=str, na_values="n/a", keep_default_na=False)
    except Exception as exc:  # pandas raises several types for malformed tables
        raise InputError(f"{path}: cannot read the table ({exc})") from exc


def _number(value, path: Path, what: str) -> float:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return np.nan
    try:
        return float(value)
    except ValueError as exc:
        raise InputError(f"{path}: {what} {value!r} is not a number") from exc


def sessions_tsv_ages(root: Path, subject: str) -> dict[str, float]:
    """Ages of one subject's sessions from ``sub-<subject>_sessions.tsv`` (``session`` label
    without ``ses-`` -> age; NaN where the cell is empty or ``n/a``); {} without the file or
    its ``age`` column.

    Raises
    ------
    InputError naming the file when an age is not a number or a session is listed twice.
    """
    path = Path(root) / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
    if not path.is_file():
        return {}
    table = _read_tsv(path)
    if "session_id" not in table or "age" not in table:
        return {}
    labels = table.session_id.str.removeprefix("ses-")
    if labels.duplicated().any():
        raise InputError(
            f"{path}: session_id {labels[labels.duplicated()].iloc[0]} is listed twice"
        )
    return {s: _number(a, path, "age") for s, a in zip(labels, table.age, strict=True)}


def scans_acq_times(root: Path, subject: str, sessions) -> dict[str, pd.Timestamp]:
    """Earliest ``acq_time`` of each session's ``sub-X_ses-Y_scans.tsv`` (NaT when missing).

    Raises
    ------
    InputError naming the file when an ``acq_time`` is not an ISO date-time.
    """
    out = {}
    for ses in sessions:
        path = Path(root) / f"sub-{subject}" / f"ses-{ses}" / f"sub-{subject}_ses-{ses}_scans.tsv"
        out[ses] = pd.NaT
        if not path.is_file():
            continue
        table = _read_tsv(path)
        if "acq_time" not in table:
            continue
        try:
            times = pd.to_datetime(table.acq_time.dropna(), format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: acq_time is not an ISO 8601 date-time ({exc})") from exc
        out[ses] = times.min() if len(times) else pd.NaT
    return out


def session_ages(
    root, images: pd.DataFrame, time_unit: str = "years", require_age: bool = True
) -> pd.Series:
    """Age at each session of ``images`` (rows of :func:`atlas.bids.find_t1w`), in ``time_unit``.

    Parameters
    ----------
    root : BIDS root.
    images : columns ``subject``, ``session``, ``age`` (participants.tsv age, ``time_unit``).
    time_unit : unit of every age column of the dataset (``years``, ``months``, ``weeks``,
        ``days``); ``acq_time`` differences are converted to it (:data:`UNIT_YEARS`).
    require_age : raise when a session has no age from either source; else leave NaN.

    Returns
    -------
    Series of ages (float, ``time_unit``) aligned with ``images.index``.

    Raises
    ------
    InputError naming the file (``sessions.tsv``, or ``participants.tsv`` / ``scans.tsv`` of
    the fallback) when a session has no age and ``require_age`` is true, or a value is
    malformed.
    """
    root = Path(root)
    ages = pd.Series(np.nan, index=images.index, dtype=float)
    for subject, rows in images.groupby("subject", sort=False):
        from_sessions = sessions_tsv_ages(root, subject)
        times = scans_acq_times(root, subject, rows.session)
        first = min((t for t in times.values() if pd.notna(t)), default=pd.NaT)
        base = pd.to_numeric(rows.age, errors="coerce").iloc[0]
        for i, ses in zip(rows.index, rows.session, strict=True):
            age = from_sessions.get(ses, np.nan)
            if np.isnan(age) and pd.notna(base) and pd.notna(times[ses]):
                years = (times[ses] - first).total_seconds() / (365.25 * 86400)
                age = float(base) + years / UNIT_YEARS[time_unit]
            if np.isnan(age) and require_age:
                where = root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
                raise InputError(
                    f"{where}: no age for session ses-{ses} of sub-{subject} (column age; or "
                    f"participants.tsv age plus acq_time in sub-{subject}_ses-{ses}_scans.tsv); "
                    "add it, or set config key longitudinal.require_age: false"
                )
            ages[i] = age
    return ages
