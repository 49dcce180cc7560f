"""The compiled kernels as they are, for callers outside PyTorch.

Every function here takes arrays that expose their memory (torch tensors,
numpy arrays, cupy arrays or anything with ``__array_interface__`` /
``__cuda_array_interface__``), writes its outputs into arrays the caller
allocated, and returns nothing, or a size the caller needs to allocate the
next buffers (``dense_crf_build_vertices``: the lattice's vertex count; see
``wsss_ext/ops/dense_crf.py`` for the lattice's buffers), or a flag
(``all_finite``; ``sinkhorn_solve``: whether the scores were finite), or a
value the caller checks (``max_abs``: the largest magnitude, inf for a NaN or
inf; ``random_walk_weights``: 0, or what was wrong with the affinities). Arguments are checked in C++ (dtype, shape,
device, contiguity, writability) and errors are raised as ``ValueError`` /
``TypeError`` naming the argument; no allocation happens inside.

For CUDA arrays pass the stream to launch on as an integer handle
(``torch.cuda.current_stream().cuda_stream``, ``cupy.cuda.get_current_stream().ptr``).

Example, Sinkhorn codes from numpy with one balancing step::

    >>> import numpy as np
    >>> from wsss_ext import lowlevel
    >>> scores = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    >>> n, k = scores.shape
    >>> f, g = np.zeros(k, np.float32), np.zeros(n, np.float32)
    >>> partials = np.empty((2, lowlevel.sinkhorn_num_chunks(n, False), k), np.float32)
    >>> col_max, col_sumexp = np.empty(k, np.float32), np.empty(k, np.float32)
    >>> lowlevel.sinkhorn_step(scores, f, g, partials, col_max, col_sumexp,
    ...                        inv_eps=20.0, log_n=float(np.log(n)), update_g=False)
    >>> f = (-np.log(k) - (col_max + np.log(col_sumexp))).astype(np.float32)
    >>> codes = np.empty_like(scores)
    >>> lowlevel.sinkhorn_codes(scores, f, codes, inv_eps=20.0)
    >>> bool(np.allclose(codes.sum(1), 1.0, atol=1e-5))
    True

The same in one call on the CPU (SwAV's three iterations here), its scratch
in one workspace::

    >>> workspace = np.empty(lowlevel.sinkhorn_solve_workspace(n, k), np.float32)
    >>> lowlevel.sinkhorn_solve(scores, codes, workspace, inv_eps=20.0, n_iters=3)
    True
"""

from wsss_ext._C import (
    ArrayView,
    all_finite,
    correlation_backward,
    correlation_forward,
    dense_crf_build_vertices,
    dense_crf_filter,
    dense_crf_link,
    dense_crf_scratch_bytes,
    dense_crf_softmax,
    fickle_mask_bits,
    fickle_mask_counts,
    fickle_masked_tap,
    max_abs,
    pamr_affinity,
    pamr_propagate,
    philox4x32_10,
    propagation_backward,
    propagation_forward,
    random_walk_step,
    random_walk_weight_grad,
    random_walk_weights,
    sinkhorn_codes,
    sinkhorn_num_chunks,
    sinkhorn_solve,
    sinkhorn_solve_workspace,
    sinkhorn_step,
)

__all__ = [
    "ArrayView",
    "all_finite",
    "correlation_backward",
    "correlation_forward",
    "dense_crf_build_vertices",
    "dense_crf_filter",
    "dense_crf_link",
    "dense_crf_scratch_bytes",
    "dense_crf_softmax",
    "fickle_mask_bits",
    "fickle_mask_counts",
    "fickle_masked_tap",
    "max_abs",
    "pamr_affinity",
    "pamr_propagate",
    "philox4x32_10",
    "propagation_backward",
    "propagation_forward",
    "random_walk_step",
    "random_walk_weight_grad",
    "random_walk_weights",
    "sinkhorn_codes",
    "sinkhorn_num_chunks",
    "sinkhorn_solve",
    "sinkhorn_solve_workspace",
    "sinkhorn_step",
]
