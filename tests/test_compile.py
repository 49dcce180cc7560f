"""Every public op under torch.compile(fullgraph=True), torch.export and
torch.func.vmap; the finite-value checks (wsss_ext.set_check_finite) in eager
mode, under compile, and with no host sync on CUDA.

The compile tests use the ``aot_eager`` backend: it captures the whole graph
with Dynamo and runs AOTAutograd (where data-dependent checks used to fail),
without inductor's C++ compilation.
"""

import pytest
import torch

import wsss_ext
from conftest import requires_cuda


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _probs(*shape, seed=0):
    return torch.softmax(torch.randn(*shape, generator=_gen(seed)), dim=1)


# name -> (function of tensors, builder of (tensors), indices of the tensors to differentiate)
CASES = {
    "sinkhorn_knopp": (lambda s: wsss_ext.sinkhorn_knopp(s, 0.1, 3),
                       lambda: (torch.randn(24, 6, generator=_gen()),), ()),
    "sinkhorn_knopp_no_iteration": (lambda s: wsss_ext.sinkhorn_knopp(s, 0.1, 0),
                                    lambda: (torch.randn(24, 6, generator=_gen()),), ()),
    "dense_crf": (lambda u, im: wsss_ext.dense_crf(u, im, 2),
                  lambda: (wsss_ext.unary_from_probs(_probs(1, 3, 7, 9)),
                           torch.randint(0, 256, (1, 3, 7, 9), dtype=torch.uint8, generator=_gen())), ()),
    "unary_from_probs": (wsss_ext.unary_from_probs, lambda: (_probs(1, 3, 5, 5),), ()),
    "unary_from_labels": (lambda labels: wsss_ext.unary_from_labels(labels, 4, 0.7, ignore_index=255),
                          lambda: (torch.tensor([[0, 1, 255], [3, 2, 1]]),), ()),
    "pamr": (lambda im, m: wsss_ext.pamr(im, m, dilations=(1, 2), n_iters=3),
             lambda: (torch.rand(2, 3, 9, 10, generator=_gen()), _probs(2, 4, 9, 10)), (1,)),
    "pamr_affinity": (lambda im: wsss_ext.pamr_affinity(im, dilations=(1, 3)),
                      lambda: (torch.rand(1, 3, 8, 8, generator=_gen()),), ()),
    "resize_image_to_mask": (lambda im: wsss_ext.resize_image_to_mask(im, (5, 6)),
                             lambda: (torch.rand(1, 3, 9, 10, generator=_gen()),), (0,)),
    "random_walk": (lambda x, a: wsss_ext.random_walk(x, a, beta=2.0, n_steps=5),
                    lambda: (torch.rand(1, 3, 7, 8, generator=_gen()),
                             wsss_ext.feature_affinity(torch.randn(1, 4, 7, 8, generator=_gen(1)), radius=2)), (0, 1)),
    "feature_affinity": (lambda f: wsss_ext.feature_affinity(f, radius=2),
                         lambda: (torch.randn(1, 4, 6, 7, generator=_gen()),), (0,)),
    "boundary_affinity": (lambda b: wsss_ext.boundary_affinity(b, radius=2),
                          lambda: (torch.rand(1, 1, 6, 7, generator=_gen()),), (0,)),
    "cam_background": (lambda c: wsss_ext.cam_background(c), lambda: (torch.rand(1, 3, 5, 6, generator=_gen()),),
                       (0,)),
    "affinitynet_random_walk": (lambda c, f: wsss_ext.affinitynet_random_walk(c, f, 8.0, 4, radius=2),
                                lambda: (torch.rand(1, 2, 6, 7, generator=_gen()),
                                         torch.randn(1, 4, 6, 7, generator=_gen(1))), (0, 1)),
    "irnet_random_walk": (lambda c, b: wsss_ext.irnet_random_walk(c, b, 10.0, 4, radius=2),
                          lambda: (torch.rand(1, 2, 6, 7, generator=_gen()),
                                   torch.rand(1, 1, 6, 7, generator=_gen(1))), (0, 1)),
    "walk_to_labels": (lambda s: wsss_ext.walk_to_labels(s, (9, 11), bg_threshold=0.25),
                       lambda: (torch.rand(2, 3, 5, 6, generator=_gen()),), ()),
    "neighbour_offsets": (lambda x: x + wsss_ext.neighbour_offsets(3).sum(), lambda: (torch.zeros(2),), ()),
    "fickle_conv2d": (lambda x, w, b: wsss_ext.fickle_conv2d(x, w, b, 0.5, seed=3, n_samples=2),
                      lambda: (torch.randn(2, 4, 5, 6, generator=_gen()), torch.randn(3, 4, 3, 3, generator=_gen(1)),
                               torch.randn(3, generator=_gen(2))), (0, 1, 2)),
    "expanded_dropout": (lambda x: wsss_ext.expanded_dropout(x, 3, 0.5, seed=3),
                         lambda: (torch.randn(1, 2, 4, 5, generator=_gen()),), (0,)),
    "fickle_gradcam": (lambda x, w, labels: wsss_ext.fickle_gradcam(x, w, None, labels, 0.5, 4, seed=3,
                                                                     chunk_samples=2),
                       lambda: (torch.rand(1, 4, 5, 6, generator=_gen()), torch.randn(3, 4, 3, 3, generator=_gen(1)),
                                torch.tensor([[1.0, 0.0, 1.0]])), ()),
    "correlation": (lambda a, b: wsss_ext.correlation(a, b, patch_size=3, dilation_patch=2),
                    lambda: (torch.randn(2, 4, 6, 7, generator=_gen()), torch.randn(2, 4, 6, 7, generator=_gen(1))),
                    (0, 1)),
    "propagate_labels": (lambda q, k, v: wsss_ext.propagate_labels(q, k, v, radius=2, temperature=0.5),
                         lambda: (torch.randn(1, 4, 6, 7, generator=_gen()), torch.randn(1, 2, 4, 6, 7, generator=_gen(1)),
                                  torch.rand(1, 2, 3, 6, 7, generator=_gen(2))), (0, 1, 2)),
    "propagate_labels_topk": (lambda q, k, v: wsss_ext.propagate_labels(q, k, v, 2, 0.5, topk=4, normalize=True),
                              lambda: (torch.randn(1, 4, 6, 7, generator=_gen()),
                                       torch.randn(1, 2, 4, 6, 7, generator=_gen(1)),
                                       torch.rand(1, 2, 3, 6, 7, generator=_gen(2))), (0, 1, 2)),
    "propagate_labels_exclude": (lambda q, k, v: wsss_ext.propagate_labels(q, k, v, 2, 0.5, topk=20, border="exclude"),
                                 lambda: (torch.randn(1, 4, 6, 7, generator=_gen()),
                                          torch.randn(1, 1, 4, 6, 7, generator=_gen(1)),
                                          torch.rand(1, 1, 3, 6, 7, generator=_gen(2))), (0, 1, 2)),
    "track_video": (lambda f, labels: wsss_ext.track_video(f, labels, 3, radius=2, n_recent=1),
                    lambda: (torch.randn(3, 4, 6, 7, generator=_gen()), torch.randint(0, 3, (12, 14), generator=_gen())),
                    ()),
}


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


