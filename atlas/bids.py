"""BIDS input queries (pybids) and BIDS-Derivatives output names."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

from .io import InputError, check_nifti, write_json

log = logging.getLogger(__name__)

#: A BIDS label (the value of an entity such as ``sub-`` or ``ses-``): letters and digits.
LABEL = "[0-9a-zA-Z]+"
_SUBJECT_DIR = re.compile(f"sub-({LABEL})")
_SESSION_DIR = re.compile(f"ses-({LABEL})")
#: A BIDS T1w file name: sub-<label>[_ses-<label>][_<key>-<label>...]_T1w.nii[.gz]
_T1W_NAME = re.compile(
    f"sub-({LABEL})(?:_ses-({LABEL}))?(?:_[a-zA-Z]+-{LABEL})*_T1w\\.nii(?:\\.gz)?"
)


def find_t1w(
    bids_dir,
    participant_label=(),
    exclude_participant_label=(),
    session="first",
    cache=None,
) -> pd.DataFrame:
    """Find T1-weighted images of a BIDS dataset with pybids, one row per selected image.

    Parameters
    ----------
    bids_dir : BIDS root folder.
    participant_label, exclude_participant_label : subject labels (with or without
        ``sub-``; integers match zero-padded labels, see :func:`label_matches`) to keep /
        drop (empty keeps all).
    session : ``"first"`` keeps the first session of each subject (labels that are numbers
        in numeric order, ``ses-2`` before ``ses-10``; see :func:`natural_key`), ``"all"``
        keeps every session, any other value keeps that session label only. Among several
        runs (or acquisitions) of a session, the first run (no ``acq-`` first) is kept.
    cache : optional JSON file holding pybids' answer for this dataset, keyed on the T1w
        file names, ``.bidsignore``, ``dataset_description.json`` and the pybids version
        (:func:`_t1w_table`): a re-parse of the workflow (every cluster job) then neither
        imports nor queries pybids (2 s of CPU for 1000 subjects).

    Returns
    -------
    DataFrame with columns ``subject``, ``session`` (None without sessions), ``path``,
    ``age``, ``sex``, ``img`` (BIDS filename prefix, e.g. ``sub-01_ses-1``) and
    ``subdir`` (``sub-01`` or ``sub-01/ses-1``), sorted by ``img``. Ages come from
    ``sessions.tsv`` when it has an ``age`` column, else ``participants.tsv``.

    Raises
    ------
    InputError if the folder is missing or empty, is not BIDS, holds a ``sub-*`` or
    ``ses-*`` folder or a T1w file whose name is not valid BIDS (see
    :func:`check_bids_names`), lists a participant twice, or no T1w image matches the
    filters. Invalid names are an error whatever ``on_bad_subject`` says: such a folder
    has no subject id to exclude it under, and pybids would read a truncated label from
    it (``sub-x;y`` as ``x``), which can merge two folders into one subject.
    """
    root = Path(bids_dir) if bids_dir else None
    if root is None or not root.is_dir():
        raise InputError(f"config key bids_dir: folder {bids_dir!r} does not exist")
    if not any(root.iterdir()):
        raise InputError(f"config key bids_dir: folder {root} is empty")
    df = _t1w_table(root, _scan_bids_names(root), cache)
    if participant_label:
        df = df[label_matches(df.subject, participant_label, "sub-")]
    if exclude_participant_label:
        df = df[~label_matches(df.subject, exclude_participant_label, "sub-")]
    if df.empty:
        raise InputError(f"config key bids_dir: no T1w image found in {root} with the filters")
    df = df.assign(_order=[natural_key(s) for s in df.session])
    df = df.sort_values(["subject", "_order", "run", "acquisition", "path"], na_position="first")
    df = df.drop(columns="_order").drop_duplicates(["subject", "session"], keep="first")
    if session == "first":
        df = df.drop_duplicates("subject", keep="first")
    elif session != "all":
        df = df[label_matches(df.session, [session], "ses-")]
        if df.empty:
            raise InputError(f"config key session: no T1w image with session {session!r}")
    df = _add_demographics(root, df)
    df["img"] = [
        f"sub-{s}" + (f"_ses-{e}" if e else "") for s, e in zip(df.subject, df.session, strict=True)
    ]
    df["subdir"] = [
        f"sub-{s}" + (f"/ses-{e}" if e else "") for s, e in zip(df.subject, df.session, strict=True)
    ]
    _check_unique_outputs(df)
    return df.sort_values("img").reset_index(drop=True)


def check_bids_names(root) -> None:
    """Check the names of a BIDS dataset's subject and session folders and T1w files.

    Every folder ``root/sub-*`` must be ``sub-<label>``, every folder ``root/sub-*/ses-*``
    ``ses-<label>``, with a BIDS label of letters and digits only (``[0-9a-zA-Z]+``, BIDS
    specification, "Entities"; no space, ``;``, ``-``, ``_``, ``.`` or non-ASCII letter).
    Every file of their ``anat`` folders whose name holds ``_T1w.nii`` must be
    ``sub-<label>[_ses-<label>][_<key>-<label>...]_T1w.nii[.gz]`` with the subject and
    session labels of the folders it lies in. Dot files are skipped, as pybids skips
    them. Nothing is read but file names.

    Raises
    ------
    InputError naming the first offending folder or file (``repr`` of its path, so that
    spaces and control characters show) and how many more there are.
    """
    _scan_bids_names(root)


def _scan_bids_names(root) -> tuple[str, ...]:
    """:func:`check_bids_names`; returns the T1w files it saw (sorted paths), which
    identify the pybids query's answer (see :func:`_t1w_table`)."""
    root = Path(root)
    bad = []
    seen = []

    def _anat_files(folder: Path, sub: str, ses: str | None) -> None:
        anat = folder / "anat"
        if not anat.is_dir():
            return
        for f in sorted(anat.iterdir()):
            if "_T1w.nii" not in f.name or f.name.startswith("."):
                continue  # pybids ignores dot files (e.g. macOS ._ resource forks)
            seen.append(str(f))
            m = _T1W_NAME.fullmatch(f.name)
            if m is None:
                bad.append(
                    f"{str(f)!r}: not a BIDS T1w file name "
                    "(sub-<label>[_ses-<label>][_<key>-<value>...]_T1w.nii[.gz], labels of "
                    "letters and digits only); rename or remove the file"
                )
            elif m.groups() != (sub, ses):
                where = f"sub-{sub}" + (f"/ses-{ses}" if ses else "")
                bad.append(
                    f"{str(f)!r}: the subject/session labels of the file name do not match "
                    f"its folder {where}; rename or move the file"
                )

    for sub_dir in sorted(p for p in root.iterdir() if p.name.startswith("sub-") and p.is_dir()):
        m = _SUBJECT_DIR.fullmatch(sub_dir.name)
        if m is None:
            bad.append(
                f"{str(sub_dir)!r}: not a BIDS subject folder name (sub-<label>, label of "
                "letters and digits only); rename or remove the folder"
            )
            continue
        sub = m.group(1)
        _anat_files(sub_dir, sub, None)
        for ses_dir in sorted(
            p for p in sub_dir.iterdir() if p.name.startswith("ses-") and p.is_dir()
        ):
            ms = _SESSION_DIR.fullmatch(ses_dir.name)
            if ms is None:
                bad.append(
                    f"{str(ses_dir)!r}: not a BIDS session folder name (ses-<label>, label "
                    "of letters and digits only); rename or remove the folder"
                )
                continue
            _anat_files(ses_dir, sub, ms.group(1))
    if bad:
        more = f" ({len(bad) - 1} more invalid names)" if len(bad) > 1 else ""
        raise InputError(bad[0] + more)
    return tuple(sorted(seen))


