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
"""

from .evaluation import evaluate_segmentation, evaluation_summary, leave_one_out
from .fusion import (
    FUSION_METHODS,
    fuse,
    joint_label_fusion,
    local_correlation,
    majority_vote,
    staple,
    weighted_vote,
)
from .labels import (
    TISSUE_CLASSES,
    apply_tissue_classes,
    as_labels,
    check_same_grid,
    read_label_table,
    tissue_channel,
    validate_atlas,
)
from .propagation import (
    LABEL_INTERPOLATIONS,
    Atlas,
    PropagatedAtlases,
    RegistrationQCError,
    SegmentationResult,
    propagate,
    propagate_atlases,
    radius_voxels,
    segment_target,
)
from .tissue import atropos_tissue, average_posteriors, tissue_probseg
from .volumes import brain_volume, image_volumes, structure_volumes, volumes_wide

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
