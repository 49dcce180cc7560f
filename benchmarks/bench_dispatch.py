"""Per-call overhead of the public ops, and a compiled training step.

Cases:

- ``overhead/<op>``: one call of the op on a tiny input (where the kernel
  itself costs microseconds and the Python around it is most of the time),
  timed over a loop of calls. ``ours`` is the default path: plain eager calls
  run the custom op's implementation directly. The reference ``dispatcher`` is
  the same call through the registered custom op (``torch.library``
  dispatcher, autograd wrapper), which every call took before; ``checks_off``
  is ours with ``wsss_ext.set_check_finite("off")`` (no pass over the inputs
  for NaN / inf). For Sinkhorn, SwAV's three-line recipe is a reference too.
- ``train_step/ssss``: an SSSS-style step (a small conv backbone, PAMR
  pseudo-labels from the detached masks, cross-entropy, backward, SGD) eager
  against ``torch.compile(fullgraph=True)`` of the same step (backend from
  ``WSSS_BENCH_COMPILE_BACKEND``, default inductor; aot_eager with ``--quick``), after warm-up: the
  compilation time is reported apart (``compile_s``).

Ratios are reference / ours: above 1, ours is faster.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

import wsss_ext
from common import measure, ratios
from wsss_ext.ops import _checks

KERNEL = "dispatch"
CALLS_PER_SAMPLE = 50  # calls per timed sample, so that a sample is well above the timer's resolution


def _progress(case: str, what: str) -> None:
    print(f"  [{KERNEL}/{case}] {what}", flush=True)


def _loop(fn, calls: int):
    def run():
        for _ in range(calls):
            out = fn()
        return out

    return run


def _per_call(stats: dict, calls: int) -> dict:
    """Loop timings -> per-call timings (ms), peak memory as measured."""
    out = dict(stats)
    for key in ("median_ms", "min_ms"):
        out[key] = stats[key] / calls
    out["calls_per_sample"] = calls
    return out


def _dispatcher_path(fn):
    def run():
        _checks._FAST_PATH = False
        try:
            return fn()
        finally:
            _checks._FAST_PATH = True

    return run


def _checks_off(fn):
    def run():
        with wsss_ext.check_finite("off"):
            return fn()

    return run


def _swav_recipe(scores: torch.Tensor, epsilon: float = 0.05, n_iters: int = 3) -> torch.Tensor:
    q = torch.exp(scores / epsilon).T
    q /= q.sum()
    k, n = q.shape
    for _ in range(n_iters):
        q /= q.sum(1, keepdim=True)
        q /= k
        q /= q.sum(0, keepdim=True)
        q /= n
    return (q * n).T


def _tiny_cases(device: torch.device) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, **kw):
        return torch.rand(*shape, generator=g, **kw).to(device)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    scores = randn(64, 16)
    image, mask = rand(1, 3, 16, 16), torch.softmax(randn(1, 4, 16, 16), 1)
    x, affinity = rand(1, 4, 12, 12), rand(1, 9, 12, 12)
    f1, f2 = randn(1, 8, 12, 12), randn(1, 8, 12, 12)
    query, keys, values = randn(1, 8, 12, 12), randn(1, 2, 8, 12, 12), rand(1, 2, 3, 12, 12)
    features, weight = randn(1, 8, 8, 8), randn(4, 8, 3, 3)
    unary = wsss_ext.unary_from_probs(torch.softmax(randn(1, 3, 12, 12), 1))
    rgb = (rand(1, 3, 12, 12) * 255).to(torch.uint8)
    return {
        "sinkhorn_knopp": ((64, 16), lambda: wsss_ext.sinkhorn_knopp(scores), {"swav_recipe": lambda: _swav_recipe(scores)}),
        "pamr": ((1, 4, 16, 16), lambda: wsss_ext.pamr(image, mask, (1, 2), 2), {}),
        "pamr_affinity": ((1, 3, 16, 16), lambda: wsss_ext.pamr_affinity(image, (1, 2)), {}),
        "random_walk": ((1, 4, 12, 12), lambda: wsss_ext.random_walk(x, affinity, 8.0, 4), {}),
        "correlation": ((1, 8, 12, 12), lambda: wsss_ext.correlation(f1, f2, patch_size=3), {}),
        "propagate_labels": ((1, 2, 8, 12, 12), lambda: wsss_ext.propagate_labels(query, keys, values, radius=1), {}),
        "fickle_conv2d": ((1, 8, 8, 8), lambda: wsss_ext.fickle_conv2d(features, weight, seed=0), {}),
        "dense_crf": ((1, 3, 12, 12), lambda: wsss_ext.dense_crf(unary, rgb, 2), {}),
    }


def _overhead_records(device: torch.device, quick: bool) -> list[dict]:
    calls = CALLS_PER_SAMPLE // 5 if quick else CALLS_PER_SAMPLE
    records = []
    for name, (shape, fn, extra) in _tiny_cases(device).items():
        _progress(f"overhead/{name}", f"{calls} calls per sample")
        ours_loop, output = measure(_loop(fn, calls), device=device, warmup=2, repeat=7)
        ours = _per_call(ours_loop, calls)
        references = {}
        for ref_name, ref_fn in {"dispatcher": _dispatcher_path(fn), "checks_off": _checks_off(fn), **extra}.items():
            stats, ref_output = measure(_loop(ref_fn, calls), device=device, warmup=2, repeat=7)
            references[ref_name] = _per_call(stats, calls)
            if ref_name == "dispatcher":
                # Same kernels, same inputs: the two paths must agree (exactly, but for Sinkhorn,
                # whose one-call CPU solve updates the potentials in C++ rather than in torch, and
                # the walk, whose eager CPU weights come from one C++ pass rather than torch ops).
                outs = output if isinstance(output, tuple) else (output,)
                ref_outs = ref_output if isinstance(ref_output, tuple) else (ref_output,)
                atol = 1e-6 if name in ("sinkhorn_knopp", "random_walk") else 0.0
                assert all(torch.allclose(a, b, rtol=0, atol=atol) for a, b in zip(outs, ref_outs))
        records.append({
            "kernel": KERNEL,
            "case": f"overhead/{name}",
            "shape": list(shape),
            "params": {"calls_per_sample": calls, "unit": "ms per call"},
            "ours": ours,
            "references": references,
            "ratios": {ref_name: ratios(ours, stats) for ref_name, stats in references.items()},
        })
    return records


class _Backbone(torch.nn.Module):
    """A small fully convolutional segmentation net at stride 4 (SSSS-style head)."""

    def __init__(self, classes: int = 21, width: int = 32):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
        )
        self.head = torch.nn.Conv2d(width, classes, 1)

    def forward(self, image):
        return self.head(self.body(image))


def _ssss_loss(model, image):
    """Masks -> PAMR-refined pseudo-labels (no gradient) -> cross-entropy, as SSSS's self-supervision."""
    logits = model(image)
    masks = torch.softmax(logits, 1)
    small = wsss_ext.resize_image_to_mask(image, masks)
    refined = wsss_ext.pamr(small, masks.detach(), dilations=(1, 2, 4, 8, 12, 24), n_iters=10)
    pseudo = refined.argmax(1)
    return F.cross_entropy(logits, pseudo)


