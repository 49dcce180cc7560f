"""Regression cases of issue 21: bad input, extreme values and aliasing refused
with an error naming the argument, or computed right; never a crash, a hang,
NaN or a finite wrong answer. (The fuzz suite, tests/fuzz/, draws many more.)"""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from wsss_ext import lowlevel
from wsss_ext.nn import PAMR, DenseCRF
from wsss_ext.reference import pamr_affinity_unfold, pamr_unfold, random_walk_dense


class NullArray:
    """An __array_interface__ whose data pointer is NULL."""

    def __init__(self, shape, typestr="<f4"):
        self.__array_interface__ = {"typestr": typestr, "data": (0, False), "shape": tuple(shape), "version": 3}


def f32(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


OFFSETS_3X3 = np.array([[dy, dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.int32)


def _sinkhorn_args():
    n, k = 8, 4
    return dict(scores=f32(n, k), f=np.zeros(k, np.float32), g=np.zeros(n, np.float32),
                partials=np.empty((2, lowlevel.sinkhorn_num_chunks(n, False), k), np.float32),
                col_max=np.empty(k, np.float32), col_sumexp=np.empty(k, np.float32), inv_eps=20.0, log_n=2.0,
                update_g=True)


def _walk_args():
    return dict(weights=f32(1, 9, 5, 6), offsets=OFFSETS_3X3, x=f32(1, 2, 5, 6), y=np.empty((1, 2, 5, 6), np.float32),
                transpose=False, halo=1)


def _pamr_args():
    return dict(weights=f32(1, 8, 5, 6), mask=f32(1, 2, 5, 6), out=np.empty((1, 2, 5, 6), np.float32), dilations=[1])


def _propagation_args():
    return dict(query=f32(1, 5, 6, 4), keys=f32(1, 2, 5, 6, 4), values=f32(1, 2, 5, 6, 3),
                out=np.empty((1, 5, 6, 3), np.float32), stats=np.empty((1, 5, 6, 2), np.float32), topk_index=None,
                radius=1, inv_temperature=1.0, topk=0)


def _fickle_args():
    bits = np.full((2, 2, 5, 6), -1, np.int32)
    return dict(input=f32(2, 2, 5, 6), output=np.empty((2, 2, 5, 6), np.float32), bits=bits, kernel_size=3,
                keep_scale=1.0, tap=0)


def _correlation_args():
    return dict(in1=f32(1, 5, 6, 3), in2=f32(1, 5, 6, 3), out=np.empty((1, 1, 1, 5, 6), np.float32),
                sizes=((1, 1), (1, 1), (1, 1), (0, 0), (1, 1), (1, 1)))


KERNELS = {
    "sinkhorn_step": (lowlevel.sinkhorn_step, _sinkhorn_args),
    "random_walk_step": (lowlevel.random_walk_step, _walk_args),
    "pamr_propagate": (lowlevel.pamr_propagate, _pamr_args),
    "propagation_forward": (lowlevel.propagation_forward, _propagation_args),
    "fickle_masked_tap": (lowlevel.fickle_masked_tap, _fickle_args),
    "correlation_forward": (lowlevel.correlation_forward, _correlation_args),
}


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_the_kernels_run_on_the_valid_arguments(kernel):
    fn, build = KERNELS[kernel]
    fn(**build())  # the baseline the cases below spoil one argument of


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_a_null_data_pointer_is_refused_for_every_array(kernel):
    fn, build = KERNELS[kernel]
    for name, value in build().items():
        if isinstance(value, np.ndarray):
            args = build()
            args[name] = NullArray(value.shape, value.__array_interface__["typestr"])
            with pytest.raises(ValueError, match=f"{name}: the data pointer is NULL"):
                fn(**args)


def test_malformed_array_interfaces_name_the_argument():
    args = _walk_args()
    args["x"] = NullArray((1, 2, 5, 6))
    args["x"].__array_interface__["shape"] = (2**70,)
    with pytest.raises(TypeError, match="x: the array interface's shape must be a tuple of integers within int64"):
        lowlevel.random_walk_step(**args)
    args["x"] = NullArray((2**40, 2**40, 2**40))
    with pytest.raises(ValueError, match="x: its (sizes multiply|strides reach) past 2\\*\\*63"):
        lowlevel.random_walk_step(**args)
    del args["x"].__array_interface__["data"]
    with pytest.raises(TypeError, match="x: the array interface has no 'data' entry"):
        lowlevel.random_walk_step(**args)


def test_aliasing_outputs_and_inputs_is_refused():
    args = _fickle_args()
    args["output"] = args["input"]
    with pytest.raises(ValueError, match="out shares memory with x"):
        lowlevel.fickle_masked_tap(**args)
    buffer = np.zeros(2 * 2 * 5 * 6 * 2, np.float32)
    args = _walk_args()
    args["x"], args["y"] = buffer[:60].reshape(1, 2, 5, 6), buffer[30:90].reshape(1, 2, 5, 6)  # partial overlap
    with pytest.raises(ValueError, match="y shares memory with x"):
        lowlevel.random_walk_step(**args)
    args = _pamr_args()
    args["mask"], args["out"] = buffer[:60].reshape(1, 2, 5, 6), buffer[59:119].reshape(1, 2, 5, 6)
    with pytest.raises(ValueError, match="out shares memory with mask"):
        lowlevel.pamr_propagate(**args)
    args = _propagation_args()
    values = np.zeros((1, 2, 5, 6, 3), np.float32)
    args["values"], args["out"] = values, values[:, 1]  # out inside values
    with pytest.raises(ValueError, match="out shares memory with values"):
        lowlevel.propagation_forward(**args)
    args = _sinkhorn_args()
    args["col_sumexp"] = args["col_max"]
    with pytest.raises(ValueError, match="col_max and col_sumexp share memory"):
        lowlevel.sinkhorn_step(**args)
    # Disjoint halves of one buffer are fine.
    args = _walk_args()
    args["x"], args["y"] = buffer[:60].reshape(1, 2, 5, 6), buffer[60:120].reshape(1, 2, 5, 6)
    lowlevel.random_walk_step(**args)


def test_scalar_arguments_are_named():
    args = _propagation_args()
    with pytest.raises(ValueError, match="radius must be in \\[-2147483648, 2147483647\\], got 2147483648"):
        lowlevel.propagation_forward(**dict(args, radius=2**31))
    with pytest.raises(TypeError, match="inv_temperature must be a real number, got str"):
        lowlevel.propagation_forward(**dict(args, inv_temperature="a"))
    with pytest.raises(ValueError, match="stream must be in \\[0, 2\\*\\*64\\)"):
        lowlevel.propagation_forward(**args, stream=-1)
    with pytest.raises(TypeError, match="update_g must be a bool, got int"):
        lowlevel.sinkhorn_step(**dict(_sinkhorn_args(), update_g=1))
    with pytest.raises(ValueError, match="stride must be in"):
        lowlevel.correlation_forward(**dict(_correlation_args(), sizes=((1, 1), (1, 1), (2**31, 1), (0, 0), (1, 1),
                                                                        (1, 1))))
    with pytest.raises(ValueError, match="seed must be in \\[0, 2\\*\\*64\\)"):
        lowlevel.fickle_mask_bits(np.zeros((1, 1, 2, 2), np.int32), 2**70, 3, 0)


def test_zero_size_views_are_contiguous():
    args = _walk_args()
    args["x"], args["y"] = np.zeros((1, 0, 5, 6), np.float32), np.zeros((1, 0, 5, 6), np.float32)
    lowlevel.random_walk_step(**args)  # nothing to do, no contiguity error
    assert lowlevel.ArrayView(torch.empty(0, 3).t()).is_contiguous


def test_propagation_backward_refuses_out_of_range_top_k_entries():
    q, k, v = torch.randn(1, 5, 6, 4), torch.randn(1, 2, 5, 6, 4), torch.rand(1, 2, 5, 6, 3)
    stats = torch.zeros(1, 5, 6, 2)
    grads = [torch.empty_like(t) for t in (q, k, v)]
    for bad in (10**6, -7):
        index = torch.zeros(1, 5, 6, 4, dtype=torch.int32)
        index[0, 2, 3, 1] = bad
        with pytest.raises(ValueError, match=f"topk_index holds {bad}"):
            lowlevel.propagation_backward(q, k, v, torch.rand(1, 5, 6, 3), stats, torch.zeros(1, 5, 6), index,
                                          *grads, 1, 1.0, 4)


def _lattice(image, dims=2, sxy=3.0, srgb=13.0):
    from wsss_ext.ops.dense_crf import _build_lattice, _link_lattice

    lattice, vertices = _build_lattice(image, dims, sxy, srgb, 0)
    values = torch.empty(vertices)
    _link_lattice(lattice, vertices, values, torch.empty_like(values), 0)
    return lattice, vertices


def test_dense_crf_build_vertices_refuses_lattice_coordinates_past_int32():
    from wsss_ext.ops.dense_crf import _build_lattice

    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="sxy = 1e-30 .*too small for a 8x8 image"):
        _build_lattice(image, 2, 1e-30, 13.0, 0)
    with pytest.raises(ValueError, match="srgb = 1e-30 are too small"):
        _build_lattice(image, 5, 3.0, 1e-30, 0)


def test_dense_crf_filter_refuses_garbage_indices():
    image = torch.randint(0, 255, (1, 3, 6, 7), dtype=torch.uint8)
    lattice, vertices = _lattice(image)
    q, out = torch.rand(42, 8), torch.empty(42, 8)
    values = torch.empty(vertices * 8)
    lowlevel.dense_crf_filter(lattice, vertices, q, out, 1.0, False, values, torch.empty_like(values))
    for name, entry, bad in (("neighbours", (0, 0, 0), 10**6), ("splat_pixels", (3,), -5),
                             ("entry_vertex", (0,), vertices)):
        spoiled = dict(lattice)
        spoiled[name] = lattice[name].clone()
        spoiled[name][entry] = bad
        with pytest.raises(ValueError, match=f"{name} holds {bad}"):
            lowlevel.dense_crf_filter(spoiled, vertices, q, out, 1.0, False, values, torch.empty_like(values))


# --- silent wrong answers and NaN -----------------------------------------------------------------------------


def test_random_walk_affinity_gradient_has_no_nan_for_beta_below_one():
    # The repro: 144 of 168 feature-gradient entries were NaN.
    f = torch.randn(1, 4, 6, 7, requires_grad=True, generator=torch.Generator().manual_seed(0))
    wsss_ext.random_walk(torch.rand(1, 2, 6, 7), wsss_ext.feature_affinity(f, 3), beta=0.5, n_steps=4).sum().backward()
    assert bool(torch.isfinite(f.grad).all())


@pytest.mark.parametrize("beta", [0.3, 0.5, 0.9])
def test_random_walk_affinity_gradient_equals_the_dense_reference(beta):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64, generator=generator)
    features = torch.randn(1, 3, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    upstream = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=generator)
    ours = torch.autograd.grad(wsss_ext.random_walk(x, wsss_ext.feature_affinity(features, 2), beta, 3), features,
                               upstream)[0]
    theirs = torch.autograd.grad(random_walk_dense(x, wsss_ext.feature_affinity(features, 2), beta, 3), features,
                                 upstream)[0]
    assert bool(torch.isfinite(theirs).all())
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11)