def _loss(outputs):
    """A scalar that weighs every output element differently, for the gradient checks."""
    total = 0
    for index, out in enumerate(outputs):
        if out.is_floating_point():
            weights = torch.linspace(-1, 1 + index, out.numel(), dtype=out.dtype, device=out.device).view(out.shape)
            total = total + (out * weights).sum()
    return total


def _run(fn, tensors, grad_indices):
    inputs = [t.clone().requires_grad_(i in grad_indices) for i, t in enumerate(tensors)]
    outputs = _outputs(fn(*inputs))
    grads = ()
    if grad_indices:
        grads = torch.autograd.grad(_loss(outputs), [inputs[i] for i in grad_indices])
    return [out.detach() for out in outputs], grads


def _assert_same(got, expected):
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class _Module(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *tensors):
        return self.fn(*tensors)


@pytest.mark.parametrize("name", list(CASES))
def test_compiles_fullgraph_and_matches_eager(name):
    fn, build, grad_indices = CASES[name]
    tensors = build()
    expected, expected_grads = _run(fn, tensors, grad_indices)
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got, got_grads = _run(compiled, tensors, grad_indices)
    _assert_same(got, expected)
    _assert_same(got_grads, expected_grads)


@pytest.mark.parametrize("name", list(CASES))
def test_exports_and_matches_eager(name):
    fn, build, grad_indices = CASES[name]
    tensors = build()
    expected, expected_grads = _run(fn, tensors, grad_indices)
    program = torch.export.export(_Module(fn), tuple(tensors))
    got, got_grads = _run(program.module(), tensors, grad_indices)
    _assert_same(got, expected)
    _assert_same(got_grads, expected_grads)


