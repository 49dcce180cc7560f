"""The kernels: one module per kernel, each a set of torch.library custom ops
(checks, allocation, fake implementations) and the public function."""

from wsss_ext.ops.dense_crf import dense_crf, unary_from_labels, unary_from_probs
from wsss_ext.ops.pamr import pamr, pamr_affinity, resize_image_to_mask
from wsss_ext.ops.sinkhorn import sinkhorn_knopp

__all__ = [
    "dense_crf",
    "pamr",
    "pamr_affinity",
    "resize_image_to_mask",
    "sinkhorn_knopp",
    "unary_from_labels",
    "unary_from_probs",
]
