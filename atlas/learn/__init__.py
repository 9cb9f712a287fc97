"""Learned age-conditional (4D) deformable atlases in torch, for 2D and 3D images.

Method: conditional deformable templates (Dalca et al. 2019, NeurIPS, "Learning
conditional deformable templates with convolutional networks") built on diffeomorphic
VoxelMorph (Balakrishnan et al. 2019, IEEE TMI; Dalca et al. 2019, MedIA), plus an
age-conditional affine rescaling network (:mod:`atlas.learn.aarn`).

Modules: :mod:`~atlas.learn.layers` (spatial transformer, scaling and squaring),
:mod:`~atlas.learn.networks`, :mod:`~atlas.learn.losses`, :mod:`~atlas.learn.data`
(BIDS cohorts <-> arrays), :mod:`~atlas.learn.train` (resumable training),
:mod:`~atlas.learn.sample` (atlases at ages, TemplateFlow export, registration).
"""

from .aarn import AARN, fit_aarn, mean_scale
from .data import Cohort, load_bids_cohort, write_nifti
from .sample import LearnedAtlas, export_templateflow, montage, register_file, sample
from .train import DEFAULT_CONFIG, train

__all__ = [
    "AARN",
    "DEFAULT_CONFIG",
    "Cohort",
    "LearnedAtlas",
    "export_templateflow",
    "fit_aarn",
    "load_bids_cohort",
    "mean_scale",
    "montage",
    "register_file",
    "sample",
    "train",
    "write_nifti",
]