# ---------------------------------------------------------------------------
# Non-finite input
# ---------------------------------------------------------------------------

NAN_CASES = {
    # name -> (function, tensors with one NaN, the eager error)
    "sinkhorn_knopp": (lambda s: wsss_ext.sinkhorn_knopp(s), lambda: (torch.randn(8, 4).index_fill(0, torch.tensor([2]), float("nan")),),
                       "scores contain NaN or inf"),
    "pamr": (lambda im, m: wsss_ext.pamr(im, m, dilations=(1,), n_iters=2),
             lambda: (torch.rand(1, 3, 5, 5), _probs(1, 2, 5, 5).index_fill(2, torch.tensor([1]), float("nan"))),
             "mask contains NaN or inf"),
    "correlation": (lambda a, b: wsss_ext.correlation(a, b, patch_size=3),
                    lambda: (torch.randn(1, 2, 5, 5).index_fill(3, torch.tensor([0]), float("inf")), torch.randn(1, 2, 5, 5)),
                    "input1 contains NaN or inf"),
    "random_walk": (lambda x, a: wsss_ext.random_walk(x, a, n_steps=2),
                    lambda: (torch.rand(1, 2, 5, 5).index_fill(2, torch.tensor([1]), float("nan")),
                             torch.rand(1, 9, 5, 5)), "x contains NaN or inf"),
    "fickle_conv2d": (lambda x, w: wsss_ext.fickle_conv2d(x, w, seed=0),
                      lambda: (torch.randn(1, 2, 4, 4).index_fill(1, torch.tensor([0]), float("nan")),
                               torch.randn(3, 2, 3, 3)), "x contains NaN or inf"),
    "propagate_labels": (lambda q, k, v: wsss_ext.propagate_labels(q, k, v, radius=1),
                         lambda: (torch.randn(1, 2, 4, 4), torch.randn(1, 1, 2, 4, 4).index_fill(3, torch.tensor([1]), float("nan")),
                                  torch.rand(1, 1, 2, 4, 4)), "keys contains NaN or inf"),
    "dense_crf": (lambda u, im: wsss_ext.dense_crf(u, im, 1),
                  lambda: (torch.rand(1, 2, 4, 4).index_fill(2, torch.tensor([0]), float("nan")),
                           torch.zeros(1, 3, 4, 4, dtype=torch.uint8)), "unary has NaN"),
}


@pytest.mark.parametrize("name", list(NAN_CASES))
def test_nan_input_is_refused_in_eager_and_passes_through_compiled(name):
    fn, build, message = NAN_CASES[name]
    tensors = build()
    with pytest.raises(ValueError, match=message):
        fn(*tensors)
    with wsss_ext.check_finite("sync"):
        with pytest.raises(ValueError, match=message):
            fn(*tensors)
    with wsss_ext.check_finite("off"):
        unchecked = _outputs(fn(*tensors))
    assert wsss_ext.get_check_finite() == "async"
    # Compiled graphs hold no check: the call returns (no hang, no crash) what the unchecked eager call returns.
    torch._dynamo.reset()
    compiled = _outputs(torch.compile(fn, backend="aot_eager", fullgraph=True)(*tensors))
    for got, expected in zip(compiled, unchecked, strict=True):
        torch.testing.assert_close(got, expected, equal_nan=True)


