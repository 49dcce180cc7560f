"""Plain-PyTorch oracles of every kernel, written from the published
algorithms. Slow and memory-hungry on purpose: they are what the tests and
benchmarks hold the kernels against, and the shortest way to read what a
kernel computes."""

from wsss_ext.reference.dense_crf import dense_crf_dense
from wsss_ext.reference.pamr import pamr_affinity_unfold, pamr_unfold
from wsss_ext.reference.sinkhorn import sinkhorn_log_dense, sinkhorn_sela, sinkhorn_swav

__all__ = [
    "dense_crf_dense",
    "pamr_affinity_unfold",
    "pamr_unfold",
    "sinkhorn_log_dense",
    "sinkhorn_sela",
    "sinkhorn_swav",
]
