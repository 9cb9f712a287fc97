"""Learned age-conditional (4D) deformable atlases in torch, for 2D and 3D images.

Method: conditional deformable templates (Dalca et al. 2019, NeurIPS, "Learning
conditional deformable templates with convolutional networks") built on diffeomorphic
VoxelMorph (Balakrishnan et al. 2019, IEEE TMI; Dalca et al. 2019, MedIA), plus an
age-conditional affine rescaling network (:mod:`atlas.learn.aarn`). Two switches give the
2 x 2 variants of one model family: ``adversarial`` (Atlas-GAN, Dey et al. 2021, ICCV: an
age-conditional patch discriminator, :mod:`~atlas.learn.discriminator`) and
``tissue_weight`` (tissue probability maps learned with the atlas, the anatomy-realistic
GAN 4D atlas with tissue maps of Gang Li's group); see :mod:`~atlas.learn.training`.

Methods: :mod:`~atlas.learn.layers` (spatial transformer, scaling and squaring),
:mod:`~atlas.learn.networks`, :mod:`~atlas.learn.losses`, :mod:`~atlas.learn.aarn`,
:mod:`~atlas.learn.data` (cohorts: arrays on one grid and the one loader of their files),
:mod:`~atlas.learn.training` (resumable training), :mod:`~atlas.learn.inference` (atlases at
ages, TemplateFlow export, one-pass registration) and :mod:`~atlas.learn.evaluation`
(measures shared with the iterative template). Rules: :mod:`~atlas.learn.plan`
(parse-time decisions and checks) and :mod:`~atlas.learn.jobs` (the job functions).

Names are imported lazily, so ``atlas.learn.plan`` is usable at parse time without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AARN": "aarn",
    "fit_aarn": "aarn",
    "mean_scale": "aarn",
    "Cohort": "data",
    "load_bids_cohort": "data",
    "load_cohort": "data",
    "LearnedAtlas": "inference",
    "LearnedRegistration": "inference",
    "export_templateflow": "inference",
    "montage": "inference",
    "register_file": "inference",
    "sample": "inference",
    "DEFAULT_CONFIG": "training",
    "TrainingDiverged": "training",
    "loss_terms": "training",
    "train": "training",
    "PatchDiscriminator": "discriminator",
    "integrate_velocity": "layers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'atlas.learn' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
