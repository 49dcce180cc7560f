"""sinkhorn_knopp against SwAV's recipe, a dense log-domain solver and POT;
its properties, its stability where the plain recipe overflows, and bad input."""

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from wsss_ext.reference import sinkhorn_log_dense, sinkhorn_swav
from conftest import DEVICES, requires_cuda


def cosine_scores(n, k, *, seed=0, dim=32, dtype=torch.float64, device="cpu"):
    """SwAV-like scores: cosine similarity of normalised features and prototypes."""
    gen = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(k, dim, generator=gen, dtype=torch.float64), dim=1)
    return (feats @ protos.T).to(dtype=dtype, device=device)


SHAPES = [(1, 1), (1, 7), (9, 1), (50, 13), (300, 1000), (1000, 37)]


# --- parity ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, k", SHAPES)
@pytest.mark.parametrize("n_iters", [1, 2, 3, 5])
def test_equals_swav_recipe_in_float64(device, n, k, n_iters):
    scores = cosine_scores(n, k, device=device)
    got = wsss_ext.sinkhorn_knopp(scores, epsilon=0.05, n_iters=n_iters)
    expected = sinkhorn_swav(scores, epsilon=0.05, n_iters=n_iters)
    assert got.dtype == torch.float64 and got.device == scores.device
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_matches_float64_recipe(device):
    scores = cosine_scores(2000, 300, device=device)
    got = wsss_ext.sinkhorn_knopp(scores.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), sinkhorn_swav(scores), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_iterations_is_softmax(device):
    scores = cosine_scores(40, 9, device=device)
    torch.testing.assert_close(wsss_ext.sinkhorn_knopp(scores, 0.1, n_iters=0), torch.softmax(scores / 0.1, dim=1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_half_inputs_are_computed_in_float32(dtype, device):
    scores = cosine_scores(333, 65, dtype=dtype, device=device)
    got = wsss_ext.sinkhorn_knopp(scores)
    assert got.dtype == torch.float32
    # Every half value is exact in fp32, so this is the fp32 computation up to summation order.
    torch.testing.assert_close(got, wsss_ext.sinkhorn_knopp(scores.float()), rtol=1e-5, atol=1e-7)


def test_converged_plan_matches_pot():
    ot = pytest.importorskip("ot", reason="POT is the converged-transport peer (pip install pot)")
    scores = cosine_scores(120, 17, seed=3)
    n, k = scores.shape
    a = torch.full((k,), 1.0 / k, dtype=torch.float64)
    b = torch.full((n,), 1.0 / n, dtype=torch.float64)
    plan = ot.sinkhorn(a.numpy(), b.numpy(), (-scores.T).numpy(), 0.05, method="sinkhorn_log",
                       numItermax=100000, stopThr=1e-13)
    expected = n * torch.from_numpy(plan).T
    got = wsss_ext.sinkhorn_knopp(scores, epsilon=0.05, tol=1e-12, max_iters=100000)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(got, sinkhorn_log_dense(scores, 0.05, tol=1e-12, max_iters=100000),
                               rtol=1e-9, atol=1e-11)


# --- properties ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_rows_sum_to_one_and_converged_columns_are_balanced(device):
    scores = cosine_scores(900, 50, seed=1, dtype=torch.float32, device=device)
    codes = wsss_ext.sinkhorn_knopp(scores, epsilon=0.05, tol=1e-5)
    assert bool((codes >= 0).all())
    torch.testing.assert_close(codes.sum(1), torch.ones(900, device=device), rtol=0, atol=1e-5)
    torch.testing.assert_close(codes.sum(0), torch.full((50,), 900 / 50, device=device), rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_invariant_to_a_constant_per_prototype(dtype, atol):
    scores = cosine_scores(200, 30, seed=2, dtype=dtype)
    shift = torch.linspace(-0.4, 0.4, 30, dtype=dtype)  # exp(shift / eps) spans e^16
    torch.testing.assert_close(wsss_ext.sinkhorn_knopp(scores + shift), wsss_ext.sinkhorn_knopp(scores),
                               rtol=0, atol=atol)


def test_converged_plan_invariant_to_a_constant_per_sample():
    scores = cosine_scores(150, 20, seed=4)
    shift = torch.linspace(-1.0, 1.0, 150, dtype=torch.float64)[:, None]
    torch.testing.assert_close(wsss_ext.sinkhorn_knopp(scores + shift, tol=1e-12, max_iters=10000),
                               wsss_ext.sinkhorn_knopp(scores, tol=1e-12, max_iters=10000), rtol=0, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_iters", [1, 3])
def test_identical_samples_get_uniform_codes(device, n_iters):
    row = torch.randn(25, generator=torch.Generator().manual_seed(5)).to(device)
    codes = wsss_ext.sinkhorn_knopp(row.expand(64, 25), n_iters=n_iters)
    torch.testing.assert_close(codes, torch.full((64, 25), 1 / 25, device=device), rtol=0, atol=1e-6)


def test_many_fixed_iterations_are_not_capped_by_max_iters():
    scores = cosine_scores(30, 7)
    torch.testing.assert_close(wsss_ext.sinkhorn_knopp(scores, n_iters=1200),
                               sinkhorn_swav(scores, n_iters=1200), rtol=1e-10, atol=1e-12)


def test_result_is_a_target_not_a_graph_node():
    scores = cosine_scores(10, 4).requires_grad_()
    codes = wsss_ext.sinkhorn_knopp(scores)
    assert not codes.requires_grad
    torch.testing.assert_close(codes, sinkhorn_swav(scores.detach()))


def test_non_contiguous_scores_equal_contiguous():
    scores = cosine_scores(30, 80)
    transposed = scores.T.contiguous().T  # same values, column-major memory
    assert not transposed.is_contiguous()
    torch.testing.assert_close(wsss_ext.sinkhorn_knopp(transposed), wsss_ext.sinkhorn_knopp(scores), rtol=0, atol=0)


def test_result_does_not_depend_on_the_thread_count(tmp_path):
    program = (
        "import hashlib, torch, wsss_ext\n"
        "g = torch.Generator().manual_seed(0)\n"
        "codes = wsss_ext.sinkhorn_knopp(torch.randn(3000, 200, generator=g), tol=1e-4)\n"
        # The bytes themselves: a torch reduction over the codes (a sum) would
        # itself depend on the thread count.
        "print(hashlib.sha256(codes.numpy().tobytes()).hexdigest())\n"
    )
    outputs = set()
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        # cwd elsewhere: `python -c` would import the source tree, which has no compiled _C
        outputs.add(subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True,
                                   check=True, cwd=tmp_path).stdout)
    assert len(outputs) == 1, outputs


def test_progress_bar_and_non_convergence_warning(capsys):
    scores = cosine_scores(100, 10, dtype=torch.float32)
    quiet = wsss_ext.sinkhorn_knopp(scores, tol=1e-4)
    torch.testing.assert_close(wsss_ext.sinkhorn_knopp(scores, tol=1e-4, progress=True), quiet, rtol=0, atol=0)
    assert "sinkhorn" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        wsss_ext.sinkhorn_knopp(scores, n_iters=1, tol=1e-12, max_iters=2)


# --- stability: where the plain recipe overflows ----------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_small_epsilon_and_large_logits(device):
    gen = torch.Generator().manual_seed(6)
    scores = (torch.rand(500, 40, generator=gen, dtype=torch.float64) * 200 - 100).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not bool(torch.isfinite(sinkhorn_swav(scores, epsilon=0.01)).all())  # the recipe breaks here
    expected = sinkhorn_log_dense(scores, epsilon=0.01)
    torch.testing.assert_close(wsss_ext.sinkhorn_knopp(scores, epsilon=0.01), expected, rtol=1e-9, atol=1e-12)
    got32 = wsss_ext.sinkhorn_knopp(scores.float(), epsilon=0.01)
    assert bool(torch.isfinite(got32).all())
    torch.testing.assert_close(got32.sum(1), torch.ones(500, device=device), rtol=0, atol=1e-5)
    # fp32 scores of magnitude 100 / 0.01 carry ~6e-4 absolute error in the exponent.
    torch.testing.assert_close(got32.double(), expected, rtol=0, atol=3e-3)
    assert bool((got32.argmax(1) == expected.argmax(1)).all())


@pytest.mark.parametrize("device", DEVICES)
def test_float16_scores_where_the_recipe_overflows(device):
    scores = cosine_scores(256, 100, seed=7, dtype=torch.float16, device=device)
    assert not bool(torch.isfinite(sinkhorn_swav(scores)).all())  # exp(1 / 0.05) > 65504
    got = wsss_ext.sinkhorn_knopp(scores)
    torch.testing.assert_close(got.double(), sinkhorn_swav(scores.double()), rtol=1e-5, atol=1e-7)


# --- bad input -----------------------------------------------------------------


GOOD = torch.randn(8, 4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(scores=GOOD.numpy()), TypeError, "scores must be a torch.Tensor"),
        (dict(scores=GOOD[0]), ValueError, "scores must be 2-D"),
        (dict(scores=GOOD[None]), ValueError, "scores must be 2-D"),
        (dict(scores=GOOD.long()), TypeError, "scores must have dtype"),
        (dict(scores=GOOD.to(torch.complex64)), TypeError, "scores must have dtype"),
        (dict(scores=torch.empty(0, 4)), ValueError, "at least one sample and one prototype"),
        (dict(scores=torch.empty(8, 0)), ValueError, "at least one sample and one prototype"),
        (dict(scores=torch.empty(8, 4, device="meta")), ValueError, "wsss_ext runs on cpu and cuda"),
        (dict(epsilon=0.0), ValueError, "epsilon must be > 0"),
        (dict(epsilon=-0.05), ValueError, "epsilon must be > 0"),
        (dict(epsilon=float("nan")), ValueError, "epsilon must be finite"),
        (dict(epsilon="0.05"), TypeError, "epsilon must be a real number"),
        (dict(n_iters=-1), ValueError, "n_iters must be >= 0"),
        (dict(n_iters=1.5), TypeError, "n_iters must be an int"),
        (dict(n_iters=True), TypeError, "n_iters must be an int"),
        (dict(tol=0.0), ValueError, "tol must be > 0"),
        (dict(tol=1e-3, max_iters=2), ValueError, "max_iters must be >= 3"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    kwargs = dict(dict(scores=GOOD), **kwargs)
    with pytest.raises(error, match=message):
        wsss_ext.sinkhorn_knopp(**kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_iters", [0, 3])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_are_refused(device, n_iters, bad):
    scores = torch.randn(64, 5, device=device)
    scores[37, 2] = bad
    with pytest.raises(ValueError, match="scores contain NaN or inf"):
        wsss_ext.sinkhorn_knopp(scores, n_iters=n_iters)


def test_scores_that_overflow_when_divided_by_epsilon_are_refused():
    scores = torch.full((4, 3), 3e38)
    with pytest.raises(ValueError, match="overflow when divided by epsilon"):
        wsss_ext.sinkhorn_knopp(scores, epsilon=0.01)


def test_absurd_size_fails_cleanly():
    huge = torch.zeros(1, 1).expand(2**24, 2**24)  # 1 PB if materialised
    with pytest.raises(RuntimeError, match="memory|allocate"):
        wsss_ext.sinkhorn_knopp(huge)


# --- the custom ops -------------------------------------------------------


def test_custom_ops_pass_opcheck():
    scores = cosine_scores(40, 6, dtype=torch.float32)
    f = torch.randn(6)
    g = torch.randn(40)
    torch.library.opcheck(torch.ops.wsss_ext.sinkhorn_column_stats.default, (scores, g, 20.0))
    torch.library.opcheck(torch.ops.wsss_ext.sinkhorn_balance_samples.default, (scores, f, 20.0, 3.7))
    torch.library.opcheck(torch.ops.wsss_ext.sinkhorn_codes.default, (scores, f, 20.0))


# --- the one-call CPU solve (plain eager calls) --------------------------------


def _through_the_custom_ops(fn):
    """fn() with the fast path off: the loop of custom ops that traced, profiled and CUDA calls take."""
    from wsss_ext.ops import _checks

    _checks._FAST_PATH = False
    try:
        return fn()
    finally:
        _checks._FAST_PATH = True


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.float16, 1e-6)])
@pytest.mark.parametrize("n, k", [(1, 1), (3, 2), (17, 300), (1000, 7)])
@pytest.mark.parametrize("n_iters", [0, 1, 3, 7])
def test_one_call_solve_equals_the_custom_op_loop(dtype, atol, n, k, n_iters):
    scores = cosine_scores(n, k, dtype=dtype)
    fused = wsss_ext.sinkhorn_knopp(scores, n_iters=n_iters)
    looped = _through_the_custom_ops(lambda: wsss_ext.sinkhorn_knopp(scores, n_iters=n_iters))
    assert fused.dtype == looped.dtype
    torch.testing.assert_close(fused, looped, atol=atol, rtol=0)


@pytest.mark.parametrize("n_iters", [0, 3])
def test_one_call_solve_refuses_non_finite_scores_unless_checks_are_off(n_iters):
    scores = cosine_scores(9, 4, dtype=torch.float32)
    scores[4, 2] = float("nan")
    with pytest.raises(ValueError, match="scores contain NaN or inf"):
        wsss_ext.sinkhorn_knopp(scores, n_iters=n_iters)
    with wsss_ext.check_finite("off"):
        assert wsss_ext.sinkhorn_knopp(scores, n_iters=n_iters).isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("starved_column", [False, True])
def test_a_balancing_step_gives_the_column_log_sum_exps_of_its_new_potentials(dtype, starved_column):
    """A step that balances the samples (update_g) takes the column statistics
    from the row softmax on the CPU; where a column's softmax underflows in
    every row (f_0 = -3000: exp(-3000) is 0 in any dtype) it redoes them with
    each column's own maximum. Either way col_max + log col_sumexp must be
    LSE_i(z_ik + g_i) of the g the step wrote."""
    from wsss_ext import lowlevel

    n, k, inv_eps = 300, 7, 20.0
    scores = cosine_scores(n, k, seed=4, dtype=dtype)
    f = torch.randn(k, generator=torch.Generator().manual_seed(1), dtype=dtype)
    if starved_column:
        f[0] = -3000.0
    g = torch.empty(n, dtype=dtype)
    partials = torch.empty(2, lowlevel.sinkhorn_num_chunks(n, False), k, dtype=dtype)
    col_max, col_sumexp = torch.empty(k, dtype=dtype), torch.empty(k, dtype=dtype)
    lowlevel.sinkhorn_step(scores, f, g, partials, col_max, col_sumexp, inv_eps=inv_eps,
                           log_n=math.log(n), update_g=True)
    z = scores.double() * inv_eps
    expected_g = -math.log(n) - torch.logsumexp(z + f.double(), 1)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(g.double(), expected_g, **tol)
    expected = torch.logsumexp(z + g.double()[:, None], 0)
    assert bool(torch.isfinite(col_max + torch.log(col_sumexp)).all())
    torch.testing.assert_close((col_max + torch.log(col_sumexp)).double(), expected, **tol)


def test_one_call_solve_checks_its_arrays():
    from wsss_ext import lowlevel

    scores = cosine_scores(10, 4, dtype=torch.float32)
    codes = torch.empty(10, 4)
    size = lowlevel.sinkhorn_solve_workspace(10, 4)
    with pytest.raises(ValueError, match="workspace"):
        lowlevel.sinkhorn_solve(scores, codes, torch.empty(size - 1), 20.0, 3)
    with pytest.raises(ValueError, match="workspace"):
        lowlevel.sinkhorn_solve(scores, codes, torch.empty(size, dtype=torch.float64), 20.0, 3)
    with pytest.raises(ValueError, match="codes"):
        lowlevel.sinkhorn_solve(scores, scores, torch.empty(size), 20.0, 3)
    with pytest.raises(ValueError, match="n_iters"):
        lowlevel.sinkhorn_solve(scores, codes, torch.empty(size), 20.0, -1)
    with pytest.raises(ValueError, match="inv_eps"):
        lowlevel.sinkhorn_solve(scores, codes, torch.empty(size), float("nan"), 3)


# --- CUDA against CPU ---------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n, k, kwargs", [(4096, 3000, {}), (10368, 300, {}), (777, 65, dict(tol=1e-4)),
                                           (3, 2000, dict(epsilon=0.01))])
def test_cuda_matches_cpu(dtype, n, k, kwargs):
    scores = cosine_scores(n, k, seed=8, dtype=dtype)
    cpu = wsss_ext.sinkhorn_knopp(scores, **kwargs)
    gpu = wsss_ext.sinkhorn_knopp(scores.cuda(), **kwargs)
    tolerance = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=tolerance, atol=tolerance * 1e-2)


@requires_cuda
def test_cuda_runs_on_the_current_stream_and_device():
    scores = cosine_scores(2048, 512, seed=9, dtype=torch.float32, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        codes = wsss_ext.sinkhorn_knopp(scores)
    stream.synchronize()
    torch.testing.assert_close(codes.cpu(), wsss_ext.sinkhorn_knopp(scores.cpu()), rtol=2e-5, atol=1e-7)
