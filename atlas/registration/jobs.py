"""Job functions of registration steps that several stages' rules call (one Snakemake job
each; ``params.step = "registration.<function>"``).

Kept apart from the stage packages so that a job of the greedy (or fireants) backend loads
neither ANTs (``import ants``: ~3 s per job on 2 cores) nor the stage's averaging and
plotting code: its images are read and written with SimpleITK and resampled by Greedy (or
FireANTs).
"""

from __future__ import annotations

__all__ = ["register_to_template"]


def register_to_template(
    *,
    template,
    image,
    out_affine,
    out_warped,
    params,
    initial_affine=None,
    out_warp=None,
    out_inverse_warp=None,
    backend="ants",
):
    """Register one image to template_k: affine, or affine + SyN when ``params``
    (:func:`atlas.template.plan.stage_params`) says ``transform: SyN`` (then ``out_warp``
    and ``out_inverse_warp`` are required), with :func:`atlas.registration.register`.
    ``initial_affine``: affine to start from (None: centre-of-mass alignment; the
    longitudinal stage registers a subject's SST, already on the template's grid, this
    way). ``backend``: the registration engine (config ``template.backend``, a name of
    :data:`atlas.registration.BACKENDS`); ``greedy`` and ``fireants`` run on SimpleITK images
    throughout.
    Writes the transforms (ANTs formats) and the image resampled onto the template
    (linear interpolation, float32)."""
    from . import image_io, register

    read, write = image_io(backend)
    warped = register(
        read(template),
        read(image),
        params,
        out_affine,
        out_warp,
        out_inverse_warp,
        initial_transform=initial_affine,
        backend_name=backend,
    )
    write(warped, out_warped)
