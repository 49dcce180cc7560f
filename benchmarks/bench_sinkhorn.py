"""Benchmark of :func:`wsss_ext.sinkhorn_knopp` against the plain-PyTorch
recipes of the papers (:mod:`wsss_ext.reference`).

Cases, at the sizes the methods use them:

- ``swav``: SwAV's batch, 4096 crops x 3000 prototypes, eps 0.05, 3
  iterations, against SwAV's exp-then-normalise recipe in float32.
- ``leopart``: Leopart's patch batch, 10368 patch tokens x 300 prototypes,
  same settings and reference.
- ``sela``: SeLa's pseudo-labelling of a whole data set (ImageNet's 1.28M
  images on CUDA, 100k on CPU) x 3000 clusters, lambda 25 (eps 0.04), to
  convergence, against SeLa's scaling iteration in float64 (in float32 its
  ``exp(log P / eps)`` underflows) with SeLa's own stopping rule. The two
  stopping rules measure different things, so wsss_ext is then run to the
  prototype-marginal error the reference reached: equal accuracy, not equal
  tolerance numbers.

- ``converged_pot``: 10000 x 1000 cosine scores, eps 0.05, wsss_ext to a
  marginal error of 1e-4 (its own rule), against POT's fastest solver
  (``ot.sinkhorn``, the exp-domain scaling in numpy float64) at equal
  accuracy: given the fewest iterations whose plan is at least as accurate as
  ours, both plans' errors measured by one function
  (:func:`_plan_marginal_error`: the L1 errors of both marginals of the plan
  normalised to mass 1). POT with its own ``stopThr=1e-4`` is recorded too.
  Skipped when POT is not installed.

Scores are cosine similarities of random unit vectors for SwAV, Leopart and the POT case,
and log-probabilities ``log_softmax(3 z)`` for SeLa, which runs Sinkhorn on
the network's log-probabilities.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

import wsss_ext
from common import measure, ratios, time_call
from wsss_ext import reference

KERNEL = "sinkhorn"
FEATURE_DIM = 128
SWAV_EPSILON = 0.05
SWAV_ITERS = 3
SELA_EPSILON = 1 / 25  # SeLa's lambda = 25
SELA_REFERENCE_TOL = 0.1  # SeLa's rule: sum |c / c_new - 1| < 0.1, checked every 10 iterations
SELA_TOL_WITHOUT_REFERENCE = 1e-3  # when the reference cannot run (CUDA, ImageNet size)
FLOAT32_TOL_FLOOR = 1e-6  # float32 iterates stall at a marginal error of about 1.5e-6
SELA_MAX_ITERS = 1000
IMAGENET_SIZE = 1281167
QUICK_SHRINK = 8  # --quick divides every N by about this

# Rows per chunk when comparing outputs, so that no N x K float64 temporary is made.
_CHUNK_ELEMENTS = 1 << 24


def _progress(case: str, shape: tuple[int, int], what: str) -> None:
    print(f"  [{KERNEL}/{case} {shape[0]}x{shape[1]}] {what}", flush=True)


def _cosine_scores(n: int, k: int, device: torch.device) -> torch.Tensor:
    """Cosine similarities of N random unit features to K random unit prototypes."""
    torch.manual_seed(0)
    features = F.normalize(torch.randn(n, FEATURE_DIM, device=device), dim=1)
    prototypes = F.normalize(torch.randn(k, FEATURE_DIM, device=device), dim=1)
    return features @ prototypes.T


def _log_probability_scores(n: int, k: int, device: torch.device) -> torch.Tensor:
    """Log-probabilities of N samples over K classes, about as peaked as a trained network's."""
    torch.manual_seed(0)
    logits = torch.randn(n, k, device=device).mul_(3)  # in place: the SeLa case is the size of the memory
    return torch.log_softmax(logits, dim=1)