def _pamr_inputs():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 16, 16, generator=generator)
    mask = torch.softmax(torch.randn(1, 4, 16, 16, generator=generator), 1)
    return image, mask


@pytest.mark.parametrize("transform", [lambda i: i * 1e20, lambda i: 1e4 + 0.01 * i, lambda i: i * 3e5 - 7e3,
                                       lambda i: i * 1e30])
def test_pamr_matches_float64_under_affine_maps_of_the_image(transform):
    image, mask = _pamr_inputs()
    image = transform(image)
    torch.testing.assert_close(wsss_ext.pamr(image, mask).double(), pamr_unfold(image.double(), mask.double()),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wsss_ext.pamr_affinity(image).double(), pamr_affinity_unfold(image.double()),
                               rtol=1e-5, atol=1e-5)


def test_pamr_is_invariant_to_a_per_channel_scale():
    image, mask = _pamr_inputs()
    scale = torch.tensor([1e20, 3.0, 1e2]).view(1, 3, 1, 1)  # (small scales meet the 1e-8 of the std)
    torch.testing.assert_close(wsss_ext.pamr_affinity(image * scale), wsss_ext.pamr_affinity(image),
                               rtol=1e-4, atol=1e-6)


def test_pamr_refuses_values_whose_differences_overflow():
    image, mask = _pamr_inputs()
    with pytest.raises(ValueError, match="image values must be within"):
        wsss_ext.pamr(image * 3e38, mask)