def _check_unique_outputs(df: pd.DataFrame) -> None:
    """No two selected images may share an output name ``img``, compared without case:
    on case-insensitive file systems (macOS, Windows) ``sub-A`` and ``sub-a`` are one
    folder, so their outputs would overwrite each other."""
    seen = {}
    for img, path in zip(df.img, df.path, strict=True):
        other_img, other = seen.setdefault(img.lower(), (img, path))
        if other != path:
            raise InputError(
                f"{str(other)!r} ({other_img}) and {str(path)!r} ({img}) map to the same "
                "output name (output names are compared without case); rename one subject "
                "or session folder"
            )


#: pybids answers of this process: ``{key: table}``. Parsing the workflow asks twice (the
#: template's selection, the longitudinal sessions); indexing 1000 subjects takes seconds.
_T1W_TABLES: dict = {}
_T1W_COLUMNS = ["subject", "session", "run", "acquisition", "path"]


def _t1w_table(root: Path, files: tuple[str, ...], cache=None) -> pd.DataFrame:
    """Every anatomical T1w image of a BIDS folder (pybids): subject, session, run,
    acquisition and path (object columns). ``files``: the T1w files of the folder's
    ``sub-*/[ses-*/]anat`` folders (:func:`_scan_bids_names`); with the folder, its
    ``.bidsignore`` and ``dataset_description.json`` and the pybids version they key the
    in-process cache and the optional JSON ``cache`` file, so a dataset that changed is
    indexed again. An unreadable cache file is ignored (and rewritten)."""
    import hashlib
    from importlib.metadata import version

    def text(name):
        path = root / name
        return path.read_text() if path.is_file() else None

    ident = [str(root.resolve()), files, text(".bidsignore"), text("dataset_description.json")]
    ident.append(version("pybids"))
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
    if key not in _T1W_TABLES:
        _T1W_TABLES.clear()  # one dataset at a time: no growth in long test sessions
        stored = _load_json(cache) if cache else {}
        if stored.get("key") == key and isinstance(stored.get("rows"), list):
            table = pd.DataFrame(stored["rows"], columns=_T1W_COLUMNS, dtype=object)
        else:
            table = _query_t1w(root)
            if cache:
                write_json({"key": key, "rows": table.values.tolist()}, cache)
        _T1W_TABLES[key] = table
    return _T1W_TABLES[key].copy()


