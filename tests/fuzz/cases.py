"""The fuzz suite's cases: seeded and bounded, regenerated identically in any
process from (seed, index), so that a child process runs a slice of them and
a crash names its case.

Each case is one call and its expectation:
- ``oracle``: random valid inputs, compared with the plain-PyTorch reference
  (wsss_ext.reference) or an exact identity; the outputs must be finite.
- ``bad``: one argument spoiled (rank, dtype, device, shape, NaN, layout, type,
  absurd value); a TypeError or ValueError whose message names that argument.
- ``lowlevel``: the compiled kernels on numpy arrays, valid (against the same
  kernel through torch) and spoiled (NULL pointer, aliasing, dtype, read-only).
- ``empty``: one dimension of one input set to 0: a defined result or a
  named error.
- ``module``: the wsss_ext.nn forms against their functions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import wsss_ext
from wsss_ext import lowlevel
from wsss_ext import reference as ref
from wsss_ext.nn import PAMR, Correlation, DenseCRF

# Outcomes a case function returns (an exception escaping it is "unexpected").
OK, MISMATCH, NAN = "ok", "mismatch", "nan"


@dataclasses.dataclass
class Case:
    id: str
    category: str
    run: Callable[[], tuple[str, str]]  # -> (outcome, detail)


# --- checks ------------------------------------------------------------------------------------------------


def _compare(ours, expected, rtol, atol) -> tuple[str, str]:
    ours, expected = ours.detach().double(), expected.detach().double()
    if not bool(torch.isfinite(ours).all()):
        return NAN, f"{int((~torch.isfinite(ours)).sum())} non-finite values"
    if ours.shape != expected.shape:
        return MISMATCH, f"shape {tuple(ours.shape)} != {tuple(expected.shape)}"
    if rtol == "mean":  # an approximate method: its mean error
        error = float((ours - expected).abs().mean()) if ours.numel() else 0.0
        return (OK, "") if error <= atol else (MISMATCH, f"mean error {error:.3g}")
    error = (ours - expected).abs() - rtol * expected.abs()
    if ours.numel() and float(error.max()) > atol:
        return MISMATCH, f"max error {float((ours - expected).abs().max()):.3g}"
    return OK, ""


def _expect_error(call, names: tuple[str, ...]) -> tuple[str, str]:
    try:
        call()
    except (TypeError, ValueError) as error:
        message = str(error)
        if any(name in message for name in names):
            return OK, ""
        return "unnamed", f"{type(error).__name__}: {message[:200]} (expected one of {names})"
    except Exception as error:  # noqa: BLE001 - any other type is the finding
        return "wrong_error", f"{type(error).__name__}: {str(error)[:200]}"
    return "accepted", "no error raised"


# --- random valid inputs -----------------------------------------------------------------------------------


class Draw:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(int(self.rng.integers(2**31)))

    def int(self, lo, hi):  # inclusive
        return int(self.rng.integers(lo, hi + 1))

    def real(self, lo, hi, log=False):
        if log:
            return float(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))
        return float(self.rng.uniform(lo, hi))

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def randn(self, *shape, dtype=torch.float64, scale=1.0):
        return torch.randn(*shape, generator=self.gen, dtype=dtype) * scale

    def rand(self, *shape, dtype=torch.float64):
        return torch.rand(*shape, generator=self.gen, dtype=dtype)

    def probs(self, *shape, dim=1):
        return torch.softmax(self.randn(*shape), dim)


# Each op: make(draw) -> (tensors: dict, scalars: dict, call(tensors, scalars) -> Tensor,
#                        oracle(tensors, scalars) -> (expected, rtol, atol) or None)
OPS: dict[str, Callable] = {}
# Scalar arguments and how to spoil them: name -> "int" | "real" | "str".
SCALARS: dict[str, dict[str, str]] = {}


def op(name, scalars=None):
    def register(make):
        OPS[name] = make
        SCALARS[name] = scalars or {}
        return make

    return register


@op("sinkhorn_knopp", {"epsilon": "real", "n_iters": "int"})
def _(d):
    n, k = d.int(1, 40), d.int(1, 12)
    tensors = {"scores": d.randn(n, k)}
    # n_iters >= 1: at 0 the recipe returns the unbalanced plan, wsss_ext the per-sample softmax (documented).
    scalars = {"epsilon": d.real(0.05, 1.0), "n_iters": d.int(1, 5)}
    return (tensors, scalars, lambda t, s: wsss_ext.sinkhorn_knopp(t["scores"], s["epsilon"], s["n_iters"]),
            lambda t, s: (ref.sinkhorn_swav(t["scores"], s["epsilon"], s["n_iters"]), 1e-7, 1e-9))


@op("pamr", {"n_iters": "int", "sigma": "real"})
def _(d):
    b, h, w = d.int(1, 2), d.int(1, 9), d.int(1, 9)
    dilations = tuple(sorted(set(d.choice([(1,), (1, 2), (1, 3), (2, 5)]))))
    tensors = {"image": d.rand(b, d.int(1, 3), h, w) * d.real(1e-2, 1e3, log=True), "mask": d.probs(b, d.int(1, 4), h, w)}
    scalars = {"n_iters": d.int(0, 4), "sigma": d.real(0.05, 1.0)}
    call = lambda t, s: wsss_ext.pamr(t["image"], t["mask"], dilations, s["n_iters"], s["sigma"])  # noqa: E731
    oracle = lambda t, s: (ref.pamr_unfold(t["image"], t["mask"], dilations, s["n_iters"], s["sigma"]),  # noqa: E731
                           1e-9, 1e-11)
    return tensors, scalars, call, oracle


@op("pamr_affinity", {"sigma": "real"})
def _(d):
    image = d.randn(d.int(1, 2), d.int(1, 3), d.int(1, 8), d.int(1, 8)) * d.real(1e-2, 1e6, log=True)
    tensors, scalars = {"image": image + d.real(-1e3, 1e3)}, {"sigma": d.real(0.05, 1.0)}
    return (tensors, scalars, lambda t, s: wsss_ext.pamr_affinity(t["image"], (1, 2), s["sigma"]),
            lambda t, s: (ref.pamr_affinity_unfold(t["image"], (1, 2), s["sigma"]), 1e-7, 1e-9))


@op("random_walk", {"beta": "real", "n_steps": "int"})
def _(d):
    b, h, w, radius = d.int(1, 2), d.int(1, 7), d.int(1, 7), d.int(1, 3)
    features = d.randn(b, d.int(1, 4), h, w)
    tensors = {"x": d.rand(b, d.int(1, 3), h, w), "affinity": wsss_ext.feature_affinity(features, radius)}
    scalars = {"beta": d.real(0.2, 10.0), "n_steps": d.int(0, 6)}
    return (tensors, scalars, lambda t, s: wsss_ext.random_walk(t["x"], t["affinity"], s["beta"], s["n_steps"]),
            lambda t, s: (ref.random_walk_dense(t["x"], t["affinity"], s["beta"], s["n_steps"]), 1e-9, 1e-11))


@op("propagate_labels", {"radius": "int", "temperature": "real", "border": "str"})
def _(d):
    # c >= 2: with one normalised channel every score is +-1/T and the top-k's tie-break decides.
    b, refs, c, l, h, w = d.int(1, 2), d.int(1, 3), d.int(2, 6), d.int(1, 4), d.int(1, 8), d.int(1, 8)
    radius = d.int(0, 3)
    candidates = refs * (2 * radius + 1) ** 2
    topk = d.choice([None, d.int(1, min(candidates, 64))])
    tensors = {"query": d.randn(b, c, h, w), "keys": d.randn(b, refs, c, h, w), "values": d.probs(b, refs, l, h, w, dim=2)}
    scalars = {"radius": radius, "temperature": d.real(0.05, 5.0, log=True), "border": d.choice(["zero", "exclude"])}
    normalize = d.choice([False, True])
    call = lambda t, s: wsss_ext.propagate_labels(t["query"], t["keys"], t["values"], s["radius"],  # noqa: E731
                                                  s["temperature"], topk, normalize, s["border"])
    oracle = lambda t, s: (ref.propagate_labels_unfold(t["query"], t["keys"], t["values"], s["radius"],  # noqa: E731
                                                       s["temperature"], topk, normalize, s["border"]), 1e-9, 1e-11)
    return tensors, scalars, call, oracle


@op("correlation", {"kernel_size": "int", "patch_size": "int", "stride": "int"})
def _(d):
    # Inputs of at least 6 x 6: the widest kernel (3, dilation 2) and patch (3, dilation 2) fit.
    b, c, h, w = d.int(1, 2), d.int(1, 5), d.int(6, 9), d.int(6, 9)
    tensors = {"input1": d.randn(b, c, h, w), "input2": d.randn(b, c, h, w)}
    scalars = {"kernel_size": d.choice([1, 3]), "patch_size": d.choice([1, 3]), "stride": d.int(1, 2)}
    geometry = dict(padding=d.int(0, 1), dilation=d.int(1, 2), dilation_patch=d.int(1, 2))
    call = lambda t, s: wsss_ext.correlation(t["input1"], t["input2"], s["kernel_size"], s["patch_size"],  # noqa: E731
                                             s["stride"], **geometry)
    oracle = lambda t, s: (ref.correlation_shift(t["input1"], t["input2"], s["kernel_size"], s["patch_size"],  # noqa: E731
                                                 s["stride"], **geometry), 1e-9, 1e-11)
    return tensors, scalars, call, oracle


try:
    import pydensecrf.densecrf as _dcrf

    _HAVE_PYDENSECRF = True
except ImportError:
    _HAVE_PYDENSECRF = False


def _pydensecrf(unary, image, n_iters):
    """pydensecrf's mean field with wsss_ext.dense_crf's default kernels, image by image."""
    batch, n_labels, height, width = unary.shape
    out = []
    for b in range(batch):
        crf = _dcrf.DenseCRF2D(width, height, n_labels)
        crf.setUnaryEnergy(np.ascontiguousarray(unary[b].float().numpy().reshape(n_labels, -1)))
        crf.addPairwiseGaussian(sxy=3.0, compat=3.0)
        crf.addPairwiseBilateral(sxy=80.0, srgb=13.0, rgbim=np.ascontiguousarray(image[b].permute(1, 2, 0).numpy()),
                                 compat=10.0)
        out.append(torch.from_numpy(np.asarray(crf.inference(n_iters))).reshape(n_labels, height, width))
    return torch.stack(out)


@op("dense_crf", {"n_iters": "int"})
def _(d):
    b, l, h, w = 1, d.int(2, 4), d.int(1, 10), d.int(1, 10)
    image = (d.rand(b, 3, 1, 1) * 255 + d.rand(b, 3, h, w) * 40).clamp(0, 255).to(torch.uint8)
    tensors = {"unary": wsss_ext.unary_from_probs(d.probs(b, l, h, w)).float(), "image": image}
    scalars = {"n_iters": d.int(0, 3)}
    call = lambda t, s: wsss_ext.dense_crf(t["unary"], t["image"], s["n_iters"])  # noqa: E731
    # The permutohedral lattice approximates the Gaussian filter: the oracle is pydensecrf (the same
    # lattice: equal to ~1e-3) where it installs, else the exact dense CRF on the mean error (up to
    # ~0.15 on these tiny flat maps; tests/test_dense_crf.py bounds it on photos).
    oracle = lambda t, s: ((_pydensecrf(t["unary"], t["image"], s["n_iters"]), 0.0, 2e-3) if _HAVE_PYDENSECRF  # noqa: E731
                           else (ref.dense_crf_dense(t["unary"], t["image"], s["n_iters"]), "mean", 0.2))
    return tensors, scalars, call, oracle


@op("fickle_conv2d", {"p": "real", "n_samples": "int"})
def _(d):
    x, weight = d.randn(d.int(1, 2), d.int(1, 3), d.int(1, 6), d.int(1, 6)), d.randn(d.int(1, 3), 1, 3, 3)
    weight = weight.expand(-1, x.shape[1], -1, -1).contiguous()
    tensors, scalars = {"x": x, "weight": weight}, {"p": 0.0, "n_samples": d.int(1, 3)}
    # p = 0 drops nothing: n_samples copies of the ordinary convolution.
    call = lambda t, s: wsss_ext.fickle_conv2d(t["x"], t["weight"], None, s["p"], seed=d.int(0, 99),  # noqa: E731
                                               n_samples=s["n_samples"])
    oracle = lambda t, s: (F.conv2d(t["x"], t["weight"], padding=1).repeat(s["n_samples"], 1, 1, 1),  # noqa: E731
                           1e-6, 1e-6)
    return tensors, scalars, call, oracle


@op("expanded_dropout", {"kernel_size": "int"})
def _(d):
    tensors, scalars = {"x": d.randn(d.int(1, 2), d.int(1, 3), d.int(1, 6), d.int(1, 6))}, {"kernel_size": d.choice([1, 3, 5])}
    return (tensors, scalars, lambda t, s: wsss_ext.expanded_dropout(t["x"], s["kernel_size"], 0.0, seed=1),
            lambda t, s: (ref.expand_windows(t["x"], s["kernel_size"]), 0.0, 0.0))


@op("unary_from_probs", {"clip": "real"})
def _(d):
    tensors, scalars = {"probs": d.probs(d.int(1, 2), d.int(1, 4), d.int(1, 5), d.int(1, 5))}, {"clip": d.real(1e-300, 0.5, log=True)}
    return (tensors, scalars, lambda t, s: wsss_ext.unary_from_probs(t["probs"], s["clip"]),
            lambda t, s: (torch.minimum(-torch.log(t["probs"]), torch.tensor(-math.log(s["clip"]), dtype=torch.float64)),
                          1e-12, 1e-12))


@op("cam_background", {"alpha": "real"})
def _(d):
    tensors, scalars = {"cams": d.rand(d.int(1, 2), d.int(1, 4), d.int(1, 5), d.int(1, 5))}, {"alpha": d.real(0.5, 16.0)}
    return (tensors, scalars, lambda t, s: wsss_ext.cam_background(t["cams"], s["alpha"]),
            lambda t, s: (torch.cat([(1 - t["cams"].amax(1, keepdim=True)) ** s["alpha"], t["cams"]], 1), 1e-12, 1e-12))


@op("boundary_affinity", {"radius": "int"})
def _(d):
    tensors, scalars = {"boundary": d.rand(d.int(1, 2), 1, d.int(1, 7), d.int(1, 7))}, {"radius": d.int(1, 3)}

    def symmetric(t, s):  # a_pq = a_qp: the affinity matrix equals its transpose
        matrix = ref.dense_affinity_matrix(wsss_ext.boundary_affinity(t["boundary"], s["radius"]))
        return matrix

    def transposed(t, s):
        matrix = ref.dense_affinity_matrix(wsss_ext.boundary_affinity(t["boundary"], s["radius"]))
        return matrix.transpose(1, 2), 0.0, 0.0

    return tensors, scalars, symmetric, transposed


@op("irnet_random_walk", {"beta": "real", "n_steps": "int"})
def _(d):
    b, h, w = 1, d.int(1, 6), d.int(1, 6)
    tensors = {"cams": d.rand(b, d.int(1, 3), h, w), "boundary": d.rand(b, 1, h, w)}
    scalars = {"beta": d.real(1.0, 10.0), "n_steps": d.int(1, 4)}
    call = lambda t, s: wsss_ext.irnet_random_walk(t["cams"], t["boundary"], s["beta"], s["n_steps"], 2)  # noqa: E731
    oracle = lambda t, s: (ref.random_walk_dense(t["cams"] * (1 - t["boundary"]),  # noqa: E731
                                                 wsss_ext.boundary_affinity(t["boundary"], 2), s["beta"],
                                                 s["n_steps"]), 1e-9, 1e-11)
    return tensors, scalars, call, oracle


# --- spoiling one argument ----------------------------------------------------------------------------------


def _spoilers(value: torch.Tensor):
    """(kind, spoiled tensor) for one tensor argument."""
    yield "rank", value.unsqueeze(0)
    yield "dtype", (value * 0).to(torch.int64) if value.is_floating_point() else value.double()
    yield "bool", value.bool()
    yield "device", value.to("meta")
    yield "sparse", value.to_sparse()
    yield "type", value.tolist()
    if value.is_floating_point() and value.numel():
        spoiled = value.clone()
        spoiled.view(-1)[spoiled.numel() // 2] = float("nan")
        yield "nan", spoiled
        spoiled = value.clone()
        spoiled.view(-1)[0] = float("inf")
        yield "inf", spoiled
    if value.dim() >= 2 and value.shape[-1] > 1:
        yield "shape", value[..., :-1]


_BAD_SCALARS = {"int": [("str", "a"), ("huge", 2**70), ("float", 1.5)], "real": [("str", "a"), ("nan", float("nan")),
                                                                                 ("inf", float("inf"))],
                "str": [("unknown", "bogus"), ("int", 3)]}


_SHAPE_FREE = {("fickle_conv2d", "x")}  # any W: the weight does not constrain it


def _oracle_case(name, seed):
    def run():
        tensors, scalars, call, oracle = OPS[name](Draw(seed))
        expected, rtol, atol = oracle(tensors, scalars)
        return _compare(call(tensors, scalars), expected, rtol, atol)

    return run


def _bad_tensor_case(name, seed, arg, kind):
    def run():
        tensors, scalars, call, _ = OPS[name](Draw(seed))
        spoiled = dict(_spoilers(tensors[arg]))[kind]
        names = tuple(tensors) if kind == "shape" else (arg,)  # a mismatch may be told from either side
        return _expect_error(lambda: call(dict(tensors, **{arg: spoiled}), scalars), names)

    return run


def _empty_case(name, seed, arg, dim):
    """One dimension of one input set to 0: a defined (empty or finite) result,
    or a TypeError / ValueError naming an input; nothing from deep inside."""

    def run():
        tensors, scalars, call, _ = OPS[name](Draw(seed))
        spoiled = tensors[arg].narrow(dim, 0, 0)
        try:
            out = call(dict(tensors, **{arg: spoiled}), scalars)
        except (TypeError, ValueError) as error:
            named = any(n in str(error) for n in tensors)
            return (OK, "") if named else ("unnamed", f"{type(error).__name__}: {str(error)[:200]}")
        except Exception as error:  # noqa: BLE001
            return "wrong_error", f"{type(error).__name__}: {str(error)[:200]}"
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
            return NAN, "non-finite values in the result of an empty input"
        return OK, ""

    return run


def _bad_scalar_case(name, seed, arg, value):
    def run():
        tensors, scalars, call, _ = OPS[name](Draw(seed))
        return _expect_error(lambda: call(tensors, dict(scalars, **{arg: value})), (arg,))

    return run


# --- module forms -------------------------------------------------------------------------------------------


def _module_case(seed):
    def run():
        d = Draw(seed)
        which = d.choice(["pamr", "dense_crf", "correlation"])
        if which == "pamr":
            image, mask = d.rand(1, 3, 6, 7), d.probs(1, 3, 6, 7)
            return _compare(PAMR(3, (1, 2))(image, mask), wsss_ext.pamr(image, mask, (1, 2), 3), 0.0, 0.0)
        if which == "dense_crf":
            unary = wsss_ext.unary_from_probs(d.probs(1, 3, 6, 7)).float()
            image = (d.rand(1, 3, 6, 7) * 255).to(torch.uint8)
            crf = DenseCRF.preset(d.choice(["affinitynet", "irnet", "recurseed"]), scale=d.real(1.0, 4.0), n_iters=3)
            expected = wsss_ext.dense_crf(unary, image, 3, gaussian_sxy=crf.gaussian_sxy,
                                          gaussian_weight=crf.gaussian_weight, bilateral_sxy=crf.bilateral_sxy,
                                          bilateral_srgb=crf.bilateral_srgb, bilateral_weight=crf.bilateral_weight)
            return _compare(crf(unary, image), expected, 0.0, 0.0)
        a, b = d.randn(1, 3, 6, 7), d.randn(1, 3, 6, 7)
        return _compare(Correlation(patch_size=3)(a, b), ref.correlation_shift(a, b, patch_size=3), 1e-9, 1e-11)

    return run


def _bad_module_case(index):
    cases = [
        (lambda: PAMR(n_iters="a"), ("n_iters",)), (lambda: PAMR(dilations=3), ("dilations",)),
        (lambda: PAMR(sigma=-1.0), ("sigma",)), (lambda: DenseCRF(n_iters=2**70), ("n_iters",)),
        (lambda: DenseCRF(bilateral_srgb="x"), ("bilateral_srgb",)),
        (lambda: DenseCRF.preset("irnet", scale="a"), ("scale",)), (lambda: DenseCRF.preset(3), ("name",)),
        (lambda: Correlation(stride="a")(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)), ("stride",)),
    ]
    call, names = cases[index % len(cases)]
    return lambda: _expect_error(call, names)


# --- the compiled kernels on numpy arrays -------------------------------------------------------------------


class _NullArray:
    def __init__(self, like):
        self.__array_interface__ = dict(like.__array_interface__, data=(0, False))


def _lowlevel_kernels(d: Draw):
    """name -> (kernel, kwargs of numpy arrays, check(kwargs) -> expected output name and value)."""
    f32 = lambda *shape: d.rng.random(shape, dtype=np.float32)  # noqa: E731
    b, c, h, w = d.int(1, 2), d.int(1, 3), d.int(1, 6), d.int(1, 6)
    offsets = np.array([[dy, dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.int32)
    weights = f32(b, 9, h, w)
    x = f32(b, c, h, w)

    def walk_expected():
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        return sum(weights[:, t : t + 1] * padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
                   for t, (dy, dx) in enumerate(offsets))

    affinity, beta = f32(b, 9, h, w), d.choice([0.0, 1.0, 2.5, 8.0])

    def walk_weights_expected():
        rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
        inside = np.stack([(rows + dy >= 0) & (rows + dy < h) & (cols + dx >= 0) & (cols + dx < w)
                           for dy, dx in offsets])  # [9, h, w]
        powered = np.where(inside, affinity.astype(np.float64) ** beta, 0.0)
        total = powered.sum(1, keepdims=True)
        weights = powered / np.where(total == 0, 1.0, total)
        weights[:, 4:5] += total == 0  # an isolated pixel keeps its value
        return weights

    n, k = d.int(1, 30), d.int(1, 8)
    scores = f32(n, k)
    in1, in2 = f32(b, h, w, c), f32(b, h, w, c)
    return {
        "random_walk_step": (lowlevel.random_walk_step,
                             dict(weights=weights, offsets=offsets, x=x, y=np.empty_like(x), transpose=False, halo=1),
                             lambda: ("y", walk_expected())),
        "random_walk_weights": (lowlevel.random_walk_weights,
                                dict(affinity=affinity, offsets=offsets, weights=np.empty_like(affinity), beta=beta),
                                lambda: ("weights", walk_weights_expected())),
        "sinkhorn_codes": (lowlevel.sinkhorn_codes,
                           dict(scores=scores, f=np.zeros(k, np.float32), codes=np.empty_like(scores), inv_eps=2.0),
                           lambda: ("codes", torch.softmax(torch.from_numpy(scores) * 2.0, 1).numpy())),
        "sinkhorn_solve": (lowlevel.sinkhorn_solve,
                           dict(scores=scores, codes=np.empty_like(scores), n_iters=3, inv_eps=2.0,
                                workspace=np.empty(lowlevel.sinkhorn_solve_workspace(n, k), np.float32)),
                           lambda: ("codes", ref.sinkhorn_swav(torch.from_numpy(scores), 0.5, 3).numpy())),
        "correlation_forward": (lowlevel.correlation_forward,
                                dict(in1=in1, in2=in2, out=np.empty((b, 1, 1, h, w), np.float32),
                                     sizes=((1, 1), (1, 1), (1, 1), (0, 0), (1, 1), (1, 1))),
                                lambda: ("out", (in1 * in2).sum(-1)[:, None, None])),
    }


def _lowlevel_case(seed, spoil):
    def run():
        d = Draw(seed)
        kernels = _lowlevel_kernels(d)
        name = d.choice(sorted(kernels))
        kernel, kwargs, expected = kernels[name]
        arrays = [key for key, value in kwargs.items() if isinstance(value, np.ndarray)]
        if spoil is None:
            kernel(**kwargs)
            out_name, value = expected()
            return _compare(torch.from_numpy(kwargs[out_name]), torch.from_numpy(np.asarray(value)), 1e-5, 1e-5)
        arg = d.choice(arrays)
        out_name = expected()[0]
        if spoil == "null":
            kwargs[arg] = _NullArray(kwargs[arg])
        elif spoil == "dtype":
            kwargs[arg] = kwargs[arg].astype(np.float64 if kwargs[arg].dtype != np.float64 else np.float32)
            # A dtype is checked against the kernel's main input: either may be named.
            return _expect_error(lambda: kernel(**kwargs), tuple(arrays))
        elif spoil == "rank":
            kwargs[arg] = kwargs[arg][None]
        elif spoil == "alias":
            arg = d.choice([a for a in arrays if a != out_name and kwargs[a].shape == kwargs[out_name].shape] or
                           [out_name])
            if arg == out_name:
                return OK, "no input of the output's shape"
            kwargs[out_name] = kwargs[arg]
            return _expect_error(lambda: kernel(**kwargs), (out_name,))
        elif spoil == "readonly":
            arg = out_name
            kwargs[arg].setflags(write=False)
        elif spoil == "scalar":
            scalars = [key for key, value in kwargs.items() if not isinstance(value, np.ndarray)]
            arg = d.choice(scalars)
            kwargs[arg] = d.choice(["a", None, [1]])
        return _expect_error(lambda: kernel(**kwargs), (arg,))

    return run


# --- the whole list ------------------------------------------------------------------------------------------


def make_cases(seed: int = 0, per_op: int = 30) -> list[Case]:
    """Every case, in a fixed order. ``per_op`` oracle draws per op; every bad
    kind of every argument of every op once (on a fresh valid draw each)."""
    cases: list[Case] = []
    rng = np.random.default_rng(seed)
    draw_seed = lambda: int(rng.integers(2**31))  # noqa: E731
    for name in sorted(OPS):
        for i in range(per_op):
            cases.append(Case(f"oracle/{name}/{i}", f"oracle:{name}", _oracle_case(name, draw_seed())))
    for name in sorted(OPS):
        probe_seed = draw_seed()
        tensors, scalars, _, _ = OPS[name](Draw(probe_seed))
        for arg, value in tensors.items():
            for kind, _ in _spoilers(value):
                if kind == "shape" and (len(tensors) == 1 or (name, arg) in _SHAPE_FREE):
                    continue  # a narrower input that no other input constrains is just another valid input
                cases.append(Case(f"bad/{name}/{arg}/{kind}", f"bad:{kind}",
                                  _bad_tensor_case(name, probe_seed, arg, kind)))
        for arg, value in tensors.items():
            for dim in range(value.dim()):
                cases.append(Case(f"empty/{name}/{arg}/{dim}", "empty", _empty_case(name, probe_seed, arg, dim)))
        for arg, kind in SCALARS[name].items():
            for label, bad in _BAD_SCALARS[kind]:
                cases.append(Case(f"bad/{name}/{arg}/{label}", f"bad:scalar-{label}",
                                  _bad_scalar_case(name, probe_seed, arg, bad)))
    for i in range(per_op):
        cases.append(Case(f"module/{i}", "module", _module_case(draw_seed())))
    for i in range(8):
        cases.append(Case(f"module-bad/{i}", "module:bad", _bad_module_case(i)))
    for spoil in (None, "null", "dtype", "rank", "alias", "readonly", "scalar"):
        for i in range(per_op // 2):
            cases.append(Case(f"lowlevel/{spoil or 'valid'}/{i}", f"lowlevel:{spoil or 'valid'}",
                              _lowlevel_case(draw_seed(), spoil)))
    return cases