def test_unary_energies_stay_finite_for_tiny_probabilities():
    labels = torch.randint(0, 3, (1, 4, 5), generator=torch.Generator().manual_seed(0))
    energies = wsss_ext.unary_from_labels(labels, 3, gt_prob=1e-300)
    assert bool(torch.isfinite(energies).all()) and abs(float(energies.max()) - 690.7755) < 1e-3
    probs = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    for clip in (1e-300, 5e-324, 1e-5):
        energies = wsss_ext.unary_from_probs(probs, clip=clip)
        assert bool(torch.isfinite(energies).all())
        torch.testing.assert_close(energies.max(), torch.tensor(-np.log(clip), dtype=torch.float32))


def test_feature_affinity_needs_a_channel():
    with pytest.raises(ValueError, match="features must have at least one channel"):
        wsss_ext.feature_affinity(torch.zeros(1, 0, 4, 4))


def test_sinkhorn_peak_memory_is_its_output():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "benchmarks"))
    from common import peak_memory

    scores = torch.randn(20000, 300, generator=torch.Generator().manual_seed(0))
    output = scores.numel() * 4
    for kwargs in ({}, {"n_iters": 0}):
        wsss_ext.sinkhorn_knopp(scores, **kwargs)
        peak = min(peak_memory(lambda: wsss_ext.sinkhorn_knopp(scores, **kwargs), "cpu") or 0 for _ in range(2))
        # No N x K temporary besides the output (23 MiB); before the fix n_iters=0 peaked at 63 MiB.
        assert peak < output + 4 * 2**20, (kwargs, peak / 2**20)


