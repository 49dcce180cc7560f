"""Sinkhorn-Knopp as the papers compute it.

- ``sinkhorn_swav``: SwAV's recipe (Caron et al. 2020), exp then alternate
  normalisations of the dense matrix. Overflows for small eps / large scores,
  exactly as the original does.
- ``sinkhorn_sela``: SeLa's scaling-vector iteration (Asano et al. 2020) on
  ``P = exp(scores / eps)`` to convergence, with its stopping rule (which
  measures the change of the scaling vector, not the marginal error).
- ``sinkhorn_log_dense``: the same iteration as the kernel, with dense
  ``torch.logsumexp`` over the whole matrix; stable, O(N K) temporaries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinkhorn_swav(scores: Tensor, epsilon: float = 0.05, n_iters: int = 3) -> Tensor:
    """SwAV's ``distributed_sinkhorn`` on one process: N x K scores -> N x K codes."""
    q = torch.exp(scores / epsilon).t()  # K x N
    k, n = q.shape
    q = q / q.sum()
    for _ in range(n_iters):
        q = q / q.sum(dim=1, keepdim=True)  # each prototype sums to 1/K
        q = q / k
        q = q / q.sum(dim=0, keepdim=True)  # each sample sums to 1/N
        q = q / n
    return (q * n).t()


def sinkhorn_sela(
    scores: Tensor, epsilon: float, tol: float = 0.1, max_iters: int = 1000, check_every: int = 10
) -> tuple[Tensor, int]:
    """SeLa's iteration: ``r = (1/K) / (P c)``, ``c = (1/N) / (r^T P)`` until
    ``sum |c / c_new - 1| < tol``, checked every ``check_every`` iterations
    (SeLa's defaults: 0.1 and 10). Returns the N x K codes (rows summing to 1)
    and the iterations run. Compute in float64, as SeLa does, or
    ``P = exp(scores / eps)`` underflows."""
    p = torch.exp(scores / epsilon).t()  # K x N
    k, n = p.shape
    r = torch.full((k,), 1.0 / k, dtype=p.dtype, device=p.device)
    c = torch.full((n,), 1.0 / n, dtype=p.dtype, device=p.device)
    iterations = 0
    for iterations in range(1, max_iters + 1):
        r = (1.0 / k) / (p @ c)
        c_new = (1.0 / n) / (r @ p)
        converged = iterations % check_every == 0 and float((c / c_new - 1).abs().sum()) < tol
        c = c_new
        if converged:
            break
    plan = p * r[:, None] * c[None, :]
    return (plan / plan.sum(dim=0, keepdim=True)).t(), iterations


def sinkhorn_log_dense(
    scores: Tensor, epsilon: float = 0.05, n_iters: int = 3, tol: float | None = None, max_iters: int = 1000
) -> Tensor:
    """Log-domain Sinkhorn with dense log-sum-exps: prototypes balanced first
    (from g = 0), then samples; codes = softmax(scores/eps + f) per sample.
    With ``tol``, iterate until the prototype marginal error
    ``sum_k |sum_i P_ik - 1/K|`` (samples balanced) is below it."""
    z = scores / epsilon
    n, k = z.shape
    f = z.new_zeros(k)
    g = z.new_zeros(n)
    total = max_iters if tol is not None else n_iters
    for iteration in range(total):
        if iteration > 0:
            g = -math.log(n) - torch.logsumexp(z + f[None, :], dim=1)
        column_lse = torch.logsumexp(z + g[:, None], dim=0)
        if tol is not None and iteration > 0 and iteration >= n_iters:
            if float((torch.exp(f + column_lse) - 1.0 / k).abs().sum()) < tol:
                break
        f = -math.log(k) - column_lse
    return torch.softmax(z + f[None, :], dim=1)
