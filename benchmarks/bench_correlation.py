"""Benchmark of :func:`wsss_ext.correlation` against a plain-PyTorch
implementation (``wsss_ext.reference.correlation_shift``: per displacement, the
channel sum of input1 times the displaced input2, then a ones-kernel conv) and
spatial-correlation-sampler where it installs (it does not build on a
CPU-only torch), forward and forward + backward, same device and inputs.

Cases, spatial-correlation-sampler's own README configurations:

- ``readme``: B 16, C 64, 100 x 100, kernel 3, patch 3, stride 2.
- ``flownetc``: B 4, C 256, 48 x 64, kernel 1, patch 21, dilation_patch 2.
"""

from __future__ import annotations

import torch

import wsss_ext
from common import measure, ratios
from wsss_ext.reference import correlation_shift

KERNEL = "correlation"


def _sampler():
    try:
        from spatial_correlation_sampler import spatial_correlation_sample
    except ImportError:
        return None
    return spatial_correlation_sample


def _forward_backward(fn, in1, in2, kwargs):
    in1.grad = in2.grad = None
    out = fn(in1, in2, **kwargs)
    out.backward(torch.ones_like(out))
    return out


def _case(case: str, shape: tuple[int, int, int, int], kwargs: dict, device: torch.device) -> list[dict]:
    print(f"  [{KERNEL}/{case} {'x'.join(map(str, shape))}]", flush=True)
    generator = torch.Generator().manual_seed(0)
    in1 = torch.randn(shape, generator=generator).to(device).requires_grad_()
    in2 = torch.randn(shape, generator=generator).to(device).requires_grad_()
    implementations = {"shift_reference": correlation_shift}
    sampler = _sampler()
    records = []
    for mode in ("forward", "forward_backward"):
        if mode == "forward":
            def run(fn):
                with torch.no_grad():
                    return fn(in1, in2, **kwargs)
        else:
            def run(fn):
                return _forward_backward(fn, in1, in2, kwargs)
        ours, out = measure(lambda: run(wsss_ext.correlation), device=device)
        record = {
            "kernel": KERNEL,
            "case": f"{case}_{mode}",
            "shape": list(shape),
            "params": dict(kwargs),
            "ours": ours,
            "references": {},
            "ratios": {},
        }
        for name, fn in implementations.items():
            reference, expected = measure(lambda: run(fn), device=device, warmup=1, repeat=3)
            record["references"][name] = reference
            record["ratios"][name] = ratios(ours, reference)
            record["max_abs_diff"] = float((out.detach() - expected.detach()).abs().max())
        if sampler is None:
            record["references"]["spatial_correlation_sampler"] = {
                "skipped": "spatial-correlation-sampler is not installed (it does not build on a CPU-only torch)"
            }
        else:
            reference, _ = measure(lambda: run(sampler), device=device, warmup=1, repeat=3)
            record["references"]["spatial_correlation_sampler"] = reference
            record["ratios"]["spatial_correlation_sampler"] = ratios(ours, reference)
        records.append(record)
        print(f"    {mode}: ours {ours['median_ms']:.1f} ms, shift reference "
              f"{record['references']['shift_reference']['median_ms']:.1f} ms", flush=True)
    forward_ms, both_ms = records[0]["ours"]["median_ms"], records[1]["ours"]["median_ms"]
    records[1]["backward_over_forward"] = (both_ms - forward_ms) / forward_ms
    print(f"    ours: backward / forward = {records[1]['backward_over_forward']:.2f}", flush=True)
    return records


def run(device: str, quick: bool) -> list[dict]:
    """Run every case on ``device``; ``quick`` shrinks batches and maps (a
    smoke test, not results). Returns the case records."""
    device = torch.device(device)
    shrink = 4 if quick else 1
    return [
        *_case("readme", (16 // shrink, 64, 100 // shrink, 100 // shrink),
               dict(kernel_size=3, patch_size=3, stride=2), device),
        *_case("flownetc", (4 // shrink, 256, 48, 64), dict(kernel_size=1, patch_size=21, dilation_patch=2), device),
    ]
