"""The affinity random walk as AffinityNet and IRNet compute it: the dense
(HW)^2 affinity matrix, ``T = A^beta`` normalised per column, ``T`` raised to
the n-th power by repeated squaring, ``x @ T^n``. Memory (HW)^2 and O((HW)^3)
per squaring: small maps only."""

from __future__ import annotations

import torch
from torch import Tensor

from wsss_ext.ops.random_walk import neighbour_offsets

__all__ = ["dense_affinity_matrix", "random_walk_dense"]


def dense_affinity_matrix(affinity: Tensor) -> Tensor:
    """[B, T, H, W] tap affinities -> [B, HW, HW] matrix A with A[q, p] = a[p, t]
    for q = p + o_t inside the map (column p holds pixel p's affinities; for
    symmetric affinities it is the references' symmetric matrix), 0 elsewhere."""
    batch, taps, height, width = affinity.shape
    offsets = next(o for o in map(neighbour_offsets, range(1, 65)) if len(o) == taps)
    n = height * width
    matrix = affinity.new_zeros(batch, n, n)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    p = (rows * width + cols).flatten()
    for t, (dy, dx) in enumerate(offsets.tolist()):
        qy, qx = rows.flatten() + dy, cols.flatten() + dx
        inside = (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        q = qy[inside] * width + qx[inside]
        matrix[:, q, p[inside]] = affinity[:, t].flatten(1)[:, p[inside]]
    return matrix


def random_walk_dense(x: Tensor, affinity: Tensor, beta: float = 8.0, n_steps: int = 256) -> Tensor:
    """``x`` [B, C, H, W] walked ``n_steps`` times on ``affinity`` [B, T, H, W].

    Builds the dense matrix, raises its neighbour entries to ``beta``, divides
    each column by its sum, takes ``T^n_steps`` (repeated squaring, as the
    references' ``logt`` / ``exp_times`` loops for n = 2^k) and returns
    ``x @ T^n``. A column whose sum is 0 (a pixel with no affinity to
    anything) gets a 1 on the diagonal, where the references would divide 0 by 0.
    """
    batch, channels, height, width = x.shape
    matrix = dense_affinity_matrix(affinity)
    neighbours = dense_affinity_matrix(torch.ones_like(affinity)) > 0
    powered = torch.where(neighbours, matrix.pow(beta), torch.zeros_like(matrix))
    column_sums = powered.sum(1, keepdim=True)
    isolated = (column_sums == 0).squeeze(1)
    transition = powered / torch.where(column_sums == 0, torch.ones_like(column_sums), column_sums)
    transition = transition + torch.diag_embed(isolated.to(transition.dtype))
    walked = x.reshape(batch, channels, -1) @ torch.linalg.matrix_power(transition, n_steps)
    return walked.reshape(x.shape)
