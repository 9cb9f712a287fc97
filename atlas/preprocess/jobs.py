"""Job functions of the preprocessing and affine-normalisation rules
(``workflow/rules/preprocess.smk``): read inputs, call :mod:`atlas.preprocess` and
:mod:`atlas.registration`, write outputs atomically."""

from __future__ import annotations

from .. import io
from ..registration import register
from .methods import preprocess_t1w
from .reference import reference_grid, reference_path


def reference(*, out_image, out_mask, reference, reference_mask, resolution, margin_mm):
    """Reference image and brain mask on the template grid (``resolution`` mm)."""
    path = reference_path(reference)
    io.check_nifti(path)
    mask = io.read_image(reference_mask) if reference_mask else None
    ref, ref_mask = reference_grid(io.read_image(path), resolution, mask, margin_mm)
    io.write_all([(io.write_image, ref, out_image), (io.write_image, ref_mask, out_mask)])


def preprocess_image(t1w, reference_image, settings: dict):
    """Validate and preprocess one T1w file (:func:`atlas.preprocess.preprocess_t1w`).

    ``settings`` is :func:`atlas.preprocess.plan.preprocess_settings` (template paths as
    strings). Returns (image, brain mask, provenance dict with ``Sources``).

    Raises
    ------
    atlas.io.InputError naming ``t1w`` when it is not a usable 3D NIfTI image.
    """
    io.check_nifti(t1w)
    kw = dict(settings)
    for key in ("head_template", "head_mask"):
        kw[key] = io.read_image(kw[key]) if kw.get(key) else None
    image, mask, info = preprocess_t1w(
        io.read_image(t1w), reference=io.read_image(reference_image), **kw
    )
    info["Sources"] = [str(t1w)]
    return image, mask, info


def preprocess(*, t1w, reference_image, out_image, out_mask, out_json, settings):
    """Preprocess one T1w image: the preprocessed image, its brain mask and a JSON sidecar."""
    image, mask, info = preprocess_image(t1w, reference_image, settings)
    io.write_all(
        [
            (io.write_image, image, out_image),
            (io.write_image, mask, out_mask),
            (io.write_json, info, out_json),
        ]
    )


def normalise(*, image, reference_image, out_affine, out_warped, rigid_only, affine_params):
    """Centre-of-mass initialisation, rigid then affine registration to the reference.

    ``rigid_only`` (reference ``cohort``) stops after the rigid stage: the template's
    affine iterations then make the cohort's own unbiased affine template. The rigid
    transform stays in a temporary file until the affine result replaces it, so
    ``out_affine`` only ever holds the final transform.
    """
    import tempfile
    from pathlib import Path

    fixed, moving = io.read_image(reference_image), io.read_image(image)
    params = dict(affine_params, transform="Rigid")
    if rigid_only:
        warped = register(fixed, moving, params, out_affine)
    else:
        with tempfile.TemporaryDirectory(prefix="atlas-norm-") as tmp:
            rigid = Path(tmp) / "rigid.mat"
            register(fixed, moving, params, rigid)
            params["transform"] = "Affine"
            warped = register(fixed, moving, params, out_affine, initial_transform=rigid)
    io.write_image(warped, out_warped)
