"""Image I/O with validation, atomic writes and BIDS-Derivatives names."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


class InputError(ValueError):
    """A user-supplied file or setting is unusable; the message names it and says why."""


def check_nifti(path, read_data: bool = True) -> None:
    """Validate a 3D NIfTI image before any job touches it.

    Checks, in order: the file exists and nibabel can read its header; the image is
    3D (a 4D image with a single volume is accepted); no dimension is zero; a qform
    or sform is set (otherwise world coordinates are undefined); the voxel sizes are
    positive; and, when ``read_data``, the voxels are finite and not all equal.

    Raises
    ------
    InputError naming ``path`` and the first problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file does not exist")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt headers
        raise InputError(f"{path}: not a readable NIfTI image ({exc})") from exc
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3D image, got shape {img.shape}")
    if min(shape) == 0:
        raise InputError(f"{path}: zero-size dimension in shape {img.shape}")
    hdr = img.header
    if int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        raise InputError(f"{path}: neither qform nor sform is set; world coordinates unknown")
    if np.any(np.asarray(hdr.get_zooms()[:3]) <= 0):
        raise InputError(f"{path}: non-positive voxel size {hdr.get_zooms()[:3]}")
    if read_data:
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise InputError(f"{path}: voxel data cannot be read ({exc})") from exc
        if not np.all(np.isfinite(data)):
            n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise InputError(f"{path}: {n} NaN/Inf voxels")
        if data.min() == data.max():
            raise InputError(f"{path}: image is constant ({data.min()})")


def _tmp_sibling(path: Path) -> Path:
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent
    )
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling path; on success it replaces ``path`` atomically.

    A killed or failing writer leaves ``path`` untouched (never half-written): the
    temporary file is removed on error and the rename is atomic on POSIX file systems.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs are shared
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_image(path):
    """Read an image file as ``ants.ANTsImage`` (the counterpart of :func:`write_image`)."""
    import ants

    return ants.image_read(str(path))


def read_sitk(path, vector: bool = False):
    """Read an image file as a SimpleITK image: float32, or float64 vectors with ``vector``
    (displacement fields, as ``SimpleITK.DisplacementFieldTransform`` takes them). For jobs
    that must not load ANTs (~2.5 CPU s)."""
    import SimpleITK as sitk

    return sitk.ReadImage(str(path), sitk.sitkVectorFloat64 if vector else sitk.sitkFloat32)


def write_sitk(image, path) -> None:
    """Write a SimpleITK image as float32, atomically (see :func:`atomic_path`)."""
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(tmp))


def write_all(writes) -> None:
    """Write several outputs all or none.

    ``writes`` is a sequence of ``(writer, obj, path)``; each ``writer(obj, tmp)`` (one of
    the writers below) writes to a temporary sibling of its ``path``. The temporary files
    replace their paths only once every write succeeded, so a failing write leaves none of
    the outputs (and no temporary file) behind.
    """
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(path)) for _, _, path in writes]
        for (write, obj, _), tmp in zip(writes, tmps, strict=True):
            write(obj, tmp)


def write_image(image, path) -> None:
    """Write an ``ants.ANTsImage`` atomically (see :func:`atomic_path`)."""
    import ants

    with atomic_path(path) as tmp:
        ants.image_write(image, str(tmp))


def write_nifti(array, affine, path, dtype=np.float32, intent: str | None = None) -> Path:
    """Write a numpy array as NIfTI-1 with nibabel, atomically.

    Parameters
    ----------
    array : ``(X, Y, Z)`` scalar image (singleton axes allowed), or ``(X, Y, Z, 1, k)``
        vector field when ``intent`` is given (the NIfTI-1 layout of a displacement field).
    affine : ``(4, 4)`` voxel-to-world matrix (RAS, mm).
    path : output ``.nii``/``.nii.gz`` path; parent folders are created.
    dtype : on-disk data type.
    intent : optional NIfTI intent code name (e.g. ``"vector"``).

    Returns
    -------
    ``pathlib.Path`` of the written file.
    """
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), np.asarray(affine))
    img.header.set_xyzt_units("mm", "sec")
    if intent is not None:
        img.header.set_intent(intent)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def write_torch(obj, path) -> None:
    """Save a torch checkpoint (tensors and plain containers only) atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text(text: str, path) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(obj, path) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def write_tsv(df, path) -> None:
    """Write a pandas DataFrame as a tab-separated table (BIDS ``n/a`` for missing) atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="n/a")


def copy_file(src, dst) -> None:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        tmp.write_bytes(Path(src).read_bytes())


def save_figure(fig, path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