def _row_chunks(n: int, k: int):
    rows = max(1, _CHUNK_ELEMENTS // k)
    return (slice(start, min(start + rows, n)) for start in range(0, n, rows))


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64, chunk by chunk."""
    n, k = a.shape
    return max(float((a[rows].double() - b[rows].double()).abs().max()) for rows in _row_chunks(n, k))


def _marginal_error(codes: torch.Tensor) -> float:
    """Prototype marginal L1 error sum_k |mass_k / N - 1/K| of N x K codes (rows summing to 1)."""
    n, k = codes.shape
    mass = torch.zeros(k, dtype=torch.float64, device=codes.device)
    for rows in _row_chunks(n, k):
        mass += codes[rows].sum(0, dtype=torch.float64)
    return float((mass / n - 1.0 / k).abs().sum())


def _plan_marginal_error(plan: torch.Tensor) -> float:
    """L1 errors of both marginals of ``plan`` normalised to mass 1, against
    uniform ones: the one measure applied to wsss_ext's codes and POT's plan."""
    n, k = plan.shape
    rows = torch.zeros(n, dtype=torch.float64, device=plan.device)
    cols = torch.zeros(k, dtype=torch.float64, device=plan.device)
    for chunk in _row_chunks(n, k):
        part = plan[chunk].double()
        rows[chunk] = part.sum(1)
        cols += part.sum(0)
    total = cols.sum()
    return float((rows / total - 1.0 / n).abs().sum() + (cols / total - 1.0 / k).abs().sum())


POT_MAX_ITERATIONS = 50  # the search for POT's fewest iterations stops here


def _pot_case(n: int, k: int, device: torch.device) -> dict:
    """Converged Sinkhorn against POT's exp-domain solver, on the CPU, at equal accuracy.

    wsss_ext stops on its own rule (``tol``). POT is then given the fewest
    iterations whose plan is at least as accurate, measured by the same
    function (``numItermax`` = that count, ``stopThr=0``: no error checks in
    its loop), which is the fastest way POT has to reach that accuracy; POT
    with its own ``stopThr`` (checked every 10 iterations, so it runs on
    far past the tolerance on these scores) is recorded beside it."""
    case, shape, tol = "converged_pot", (n, k), 1e-4
    scores = _cosine_scores(n, k, device)
    record = {
        "kernel": KERNEL,
        "case": case,
        "shape": [n, k],
        "params": {"epsilon": SWAV_EPSILON, "tol": tol, "threads": torch.get_num_threads(),
                   "reference": "ot.sinkhorn(a, b, -scores, eps, stopThr=0, numItermax=m), numpy float64, m the "
                                "fewest iterations whose plan error <= ours (pot_sinkhorn); with stopThr=1e-4 "
                                "(pot_sinkhorn_stopthr)"},
        "references": {},
        "ratios": {},
    }
    _progress(case, shape, f"wsss_ext.sinkhorn_knopp to marginal error {tol:g}")
    ours, codes = measure(lambda: wsss_ext.sinkhorn_knopp(scores, SWAV_EPSILON, tol=tol, max_iters=10000),
                          device=device, repeat=5)
    record["ours"] = ours
    target = record["ours_plan_marginal_error"] = _plan_marginal_error(codes)
    try:
        import numpy as np
        import ot
    except ImportError:
        record["references"]["pot_sinkhorn"] = {"skipped": "POT (the `ot` package) is not installed"}
        return record
    if device.type != "cpu":
        record["references"]["pot_sinkhorn"] = {"skipped": "POT's numpy solver runs on the CPU only"}
        return record
    cost = (-scores).double().numpy()
    a, b = np.full(n, 1.0 / n), np.full(k, 1.0 / k)

    def pot(iterations: int, stop: float):
        with warnings.catch_warnings():  # "did not converge": the count is the point
            warnings.simplefilter("ignore")
            return ot.sinkhorn(a, b, cost, SWAV_EPSILON, stopThr=stop, numItermax=iterations)

    _progress(case, shape, f"ot.sinkhorn: the fewest iterations to plan error <= {target:.2e}")
    iterations = next((m for m in range(1, POT_MAX_ITERATIONS + 1)
                       if _plan_marginal_error(torch.from_numpy(pot(m, 0.0))) <= target), None)
    if iterations is None:
        record["references"]["pot_sinkhorn"] = {"skipped": f"POT did not reach {target:.2e} in "
                                                           f"{POT_MAX_ITERATIONS} iterations"}
    else:
        timing, plan = measure(lambda: pot(iterations, 0.0), device=device, repeat=5)
        record["references"]["pot_sinkhorn"] = {**timing, "iterations": iterations}
        record["ratios"]["pot_sinkhorn"] = ratios(ours, timing)
        record["pot_plan_marginal_error"] = _plan_marginal_error(torch.from_numpy(plan))
    _progress(case, shape, "ot.sinkhorn, stopThr 1e-4")
    timing, plan = measure(lambda: pot(10000, tol), device=device, repeat=3)
    record["references"]["pot_sinkhorn_stopthr"] = timing
    record["ratios"]["pot_sinkhorn_stopthr"] = ratios(ours, timing)
    record["pot_stopthr_plan_marginal_error"] = _plan_marginal_error(torch.from_numpy(plan))
    equal = record["ratios"].get("pot_sinkhorn", {}).get("time", float("nan"))
    print(
        f"    ours {ours['median_ms']:.1f} ms (plan marginal error {target:.1e}); POT in {iterations} iterations "
        f"{record['references']['pot_sinkhorn'].get('median_ms', float('nan')):.1f} ms "
        f"({record.get('pot_plan_marginal_error', float('nan')):.1e}): {equal:.2f}x; POT with stopThr "
        f"{timing['median_ms']:.1f} ms ({record['pot_stopthr_plan_marginal_error']:.1e}): "
        f"{record['ratios']['pot_sinkhorn_stopthr']['time']:.2f}x",
        flush=True,
    )
    return record


def _note_peak_above_output(ours: dict, codes: torch.Tensor) -> None:
    """The peak memory beyond the N x K output itself: the README promises no
    N x K temporary besides the output, so this stays far below its size."""
    output_bytes = codes.numel() * codes.element_size()
    ours["output_bytes"] = output_bytes
    peak = ours.get("peak_memory_bytes")
    ours["peak_above_output_bytes"] = None if peak is None else peak - output_bytes


def _fixed_iterations_case(case: str, n: int, k: int, device: torch.device) -> dict:
    """SwAV's setting: a few iterations on a training batch, both in float32."""
    scores = _cosine_scores(n, k, device)
    _progress(case, (n, k), "wsss_ext.sinkhorn_knopp")
    ours, codes = measure(lambda: wsss_ext.sinkhorn_knopp(scores, SWAV_EPSILON, SWAV_ITERS), device=device)
    _note_peak_above_output(ours, codes)
    _progress(case, (n, k), "reference.sinkhorn_swav")
    ref, ref_codes = measure(lambda: reference.sinkhorn_swav(scores, SWAV_EPSILON, SWAV_ITERS), device=device)
    return {
        "kernel": KERNEL,
        "case": case,
        "shape": [n, k],
        "params": {"epsilon": SWAV_EPSILON, "n_iters": SWAV_ITERS, "dtype": "float32"},
        "ours": ours,
        "references": {"swav_recipe": ref},
        "ratios": {"swav_recipe": ratios(ours, ref)},
        "max_abs_diff": _max_abs_diff(codes, ref_codes),
    }


def _per_iteration_ms(scores: torch.Tensor, device: torch.device) -> float:
    """Time of one full iteration of the kernel.

    The difference of an 11- and a 1-iteration call cancels the first
    iteration (one pass: g starts at 0) and the final codes pass, leaving 10
    full iterations.
    """
    one, eleven = (
        time_call(lambda: wsss_ext.sinkhorn_knopp(scores, SELA_EPSILON, n_iters), device=device, repeat=3)
        for n_iters in (1, 11)
    )
    return (eleven["median_ms"] - one["median_ms"]) / 10


def _reference_skip_reason(n: int, k: int, device: torch.device) -> str | None:
    """Why the float64 SeLa reference cannot run on ``device``, or None if it can."""
    if device.type != "cuda":
        return None
    # Its float64 input plus the three N x K temporaries alive at once (exp(scores / eps)
    # and the rescaled plan twice), next to what this case already holds.
    needed = 4 * n * k * 8
    available = 0.8 * torch.cuda.get_device_properties(device).total_memory - torch.cuda.memory_allocated(device)
    if needed > available:
        return (
            f"float64 reference needs ~{needed / 2**30:.0f} GiB for {n}x{k}, "
            f"only {max(available, 0) / 2**30:.0f} GiB usable on the GPU"
        )
    return None


def _sela_case(n: int, k: int, device: torch.device) -> dict:
    """SeLa's setting: one N x K problem over the whole data set, to convergence.

    The reference runs first, on SeLa's own rule; wsss_ext then runs until its
    prototype-marginal error is as small as the reference's (floored at
    float32 precision), so the times compare equal accuracy.
    """
    case, shape = "sela", (n, k)
    _progress(case, shape, "building log-probability scores")
    scores = _log_probability_scores(n, k, device)
    record = {
        "kernel": KERNEL,
        "case": case,
        "shape": [n, k],
        "params": {"epsilon": SELA_EPSILON, "max_iters": SELA_MAX_ITERS, "dtype": "float32",
                   "reference_dtype": "float64", "reference_tol": SELA_REFERENCE_TOL},
        "references": {},
        "ratios": {},
        "max_abs_diff": None,
    }

    ref_codes = None
    skip_reason = _reference_skip_reason(n, k, device)
    if skip_reason is None:
        # The conversion is not timed: SeLa keeps its probabilities in float64 to begin with.
        scores64 = scores.double()
        _progress(case, shape, f"reference.sinkhorn_sela, SeLa's rule (tol {SELA_REFERENCE_TOL:g}), float64")
        ref, (ref_codes, iterations) = measure(
            lambda: reference.sinkhorn_sela(scores64, SELA_EPSILON, tol=SELA_REFERENCE_TOL,
                                            max_iters=SELA_MAX_ITERS),
            device=device, warmup=0, repeat=1,
        )
        del scores64
        ref["iterations"] = iterations
        ref["hit_max_iters"] = iterations >= SELA_MAX_ITERS
        ref["per_iteration_ms"] = ref["median_ms"] / iterations
        ref["marginal_error"] = _marginal_error(ref_codes)
        record["references"]["sela_float64"] = ref
        tol = max(ref["marginal_error"], FLOAT32_TOL_FLOOR)
    else:
        _progress(case, shape, f"reference.sinkhorn_sela skipped: {skip_reason}")
        record["references"]["sela_float64"] = {"skipped": skip_reason}
        tol = SELA_TOL_WITHOUT_REFERENCE
    record["params"]["tol"] = tol

    _progress(case, shape, f"wsss_ext.sinkhorn_knopp to marginal error {tol:.2g} (float32)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        ours, codes = measure(
            lambda: wsss_ext.sinkhorn_knopp(scores, SELA_EPSILON, tol=tol, max_iters=SELA_MAX_ITERS),
            device=device, warmup=0, repeat=1,
        )
    _note_peak_above_output(ours, codes)
    ours["converged"] = not any(issubclass(w.category, RuntimeWarning) for w in caught)
    ours["marginal_error"] = _marginal_error(codes)
    _progress(case, shape, "wsss_ext.sinkhorn_knopp per-iteration time (n_iters=1 vs 11)")
    ours["per_iteration_ms"] = _per_iteration_ms(scores, device)
    # Each full iteration reads the scores twice: a row pass (g) and a column pass (f).
    bytes_per_iteration = 2 * scores.numel() * scores.element_size()
    ours["bandwidth_gb_s"] = (bytes_per_iteration / (ours["per_iteration_ms"] * 1e-3) / 1e9
                              if ours["per_iteration_ms"] > 0 else None)
    record["ours"] = ours
    if ref_codes is not None:
        ref = record["references"]["sela_float64"]
        record["ratios"]["sela_float64"] = dict(ratios(ours, ref),
                                                per_iteration=ref["per_iteration_ms"] / ours["per_iteration_ms"])
        record["max_abs_diff"] = _max_abs_diff(codes, ref_codes)
    return record


def run(device: str, quick: bool) -> list[dict]:
    """Run every case on ``device``; ``quick`` divides the sample counts by
    about 8 (a smoke test, not results). Returns the case records."""
    device = torch.device(device)
    shrink = QUICK_SHRINK if quick else 1
    sela_n = IMAGENET_SIZE if device.type == "cuda" else 100_000
    with torch.no_grad():
        return [
            _fixed_iterations_case("swav", 4096 // shrink, 3000, device),
            _fixed_iterations_case("leopart", 10368 // shrink, 300, device),
            # The size at which issue 21 measured a peak of 4x the output.
            _fixed_iterations_case("memory_20000x300", 20000 // shrink, 300, device),
            _sela_case(math.ceil(sela_n / shrink), 3000, device),
            _pot_case(10000 // shrink, 1000, device),
        ]