def test_check_finite_switch():
    assert wsss_ext.get_check_finite() == "async"
    with pytest.raises(ValueError, match="mode must be one of"):
        wsss_ext.set_check_finite("warn")
    wsss_ext.set_check_finite("off")
    try:
        assert wsss_ext.get_check_finite() == "off"
        out = wsss_ext.pamr(torch.rand(1, 3, 4, 4), torch.full((1, 2, 4, 4), float("nan")), (1,), 1)
        assert torch.isnan(out).all()
    finally:
        wsss_ext.set_check_finite("async")
    with pytest.raises(ValueError, match="first_labels holds label 5 but n_labels is 3"):
        wsss_ext.track_video(torch.randn(2, 3, 4, 4), torch.full((4, 4), 5), 3, radius=1)
    with pytest.raises(ValueError, match="found values in \\[0, 7\\]"):
        wsss_ext.unary_from_labels(torch.tensor([[0, 7]]), 4)


def test_host_dependent_options_give_a_clear_error_under_compile():
    scores = torch.randn(8, 4)
    with pytest.raises(Exception, match="tol=.*cannot be traced by torch.compile"):
        torch.compile(lambda s: wsss_ext.sinkhorn_knopp(s, tol=1e-3), backend="aot_eager", fullgraph=True)(scores)
    with pytest.raises(Exception, match="pass seed= explicitly"):
        torch.compile(lambda x, w: wsss_ext.fickle_conv2d(x, w), backend="aot_eager", fullgraph=True)(
            torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3))


# ---------------------------------------------------------------------------
# vmap
# ---------------------------------------------------------------------------


def test_vmap_sinkhorn_over_a_batch_of_score_matrices():
    scores = torch.randn(3, 20, 5, generator=_gen())
    got = torch.func.vmap(lambda s: wsss_ext.sinkhorn_knopp(s, 0.1, 4))(scores)
    expected = torch.stack([wsss_ext.sinkhorn_knopp(s, 0.1, 4) for s in scores])
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="scores contain NaN"):
        torch.func.vmap(wsss_ext.sinkhorn_knopp)(scores.index_fill(1, torch.tensor([3]), float("nan")))


@pytest.mark.parametrize("in_dims", [(0, 0), (0, None), (1, 0)])
def test_vmap_correlation_folds_into_the_batch(in_dims):
    a, b = torch.randn(3, 2, 4, 5, 6, generator=_gen()), torch.randn(3, 2, 4, 5, 6, generator=_gen(1))
    a = a.movedim(0, in_dims[0]) if in_dims[0] else a
    b = b[0] if in_dims[1] is None else b

    def fn(x, y):
        return wsss_ext.correlation(x, y, patch_size=3)

    got = torch.func.vmap(fn, in_dims=in_dims)(a, b)
    slices_a = a.unbind(in_dims[0])
    expected = torch.stack([fn(x, b if in_dims[1] is None else b[i]) for i, x in enumerate(slices_a)])
    torch.testing.assert_close(got, expected)
    # Autograd through the vmapped call matches the loop's.
    if in_dims == (0, 0):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        torch.func.vmap(fn)(x, y).square().sum().backward()
        x_loop, y_loop = a.clone().requires_grad_(), b.clone().requires_grad_()
        torch.stack([fn(p, q) for p, q in zip(x_loop, y_loop)]).square().sum().backward()
        torch.testing.assert_close(x.grad, x_loop.grad)
        torch.testing.assert_close(y.grad, y_loop.grad)