def _train_step_record(device: torch.device, quick: bool) -> dict:
    # A smoke run skips inductor's C++ compilation (minutes on 2 cores); the full run uses it.
    backend = os.environ.get("WSSS_BENCH_COMPILE_BACKEND", "aot_eager" if quick else "inductor")
    size = 64 if quick else 160
    batch = 2 if quick else 4
    torch.manual_seed(0)
    image = torch.rand(batch, 3, size, size, device=device)
    eager_model = _Backbone().to(device)
    compiled_model = _Backbone().to(device)
    compiled_model.load_state_dict(eager_model.state_dict())
    compiled_loss = torch.compile(_ssss_loss, backend=backend, fullgraph=True)

    def stepper(model, loss_fn):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, image)
            loss.backward()
            optimizer.step()
            return loss.detach()

        return step

    _progress("train_step/ssss", f"compiling ({backend})")
    start = time.perf_counter()
    first = compiled_loss(compiled_model, image)
    first.backward()
    compile_s = time.perf_counter() - start
    max_abs_diff = float((first.detach() - _ssss_loss(eager_model, image).detach()).abs())
    compiled_model.zero_grad(set_to_none=True)
    _progress("train_step/ssss", "timing eager and compiled steps")
    ours, _ = measure(stepper(compiled_model, compiled_loss), device=device, warmup=2, repeat=5)
    eager, _ = measure(stepper(eager_model, _ssss_loss), device=device, warmup=2, repeat=5)
    return {
        "kernel": KERNEL,
        "case": "train_step/ssss",
        "shape": [batch, 3, size, size],
        "params": {"backend": backend, "fullgraph": True, "compile_s": compile_s, "pamr_iters": 10,
                   "dilations": [1, 2, 4, 8, 12, 24]},
        "ours": ours,  # the compiled step
        "references": {"eager": eager},
        "ratios": {"eager": ratios(ours, eager)},
        "max_abs_diff": max_abs_diff,  # first step's loss, compiled vs eager
    }


def run(device: str, quick: bool) -> list[dict]:
    device = torch.device(device)
    return _overhead_records(device, quick) + [_train_step_record(device, quick)]


if __name__ == "__main__":
    import sys

    for record in run("cuda" if torch.cuda.is_available() else "cpu", "--quick" in sys.argv):
        times = {name: f"{stats['median_ms'] * 1e3:.1f} us" if "overhead" in record["case"] else
                 f"{stats['median_ms']:.1f} ms" for name, stats in [("ours", record["ours"]), *record["references"].items()]}
        print(record["case"], times)
