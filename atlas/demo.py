"""A small demo BIDS cohort generated offline from the MNI152 template in nilearn.

Each synthetic subject is the MNI ICBM152 2009a brain (nilearn wheel) deformed by a
random smooth diffeomorphism (a Gaussian-smoothed stationary velocity field integrated
by scaling and squaring), a random rigid pose, an age-dependent global scale (brain
shrinks by 0.2 % per year after 20 y, roughly the adult atrophy rate), a smooth
multiplicative bias field, an intensity gain and Gaussian noise. It is a demo of the
workflow, not data to draw conclusions from.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .io import InputError
from .preprocess.reference import mni152_path


def synthetic_subject(
    template: np.ndarray, spacing_mm: float, age: float, rng: np.random.Generator
) -> np.ndarray:
    """One synthetic T1w volume (same grid as ``template``, arbitrary units >= 0).

    ``template``: ``(X, Y, Z)`` array on a ``spacing_mm`` isotropic grid; ``age`` in years.
    The warp is a stationary velocity field (Gaussian-smoothed noise, sigma 12 mm, peak
    3 mm) integrated by scaling and squaring (:func:`atlas.learn.layers.integrate_velocity`;
    Arsigny et al. 2006).
    """
    from scipy import ndimage  # here: the workflow imports this module at parse time

    from .learn.layers import integrate_velocity

    shape = template.shape
    sigma_vox = 12.0 / spacing_mm
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox) for _ in range(3)])
    v *= (3.0 / spacing_mm) / (np.abs(v).max() + 1e-12)  # peak velocity 3 mm
    u = integrate_velocity(v)
    scale = 1.0 - 0.002 * max(age - 20.0, 0.0)
    angles = np.deg2rad(rng.uniform(-4, 4, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    centre = (np.asarray(shape) - 1) / 2.0
    shift = rng.uniform(-4, 4, 3) / spacing_mm
    grid = np.indices(shape, dtype=np.float64) + u
    pts = grid.reshape(3, -1) - centre[:, None]
    pts = rot @ pts / scale + centre[:, None] + shift[:, None]
    out = ndimage.map_coordinates(template, pts, order=1, mode="constant").reshape(shape)
    xyz = np.indices(shape, dtype=np.float64) / np.asarray(shape)[:, None, None, None] - 0.5
    coef = rng.normal(0, 0.25, 3)
    bias = np.exp(np.tensordot(coef, xyz, axes=1))
    out = out * bias * rng.uniform(0.8, 1.2)
    out = out + rng.normal(0, 0.01 * out.max(), shape) * (out > 0)
    return np.clip(out, 0, None)


def make_demo_bids(bids_dir, n_subjects: int = 5, seed: int = 0, spacing_mm: float = 2.0) -> Path:
    """Write a demo BIDS dataset of ``n_subjects`` synthetic T1w images.

    Ages are uniform in 20-80 years (``participants.tsv``: ``age`` in years, ``sex``).
    The folder is written to a temporary sibling and renamed, so it is complete or
    absent; the temporary folder is removed if generation fails. Returns the folder. An
    existing complete folder (with ``participants.tsv``) is left as it is.

    Raises
    ------
    atlas.io.InputError when ``bids_dir`` exists, is not empty and is not a demo cohort
    (config key ``demo.dir``): it is never deleted or overwritten.
    """
    from scipy import ndimage  # here: the workflow imports this module at parse time

    bids_dir = Path(bids_dir)
    if (bids_dir / "participants.tsv").is_file():
        return bids_dir
    if bids_dir.exists() and (not bids_dir.is_dir() or any(bids_dir.iterdir())):
        raise InputError(
            f"config key demo.dir: {bids_dir} exists and is not a demo cohort (no "
            "participants.tsv); choose an empty or new folder, it is never overwritten"
        )
    rng = np.random.default_rng(seed)
    img = nib.load(str(mni152_path()))
    zoom = 1.0 / spacing_mm
    data = ndimage.zoom(np.asarray(img.dataobj, dtype=np.float64), zoom, order=1)
    affine = img.affine.copy()
    affine[:3, :3] *= spacing_mm
    bids_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{bids_dir.name}.", dir=bids_dir.parent))
    try:
        _write_cohort(tmp, data, affine, n_subjects, spacing_mm, rng)
        if bids_dir.exists():
            bids_dir.rmdir()  # empty (checked above)
        tmp.rename(bids_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bids_dir


def _write_cohort(tmp: Path, data, affine, n_subjects, spacing_mm, rng) -> None:
    rows = []
    for i in range(n_subjects):
        sub = f"demo{i + 1:02d}"
        age = float(np.round(rng.uniform(20, 80), 1))
        vol = synthetic_subject(data, spacing_mm, age, rng)
        vol = np.round(vol / vol.max() * 1000).astype(np.int16)
        out = nib.Nifti1Image(vol, affine)
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
        (tmp / f"sub-{sub}" / "anat").mkdir(parents=True)
        nib.save(out, str(tmp / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"))
        rows.append({"participant_id": f"sub-{sub}", "age": age, "sex": rng.choice(["F", "M"])})
    pd.DataFrame(rows).to_csv(tmp / "participants.tsv", sep="\t", index=False)
    (tmp / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "atlas demo cohort (synthetic, from MNI ICBM152 2009a)",
                "BIDSVersion": "1.9.0",
                "DatasetType": "raw",
            },
            indent=2,
        )
    )


def main(argv=None) -> None:
    """Command line: ``atlas-demo-bids OUT_DIR [--n-subjects N] [--seed S]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--n-subjects", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(make_demo_bids(a.out_dir, a.n_subjects, a.seed))
