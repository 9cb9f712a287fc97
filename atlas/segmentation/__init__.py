"""Multi-atlas segmentation: label every image and the template from labelled atlases.

Methods (arrays and images in, arrays, images and tables out), along the pipeline:

- :mod:`~atlas.segmentation.labels`: label tables, tissue classes, atlas checks;
- :mod:`~atlas.segmentation.propagation`: atlases onto a target grid through transform
  chains, with the registration QC gate (:func:`propagate_atlases`, :func:`segment_target`);
- :mod:`~atlas.segmentation.fusion`: majority, locally weighted voting, joint label fusion
  and STAPLE (:func:`fuse`);
- :mod:`~atlas.segmentation.tissue`: GM/WM/CSF maps from labels, or Atropos without atlases;
- :mod:`~atlas.segmentation.volumes`: structure and tissue volumes, group tables;
- :mod:`~atlas.segmentation.evaluation`: Dice/HD95/volume similarity against reference
  labels, leave-one-out;
- :mod:`~atlas.segmentation.plan`: the parse-time plan of the rules (atlases per image,
  held-out scans, fusion settings);
- :mod:`~atlas.segmentation.jobs`: the job functions of ``workflow/rules/segment.smk``.

Registration and transform chains are :mod:`atlas.registration`; the figures are in
:mod:`atlas.qc`. Conventions: label maps (``dseg``) are integer arrays with 0 as background;
probabilistic segmentations (``probseg``) are fractions in [0, 1]; numpy arrays keep the axis
order of the ANTs image they came from; ``spacing`` is the voxel size in mm per axis.

Names are imported lazily, so ``atlas.segmentation.plan`` is usable at parse time
without ANTs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate_segmentation": "evaluation",
    "evaluation_summary": "evaluation",
    "leave_one_out": "evaluation",
    "FUSION_METHODS": "plan",
    "fuse": "fusion",
    "joint_label_fusion": "fusion",
    "local_correlation": "fusion",
    "majority_vote": "fusion",
    "staple": "fusion",
    "weighted_vote": "fusion",
    "TISSUE_CLASSES": "labels",
    "apply_tissue_classes": "labels",
    "as_labels": "labels",
    "check_same_grid": "labels",
    "read_label_table": "labels",
    "tissue_channel": "labels",
    "validate_atlas": "labels",
    "LABEL_INTERPOLATIONS": "propagation",
    "Atlas": "propagation",
    "PropagatedAtlases": "propagation",
    "RegistrationQCError": "propagation",
    "SegmentationResult": "propagation",
    "propagate": "propagation",
    "propagate_atlases": "propagation",
    "radius_voxels": "propagation",
    "segment_target": "propagation",
    "atropos_tissue": "tissue",
    "average_posteriors": "tissue",
    "tissue_probseg": "tissue",
    "brain_volume": "volumes",
    "image_volumes": "volumes",
    "structure_volumes": "volumes",
    "volumes_wide": "volumes",
}

__all__ = [
    "FUSION_METHODS",
    "LABEL_INTERPOLATIONS",
    "TISSUE_CLASSES",
    "Atlas",
    "PropagatedAtlases",
    "RegistrationQCError",
    "SegmentationResult",
    "apply_tissue_classes",
    "as_labels",
    "atropos_tissue",
    "average_posteriors",
    "brain_volume",
    "check_same_grid",
    "evaluate_segmentation",
    "evaluation_summary",
    "fuse",
    "image_volumes",
    "joint_label_fusion",
    "leave_one_out",
    "local_correlation",
    "majority_vote",
    "propagate",
    "propagate_atlases",
    "radius_voxels",
    "read_label_table",
    "segment_target",
    "staple",
    "structure_volumes",
    "tissue_channel",
    "tissue_probseg",
    "validate_atlas",
    "volumes_wide",
    "weighted_vote",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'atlas.segmentation' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