def test_vmap_pamr_and_random_walk_fold_into_the_batch():
    image, mask = torch.rand(2, 1, 3, 6, 7, generator=_gen()), _probs(2, 1, 3, 6, 7)
    got = torch.func.vmap(lambda i, m: wsss_ext.pamr(i, m, (1, 2), 2))(image, mask)
    torch.testing.assert_close(got, wsss_ext.pamr(image[:, 0], mask[:, 0], (1, 2), 2).unsqueeze(1))
    x, affinity = torch.rand(2, 1, 2, 6, 7, generator=_gen()), torch.rand(2, 1, 9, 6, 7, generator=_gen(1))
    got = torch.func.vmap(lambda x, a: wsss_ext.random_walk(x, a, 2.0, 3))(x, affinity)
    torch.testing.assert_close(got, wsss_ext.random_walk(x[:, 0], affinity[:, 0], 2.0, 3).unsqueeze(1))
    q, k, v = torch.randn(3, 1, 4, 5, 6), torch.randn(3, 1, 2, 4, 5, 6), torch.rand(3, 1, 2, 2, 5, 6)
    got = torch.func.vmap(lambda q, k, v: wsss_ext.propagate_labels(q, k, v, radius=1))(q, k, v)
    torch.testing.assert_close(got, wsss_ext.propagate_labels(q[:, 0], k[:, 0], v[:, 0], radius=1).unsqueeze(1))
    unary = wsss_ext.unary_from_probs(_probs(2, 3, 6, 7)).unsqueeze(1)
    rgb = torch.randint(0, 256, (2, 1, 3, 6, 7), dtype=torch.uint8, generator=_gen())
    got = torch.func.vmap(lambda u, im: wsss_ext.dense_crf(u, im, 2))(unary, rgb)
    torch.testing.assert_close(got, wsss_ext.dense_crf(unary[:, 0], rgb[:, 0], 2).unsqueeze(1))


def test_vmap_fickle_says_to_batch_instead():
    x, w = torch.randn(2, 1, 2, 4, 4), torch.randn(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match="does not support torch.func.vmap.*stack the inputs along the batch"):
        torch.func.vmap(lambda x: wsss_ext.fickle_conv2d(x, w, seed=0))(x)


# ---------------------------------------------------------------------------
# The eager fast path and the registered ops agree
# ---------------------------------------------------------------------------


def test_custom_ops_still_pass_opcheck_through_the_dispatcher():
    scores, f = torch.randn(10, 4), torch.randn(4)
    torch.library.opcheck(torch.ops.wsss_ext.sinkhorn_codes.default, (scores, f, 20.0))
    image, mask = torch.rand(1, 3, 5, 6), _probs(1, 2, 5, 6).requires_grad_()
    weights = torch.ops.wsss_ext.pamr_affinity(image, [1], 0.1)
    torch.library.opcheck(torch.ops.wsss_ext.pamr_propagate.default, (weights, mask, [1], 2, False))
    a, b = torch.randn(1, 2, 4, 5, requires_grad=True), torch.randn(1, 2, 4, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.wsss_ext.correlation.default, (a, b, [1, 1, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1]))


def test_fast_path_is_taken_only_inplain_eager_calls():
    from wsss_ext.ops._checks import plain_eager

    x = torch.randn(3)
    assert plain_eager((x,), differentiable=True)
    assert not plain_eager((x.requires_grad_(),), differentiable=True)
    assert plain_eager((x,), differentiable=False)
    with torch.no_grad():
        assert plain_eager((x,), differentiable=True)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        assert not plain_eager((torch.empty(3),), differentiable=False)
    with torch.profiler.profile():
        assert not plain_eager((torch.empty(3),), differentiable=False)


# ---------------------------------------------------------------------------
# CUDA: no host synchronisation on the default path
# ---------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_ops_never_synchronise_the_host(name):
    if name in ("track_video",):
        pytest.skip("track_video returns argmaxed maps frame by frame from a host loop")
    if name == "dense_crf":
        pytest.skip("dense_crf reads the lattice's vertex count back to allocate it (a documented host value)")
    fn, build, grad_indices = CASES[name]
    tensors = [t.cuda() for t in build()]
    expected, _ = _run(fn, [t.cpu() for t in tensors], ())
    fn(*tensors)  # first call: caches (offset tables), outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        inputs = [t.clone().requires_grad_(i in grad_indices) for i, t in enumerate(tensors)]
        outputs = _outputs(fn(*inputs))
        if grad_indices:
            _loss(outputs).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out.detach().cpu(), ref, rtol=1e-4, atol=1e-4)