# --- wrong or missing errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cams, error, match", [
    (torch.ones(1, 2, 5, 5, dtype=torch.long), TypeError, "cams must have dtype"),
    (torch.ones(1, 2, 5, 5, dtype=torch.bool), TypeError, "cams must have dtype"),
    (torch.ones(1, 2, 5, 5, dtype=torch.uint8), TypeError, "cams must have dtype"),
    (torch.ones(5), ValueError, "cams must be 4-D"),
    (torch.tensor(1.0), ValueError, "cams must be 4-D"),
    (torch.ones(1, 2, 4, 5), ValueError, "cams .* and boundary .* must have the same batch size and H x W"),
])
def test_irnet_random_walk_checks_its_cams(cams, error, match):
    with pytest.raises(error, match=match):
        wsss_ext.irnet_random_walk(cams, torch.rand(1, 1, 5, 5), n_steps=2)


@pytest.mark.parametrize("call, error, match", [
    (lambda: wsss_ext.sinkhorn_knopp(torch.randn(4, 3).to_sparse()), TypeError, "scores must be a dense"),
    (lambda: wsss_ext.pamr(torch.rand(1, 3, 5, 5).to_sparse(), torch.rand(1, 2, 5, 5)), TypeError,
     "image must be a dense"),
    (lambda: wsss_ext.sinkhorn_knopp(torch.randn(4, 3), process_group="bogus"), TypeError,
     "process_group must be a torch.distributed ProcessGroup"),
    (lambda: wsss_ext.walk_to_labels(torch.rand(1, 2, 3, 3), 5), TypeError, "size must be a sequence of 2 ints"),
    (lambda: wsss_ext.track_video(torch.randn(2, 4, 5, 5), torch.zeros(5, 5, dtype=torch.long), size=5), TypeError,
     "size must be a sequence of 2 ints"),
    (lambda: PAMR(dilations=5), TypeError, "dilations must be a sequence of ints"),
    (lambda: DenseCRF.preset("irnet", scale="a"), TypeError, "scale must be a real number"),
    (lambda: DenseCRF(gaussian_sxy="a"), TypeError, "gaussian_sxy must be a real number"),
    (lambda: wsss_ext.correlation(torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5), stride=2**31), ValueError,
     "stride must be >= 1 \\(and <= 2147483647\\)"),
    (lambda: wsss_ext.correlation(torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5), patch_size=2**70), ValueError,
     "patch_size must be >= 1"),
    (lambda: wsss_ext.walk_to_labels(torch.rand(1, 2, 3, 3), (2**31, 2)), ValueError, "size\\[0\\] must be <="),
    (lambda: wsss_ext.walk_to_labels(torch.rand(1, 2, 3, 3), (2**30, 2**30)), ValueError,
     "size asks for a \\[1, 2, 1073741824, 1073741824\\] float32 buffer"),
    (lambda: wsss_ext.unary_from_labels(torch.zeros(5, 5, dtype=torch.long), 2**40), ValueError,
     "n_labels asks for a \\[5, 5, 1099511627776\\] float32 buffer of .* GiB, more than"),
    (lambda: wsss_ext.pamr(torch.rand(1, 3, 5, 5), torch.rand(1, 2, 5, 5), n_iters=2**40), ValueError,
     "n_iters must be <= 100000"),
    (lambda: wsss_ext.sinkhorn_knopp(torch.randn(4, 3), n_iters=2**70), ValueError, "n_iters must be <= 100000"),
    (lambda: wsss_ext.random_walk(torch.rand(1, 2, 5, 5), torch.rand(1, 9, 5, 5), n_steps=10**9), ValueError,
     "n_steps must be <= 100000"),
    (lambda: wsss_ext.fickle_conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), n_samples=2**40, seed=0),
     ValueError, "n_samples must be <= 100000"),
    (lambda: wsss_ext.expanded_dropout(torch.randn(1, 2, 5, 5), seed=2**70), ValueError, "seed must be < 2\\*\\*63"),
])
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("call, shape", [
    (lambda: wsss_ext.pamr(torch.rand(1, 3, 0, 5), torch.rand(1, 2, 0, 5)), (1, 2, 0, 5)),
    (lambda: wsss_ext.pamr(torch.rand(1, 3, 5, 5), torch.rand(1, 0, 5, 5)), (1, 0, 5, 5)),
    (lambda: wsss_ext.random_walk(torch.rand(1, 0, 5, 5), torch.rand(1, 9, 5, 5), n_steps=3), (1, 0, 5, 5)),
    (lambda: wsss_ext.propagate_labels(torch.randn(1, 0, 5, 6), torch.randn(1, 2, 0, 5, 6), torch.rand(1, 2, 3, 5, 6),
                                       radius=1), (1, 3, 5, 6)),
    (lambda: wsss_ext.propagate_labels(torch.randn(1, 4, 5, 6), torch.randn(1, 2, 4, 5, 6), torch.rand(1, 2, 0, 5, 6),
                                       radius=1), (1, 0, 5, 6)),
    (lambda: wsss_ext.correlation(torch.randn(1, 0, 5, 6), torch.randn(1, 0, 5, 6), patch_size=3), (1, 3, 3, 5, 6)),
    (lambda: wsss_ext.boundary_affinity(torch.rand(1, 1, 0, 6), 2), (1, 9, 0, 6)),
])
def test_zero_size_inputs_give_the_empty_or_defined_result(call, shape):
    out = call()
    assert tuple(out.shape) == shape and bool(torch.isfinite(out).all())


def test_propagation_with_no_channels_is_uniform_attention():
    values = torch.rand(1, 2, 3, 5, 6, dtype=torch.float64)
    out = wsss_ext.propagate_labels(torch.randn(1, 0, 5, 6, dtype=torch.float64),
                                    torch.randn(1, 2, 0, 5, 6, dtype=torch.float64), values, radius=1,
                                    border="exclude")
    window = F.avg_pool2d(values[0], 3, 1, 1, count_include_pad=False)  # [R, L, H, W] means over in-frame taps
    counts = F.avg_pool2d(torch.ones(1, 1, 5, 6, dtype=torch.float64), 3, 1, 1, divisor_override=1)
    expected = (window * counts).sum(0) / (2 * counts[0])
    torch.testing.assert_close(out[0], expected)