def _query_t1w(root: Path) -> pd.DataFrame:
    """The pybids query of :func:`_t1w_table`."""
    import bids

    try:
        layout = bids.BIDSLayout(
            str(root), validate=False, indexer=bids.BIDSLayoutIndexer(index_metadata=False)
        )
    except Exception as exc:
        raise InputError(f"config key bids_dir: {root} is not a BIDS dataset ({exc})") from exc
    files = layout.get(
        suffix="T1w", extension=[".nii", ".nii.gz"], datatype="anat", return_type="object"
    )
    rows = []
    for f in files:
        ent = f.get_entities()
        run = ent.get("run")  # pybids' PaddedInt: an int in JSON
        run = None if run is None else int(run)
        rows.append([ent["subject"], ent.get("session"), run, ent.get("acquisition"), f.path])
    return pd.DataFrame(rows, columns=_T1W_COLUMNS, dtype=object)


def natural_key(label) -> tuple:
    """Sort key of a BIDS label that orders numbers by value (``2`` before ``10``) and
    puts a missing label (None) first."""
    if label is None or (isinstance(label, float) and label != label):
        return (0, 0, "")
    text = str(label)
    return (1, int(text), text) if text.isdigit() else (2, 0, text)


def label_matches(labels: pd.Series, wanted, prefix: str) -> pd.Series:
    """Which ``labels`` (BIDS labels without prefix) are among ``wanted``.

    ``wanted`` holds config values: strings with or without ``prefix`` (``sub-`` or
    ``ses-``), or integers, which YAML makes of unquoted digits (``01`` -> 1): an integer
    matches every all-digit label of that value, so ``1`` selects ``sub-01``.
    """
    names = {str(w).removeprefix(prefix) for w in wanted if not isinstance(w, int)}
    numbers = {int(w) for w in wanted if isinstance(w, int) and not isinstance(w, bool)}
    return labels.map(
        lambda s: (
            s is not None and (str(s) in names or (str(s).isdigit() and int(str(s)) in numbers))
        )
    ).astype(bool)


