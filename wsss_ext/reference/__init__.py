"""Plain-PyTorch oracles of every kernel, written from the published
algorithms. Slow and memory-hungry on purpose: they are what the tests and
benchmarks hold the kernels against, and the shortest way to read what a
kernel computes."""

from wsss_ext.reference.correlation import correlation_shift
from wsss_ext.reference.dense_crf import dense_crf_dense
from wsss_ext.reference.fickle import expand_windows, fickle_conv2d_expanded
from wsss_ext.reference.pamr import pamr_affinity_unfold, pamr_unfold
from wsss_ext.reference.propagation import propagate_labels_unfold
from wsss_ext.reference.random_walk import dense_affinity_matrix, random_walk_dense
from wsss_ext.reference.sinkhorn import sinkhorn_log_dense, sinkhorn_sela, sinkhorn_swav

__all__ = [
    "correlation_shift",
    "dense_affinity_matrix",
    "dense_crf_dense",
    "expand_windows",
    "fickle_conv2d_expanded",
    "pamr_affinity_unfold",
    "pamr_unfold",
    "propagate_labels_unfold",
    "random_walk_dense",
    "sinkhorn_log_dense",
    "sinkhorn_sela",
    "sinkhorn_swav",
]
