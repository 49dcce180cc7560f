"""Benchmark of :func:`wsss_ext.random_walk` against the dense method of
AffinityNet and IRNet (``wsss_ext.reference.random_walk_dense``: the (HW)^2
affinity matrix, ``T = A^beta`` column-normalised, squared 8 times, ``x @ T``),
on the same device and inputs, 256 steps, radius 5 (69 taps).

Cases:

- ``psa``: AffinityNet's 448 crop at stride 8, 56 x 56 nodes, 21 channels,
  beta 8, affinities from features (:func:`wsss_ext.feature_affinity`).
- ``irnet``: a 500 x 375 VOC image at stride 4, 94 x 125 nodes, 21 channels,
  beta 10, affinities from a boundary map (:func:`wsss_ext.boundary_affinity`).
- ``coco``: a 640 x 480 COCO image at stride 4, 120 x 160 nodes, 81 channels.

On the CPU the dense method runs only at the PSA size: beyond it the 8
squarings take ~26 TFLOP (irnet) and ~113 TFLOP (coco), hours on a few
cores; the record says so instead of a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import wsss_ext
from common import measure, ratios
from wsss_ext.reference import random_walk_dense

KERNEL = "random_walk"
N_STEPS = 256


def _inputs(channels: int, height: int, width: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    cams = torch.rand(1, channels, height, width, generator=generator)
    if kind == "feature":
        coarse = torch.randn(1, 64, max(2, height // 6), max(2, width // 6), generator=generator)
        features = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        affinity = wsss_ext.feature_affinity(features + 0.3 * torch.randn(features.shape, generator=generator))
    else:
        boundary = torch.rand(1, 1, height, width, generator=generator).pow(4)
        affinity = wsss_ext.boundary_affinity(boundary)
    return cams, affinity


def _dense_cost(nodes: int) -> str:
    flops = 8 * 2 * nodes**3
    return f"{nodes}^2 matrix ({nodes * nodes * 4 / 2**30:.2f} GiB fp32), {flops / 1e12:.0f} TFLOP for 8 squarings"


def _case(case: str, channels: int, height: int, width: int, kind: str, beta: float, device: torch.device,
          dense: bool) -> dict:
    print(f"  [{KERNEL}/{case} 1x{channels}x{height}x{width}]", flush=True)
    cams, affinity = (tensor.to(device) for tensor in _inputs(channels, height, width, kind))
    ours, walked = measure(lambda: wsss_ext.random_walk(cams, affinity, beta, N_STEPS), device=device)
    record = {
        "kernel": KERNEL,
        "case": case,
        "shape": [1, channels, height, width],
        "params": {"beta": beta, "n_steps": N_STEPS, "radius": 5, "affinity": kind},
        "ours": ours,
        "references": {},
        "ratios": {},
    }
    nodes = height * width
    if not dense:
        record["references"]["dense"] = {"skipped": f"not run on {device.type}: {_dense_cost(nodes)}"}
        print(f"    ours {ours['median_ms']:.1f} ms; dense skipped ({_dense_cost(nodes)})", flush=True)
        return record
    reference, expected = measure(lambda: random_walk_dense(cams, affinity, beta, N_STEPS), device=device, warmup=0,
                                  repeat=1)
    record["references"]["dense"] = reference
    record["ratios"]["dense"] = ratios(ours, reference)
    record["max_abs_diff"] = float((walked - expected).abs().max())
    record["relative_error"] = float((walked - expected).norm() / expected.norm())
    record["argmax_agreement"] = float((walked.argmax(1) == expected.argmax(1)).double().mean())
    print(
        f"    ours {ours['median_ms']:.1f} ms, dense {reference['median_ms']:.1f} ms, relative error "
        f"{record['relative_error']:.2e}, argmax agreement {record['argmax_agreement']:.5f}",
        flush=True,
    )
    return record


def run(device: str, quick: bool) -> list[dict]:
    """Run every case on ``device``; ``quick`` shrinks the maps (a smoke test,
    not results). Returns the case records."""
    device = torch.device(device)
    shrink = 4 if quick else 1
    on_gpu = device.type == "cuda"
    return [
        _case("psa", 21, 56 // shrink, 56 // shrink, "feature", 8.0, device, dense=True),
        _case("irnet", 21, 94 // shrink, 125 // shrink, "boundary", 10.0, device, dense=on_gpu or quick),
        _case("coco", 81, 120 // shrink, 160 // shrink, "boundary", 10.0, device, dense=on_gpu or quick),
    ]