def _add_demographics(root: Path, df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["age"] = float("nan")
    df["sex"] = None
    ptsv = root / "participants.tsv"
    if ptsv.is_file():
        parts = pd.read_csv(ptsv, sep="\t", dtype={"participant_id": str}, na_values="n/a")
        dup = parts.participant_id[parts.participant_id.duplicated()].unique()
        if len(dup):
            raise InputError(f"{ptsv}: duplicated participant_id {', '.join(map(str, dup))}")
        parts["subject"] = parts.participant_id.str.removeprefix("sub-")
        parts = parts.set_index("subject")
        for col in ("age", "sex"):
            if col in parts:
                df[col] = df.subject.map(parts[col]).to_numpy()
    for i, row in df.iterrows():
        if not row.session:
            continue
        stsv = root / f"sub-{row.subject}" / f"sub-{row.subject}_sessions.tsv"
        if stsv.is_file():
            sess = pd.read_csv(stsv, sep="\t", dtype={"session_id": str}, na_values="n/a")
            match = sess[sess.session_id.str.removeprefix("ses-") == row.session]
            if "age" in sess and len(match):
                df.loc[i, "age"] = float(match.age.iloc[0])
    df["age"] = pd.to_numeric(df["age"], errors="coerce")
    return df


def _file_key(path) -> list:
    """What identifies a file's content for the validation cache: size and mtime (ns)."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def _load_json(cache) -> dict:
    """A JSON object stored by this module (validation results, the pybids answer); {} if
    missing or unreadable."""
    try:
        data = json.loads(Path(cache).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _check_cached(path, known: dict, cache: dict) -> None:
    """:func:`check_nifti` of ``path`` unless ``known`` holds its result for the same
    size and mtime; the (new) result goes into ``cache``. Raises its InputError."""
    path = str(Path(path).resolve())
    key = _file_key(path) if Path(path).is_file() else None
    hit = known.get(path)
    if key is not None and hit is not None and hit.get("key") == key:
        error = hit.get("error")
    else:
        try:
            check_nifti(path)
            error = None
        except InputError as exc:
            error = str(exc)
    if key is not None:
        cache[path] = {"key": key, "error": error}
    if error:
        raise InputError(error)


def validate_images(df: pd.DataFrame, on_bad_subject: str = "fail", cache=None) -> pd.DataFrame:
    """Check every image with :func:`atlas.io.check_nifti` before any job runs.

    ``on_bad_subject="fail"`` raises the first :class:`InputError`; ``"skip"`` drops
    the faulty images, logging each reason, and raises only if none is left.
    ``cache``: a JSON file of earlier results, keyed on path, size and mtime, so that
    re-parsing the workflow (every cluster job does) reads no voxels again; it is
    rewritten only when a result changed.
    """
    known = _load_json(cache) if cache else {}
    fresh: dict = {}
    bad = {}
    try:
        for row in df.itertuples():
            try:
                _check_cached(row.path, known, fresh)
            except InputError as exc:
                if on_bad_subject == "fail":
                    raise
                bad[row.img] = str(exc)
                log.warning("excluding %s: %s", row.img, exc)
    finally:
        if cache and any(known.get(k) != v for k, v in fresh.items()):
            write_json({**known, **fresh}, cache)
    out = df[~df.img.isin(bad)].reset_index(drop=True)
    if out.empty:
        raise InputError("every T1w image failed validation: " + "; ".join(bad.values()))
    out.attrs["excluded"] = bad
    return out
