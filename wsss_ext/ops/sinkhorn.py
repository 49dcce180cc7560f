"""Sinkhorn-Knopp balanced assignment (SeLa, SwAV, Leopart) in the log domain.

The kernel keeps two dual potentials instead of the N x K matrix the plain
recipe rescales in place: ``f`` (one per prototype) and ``g`` (one per sample),
with the plan ``P_ik = exp(scores_ik / eps + f_k + g_i)``. An iteration is a
streaming log-sum-exp over the columns (prototypes balanced to 1/K) and one
over the rows (samples balanced to 1/N); the codes are
``softmax_k(scores_ik / eps + f_k)``. Nothing overflows however small eps or
large the scores, and no N x K temporary exists besides the output.

The plain recipe it reproduces, for reading (``wsss_ext.reference.sinkhorn_swav``)::

    Q = exp(scores / eps).T; Q /= Q.sum()
    for _ in range(n_iters):
        Q /= Q.sum(1, keepdim=True); Q /= K   # prototypes
        Q /= Q.sum(0, keepdim=True); Q /= N   # samples
    codes = (Q * N).T
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from wsss_ext import _C
from wsss_ext.ops._checks import (
    MAX_ITERATIONS,
    check_iterations,
    check_int,
    check_real,
    check_tensor,
    cuda_stream,
    fast_custom_op,
    follow_torch_threads,
    get_check_finite,
    plain_eager,
    refuse_under_compile,
    require_finite,
    runs_on_cuda,
    vmap_by_loop,
)

__all__ = ["sinkhorn_knopp"]

_SCORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _compute_dtype(scores: Tensor) -> torch.dtype:
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# Custom ops: allocation here, compute in _C. Functional (no input is mutated)
# so that torch.compile and the fake-tensor machinery can trace them.
# ---------------------------------------------------------------------------


def _run_step(scores: Tensor, f: Tensor, g: Tensor, inv_eps: float, log_n: float, update_g: bool):
    n, k = scores.shape
    dtype = _compute_dtype(scores)
    chunks = _C.sinkhorn_num_chunks(n, runs_on_cuda(scores))
    partials = torch.empty((2, chunks, k), dtype=dtype, device=scores.device)
    col_max = torch.empty(k, dtype=dtype, device=scores.device)
    col_sumexp = torch.empty(k, dtype=dtype, device=scores.device)
    _C.sinkhorn_step(scores, f, g, partials, col_max, col_sumexp, inv_eps, log_n, update_g, cuda_stream(scores))
    return col_max, col_sumexp


@fast_custom_op("wsss_ext::sinkhorn_column_stats")
def _column_stats(scores: Tensor, g: Tensor, inv_eps: float) -> tuple[Tensor, Tensor]:
    """(max_i, sum_i exp(. - max)) of scores/eps + g over samples, per prototype."""
    unused_f = g.new_zeros(scores.shape[1])  # f is not read when g is given
    return _run_step(scores, unused_f, g, inv_eps, 0.0, False)


@fast_custom_op("wsss_ext::sinkhorn_balance_samples")
def _balance_samples(scores: Tensor, f: Tensor, inv_eps: float, log_n: float) -> tuple[Tensor, Tensor, Tensor]:
    """g = -log_n - LSE_k(scores/eps + f), then the column statistics of scores/eps + g."""
    g = torch.empty(scores.shape[0], dtype=f.dtype, device=f.device)
    col_max, col_sumexp = _run_step(scores, f, g, inv_eps, log_n, True)
    return g, col_max, col_sumexp


@fast_custom_op("wsss_ext::sinkhorn_codes")
def _codes(scores: Tensor, f: Tensor, inv_eps: float) -> Tensor:
    """softmax_k(scores/eps + f)."""
    codes = torch.empty(scores.shape, dtype=f.dtype, device=scores.device)
    _C.sinkhorn_codes(scores, f, codes, inv_eps, cuda_stream(scores))
    return codes


@_column_stats.register_fake
def _(scores, g, inv_eps):
    k = scores.shape[1]
    return g.new_empty(k), g.new_empty(k)


@_balance_samples.register_fake
def _(scores, f, inv_eps, log_n):
    n, k = scores.shape
    return f.new_empty(n), f.new_empty(k), f.new_empty(k)


@_codes.register_fake
def _(scores, f, inv_eps):
    return f.new_empty(scores.shape)


# vmap over a batch of score matrices: one call per matrix.
for _op in (_column_stats, _balance_samples, _codes):
    vmap_by_loop(_op)


# ---------------------------------------------------------------------------
# The public function
# ---------------------------------------------------------------------------


def _global_logsumexp(col_max: Tensor, col_sumexp: Tensor, group) -> Tensor:
    """Per-prototype LSE over the samples of every rank: all-reduce the maxima,
    rescale the local sums to them, all-reduce the sums."""
    if group is None:
        return col_max + torch.log(col_sumexp)
    import torch.distributed as dist

    global_max = col_max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
    rescaled = col_sumexp * torch.exp(col_max - global_max)
    dist.all_reduce(rescaled, op=dist.ReduceOp.SUM, group=group)
    return global_max + torch.log(rescaled)


def _global_count(n: int, device: torch.device, group) -> int:
    if group is None:
        return n
    import torch.distributed as dist

    count = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
    return int(count.item())


def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float = 0.05,
    n_iters: int = 3,
    tol: float | None = None,
    process_group=None,
    *,
    max_iters: int = 1000,
    progress: bool = False,
) -> Tensor:
    r"""Balanced soft assignment of samples to prototypes by Sinkhorn-Knopp.

    Solves the entropic transport between N samples and K prototypes with
    uniform marginals, as SwAV, SeLa and Leopart do to get codes that use
    every prototype equally. Computed in the log domain: finite for any
    epsilon and score range the inputs' dtype can hold.

    With the defaults it equals SwAV's ``distributed_sinkhorn`` (3 iterations,
    eps 0.05) on the same scores. With ``tol`` it iterates to convergence, as
    SeLa does (pass ``scores = log P`` and ``epsilon = 1 / lambda``).

    Args:
        scores: N x K similarities between N samples and K prototypes
            (float16, bfloat16, float32 or float64; computed in float32, or
            float64 for float64 input). Not differentiated: the codes are
            targets and never require grad.
        epsilon: entropic regularisation (SwAV's ``epsilon``). > 0.
        n_iters: Sinkhorn iterations (each balances prototypes, then
            samples). With ``tol`` set, the minimum number of iterations.
            ``0`` gives ``softmax(scores / epsilon)`` per sample.
        tol: if given, iterate until the prototype marginal error
            :math:`\sum_k |P_{\cdot k} - 1/K|` (sample marginals exact) is
            below ``tol``, at most ``max_iters`` times (a warning is issued if
            it does not converge). Checking it costs one host sync per
            iteration on CUDA, and cannot be traced by torch.compile.
        process_group: a ``torch.distributed`` process group (for example
            ``torch.distributed.group.WORLD``). Each rank passes its own rows;
            the prototype sums are all-reduced so that N is the global batch,
            as in SwAV's multi-GPU code. Every rank must pass the same K,
            epsilon and iteration settings. ``None``: this process only.
            The global N is all-reduced once per call (one host sync).
        max_iters: cap on iterations when ``tol`` is set.
        progress: show a progress bar (tqdm) with the marginal error while
            iterating to ``tol``.

    Returns:
        codes: N x K, each row summing to 1 (float32, or float64 for float64
        scores), on the device of ``scores``.

    Raises ``ValueError`` for non-finite scores (see
    :func:`wsss_ext.set_check_finite`; on CUDA an asynchronous device-side
    assertion, no host sync). Traceable by ``torch.compile(fullgraph=True)`` and
    ``torch.export`` (without ``tol`` and ``process_group``); under
    ``torch.func.vmap`` a batch of score matrices is solved one by one.

    Shape:
        - scores: :math:`(N, K)`
        - output: :math:`(N, K)`

    Example:
        >>> import torch, wsss_ext
        >>> scores = torch.nn.functional.normalize(torch.randn(512, 64), dim=1) @ \
        ...          torch.nn.functional.normalize(torch.randn(300, 64), dim=1).T
        >>> codes = wsss_ext.sinkhorn_knopp(scores)               # SwAV
        >>> codes.shape
        torch.Size([512, 300])
        >>> balanced = wsss_ext.sinkhorn_knopp(scores, tol=1e-6)  # converged
        >>> bool(torch.allclose(balanced.sum(0), torch.full((300,), 512 / 300), rtol=1e-3))
        True
    """
    check_tensor(scores, "scores", ndim=2, layout="N samples x K prototypes", dtypes=_SCORE_DTYPES)
    epsilon = check_real(epsilon, "epsilon", positive=True)
    n_iters = check_iterations(n_iters, "n_iters")
    tol = check_real(tol, "tol", positive=True, allow_none=True)
    # max_iters only caps the iterations to tol; without tol, n_iters is the count.
    max_iters = check_int(max_iters, "max_iters", minimum=max(n_iters, 1) if tol is not None else 1,
                          maximum=MAX_ITERATIONS)
    _check_process_group(process_group)
    n, k = scores.shape
    if n == 0 or k == 0:
        raise ValueError(f"scores must have at least one sample and one prototype, got shape {tuple(scores.shape)}")
    if tol is not None:
        refuse_under_compile("sinkhorn_knopp(tol=...)", "pass a fixed n_iters, or call it outside the compiled "
                             "region (torch.compiler.disable)")
    if process_group is not None:
        refuse_under_compile("sinkhorn_knopp(process_group=...)", "call it outside the compiled region "
                             "(torch.compiler.disable)")

    scores = scores.detach().contiguous()
    dtype = _compute_dtype(scores)
    inv_eps = 1.0 / epsilon
    if tol is None and process_group is None and plain_eager((scores,)) and not runs_on_cuda(scores):
        return _solve_on_cpu(scores, dtype, inv_eps, n_iters, epsilon)
    log_k = math.log(k)
    log_n = math.log(_global_count(n, scores.device, process_group))
    f = torch.zeros(k, dtype=dtype, device=scores.device)

    total = max_iters if tol is not None else n_iters
    bar = None
    if progress and tol is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="sinkhorn", unit="it", leave=False)
    error = math.inf
    iteration = 0
    try:
        while iteration < total:
            if iteration == 0:
                # SwAV balances prototypes first, from the unbalanced samples (g = 0).
                stats = _column_stats(scores, torch.zeros(n, dtype=dtype, device=scores.device), inv_eps)
            else:
                _, *stats = _balance_samples(scores, f, inv_eps, log_n)
            column_lse = _global_logsumexp(*stats, process_group)
            if iteration == 0:
                _require_finite_scores(column_lse, epsilon)
            if tol is not None and iteration > 0:
                # Prototype masses of the plan whose samples were just balanced.
                error = float((torch.exp(f + column_lse) - 1.0 / k).abs().sum())
                if bar is not None:
                    bar.set_postfix(error=f"{error:.2e}")
                if iteration >= n_iters and error < tol:
                    break
            f = -log_k - column_lse
            iteration += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if tol is not None and error >= tol:
        warnings.warn(
            f"sinkhorn_knopp did not reach tol={tol:g} in {max_iters} iterations "
            f"(marginal error {error:.3g}); raise max_iters or epsilon"
            + ("; float32 iterates stall near 1e-6, pass float64 scores for a finer tol" if dtype != torch.float64
               else ""),
            RuntimeWarning,
            stacklevel=2,
        )
    codes = _codes(scores, f, inv_eps)
    if iteration == 0:  # no iteration ran, so nothing above has looked at the scores
        _require_finite_scores(codes, epsilon)
    return codes


def _solve_on_cpu(scores: Tensor, dtype: torch.dtype, inv_eps: float, n_iters: int, epsilon: float) -> Tensor:
    """The loop above in one C++ call (plain eager CPU calls with a fixed
    n_iters, one process): the same steps with the prototype update done in
    C++, which saves the three small torch ops per iteration that cost more
    than the kernels on SwAV-sized batches (benchmarks/bench_dispatch.py).
    Traced, profiled and CUDA calls take the loop of custom ops."""
    n, k = scores.shape
    follow_torch_threads()
    codes = torch.empty((n, k), dtype=dtype)
    workspace = torch.empty(_C.sinkhorn_solve_workspace(n, k), dtype=dtype)
    finite = _C.sinkhorn_solve(scores, codes, workspace, inv_eps, n_iters)
    if not finite and get_check_finite() != "off":
        raise ValueError(_non_finite_message(epsilon))
    return codes


def _check_process_group(group: object) -> None:
    if group is None:
        return
    import torch.distributed as dist

    if not (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        raise TypeError(f"process_group must be a torch.distributed ProcessGroup (e.g. "
                        f"torch.distributed.group.WORLD) or None, got {type(group).__name__}")


def _require_finite_scores(derived: Tensor, epsilon: float) -> None:
    """Raise if ``derived`` (column statistics or codes) holds a non-finite value.

    The kernels' exp turns any NaN or +-inf score into NaN in everything
    computed from it, so checking this derived tensor checks the scores
    without another pass over them. No host sync on CUDA (see
    :func:`wsss_ext.set_check_finite`).
    """
    require_finite(derived, _non_finite_message(epsilon))


def _non_finite_message(epsilon: float) -> str:
    return (f"scores contain NaN or inf (or values that overflow when divided by epsilon={epsilon}); "
            "sinkhorn_knopp needs finite scores")
