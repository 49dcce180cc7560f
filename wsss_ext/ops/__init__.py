"""The kernels: one module per kernel, each a set of torch.library custom ops
(checks, allocation, fake implementations) and the public function."""

from wsss_ext.ops._checks import check_finite, get_check_finite, set_check_finite
from wsss_ext.ops._workspace import empty_cache
from wsss_ext.ops.correlation import correlation
from wsss_ext.ops.dense_crf import dense_crf, unary_from_labels, unary_from_probs
from wsss_ext.ops.fickle import expanded_dropout, fickle_conv2d, fickle_gradcam
from wsss_ext.ops.pamr import pamr, pamr_affinity, resize_image_to_mask
from wsss_ext.ops.propagation import propagate_labels, track_video
from wsss_ext.ops.random_walk import (
    affinitynet_random_walk,
    boundary_affinity,
    cam_background,
    feature_affinity,
    irnet_random_walk,
    neighbour_offsets,
    random_walk,
    walk_to_labels,
)
from wsss_ext.ops.sinkhorn import sinkhorn_knopp

__all__ = [
    "affinitynet_random_walk",
    "boundary_affinity",
    "cam_background",
    "check_finite",
    "correlation",
    "dense_crf",
    "empty_cache",
    "expanded_dropout",
    "feature_affinity",
    "fickle_conv2d",
    "fickle_gradcam",
    "get_check_finite",
    "irnet_random_walk",
    "neighbour_offsets",
    "pamr",
    "pamr_affinity",
    "propagate_labels",
    "random_walk",
    "resize_image_to_mask",
    "set_check_finite",
    "sinkhorn_knopp",
    "track_video",
    "unary_from_labels",
    "unary_from_probs",
    "walk_to_labels",
]
