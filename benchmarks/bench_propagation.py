"""Benchmark of :func:`wsss_ext.propagate_labels` against the unfold + softmax
method of MAST / CRW (``wsss_ext.reference.propagate_labels_unfold``, which
materialises the keys of every candidate and the B x R x window x H x W
affinities), same device and inputs, forward (test-time propagation).

Cases at MAST's test size (64 channels, a 120 x 214 feature map, radius 12:
625 taps per reference frame), 7 labels:

- ``mast``: 5 reference frames, one softmax over all 3125 candidates. The
  reference needs ~21 GiB for its unfolded keys alone: run on GPUs with room
  for it, skipped on the CPU.
- ``mast_1ref``: the same with 1 reference frame (the reference fits).
- ``crw_1ref``: CRW's variant, L2-normalised features, temperature 0.07,
  top-10 candidates, 1 reference frame.
"""

from __future__ import annotations

import torch

import wsss_ext
from common import measure, ratios
from wsss_ext.reference import propagate_labels_unfold

KERNEL = "propagation"
CHANNELS, HEIGHT, WIDTH, RADIUS, LABELS = 64, 120, 214, 12, 7


def _case(case: str, refs: int, kwargs: dict, device: torch.device, quick: bool) -> dict:
    height, width = (HEIGHT // 4, WIDTH // 4) if quick else (HEIGHT, WIDTH)
    print(f"  [{KERNEL}/{case} 1x{refs}x{CHANNELS}x{height}x{width}]", flush=True)
    generator = torch.Generator().manual_seed(0)
    query = (torch.randn(1, CHANNELS, height, width, generator=generator) / 4).to(device)
    keys = (torch.randn(1, refs, CHANNELS, height, width, generator=generator) / 4).to(device)
    values = torch.softmax(torch.randn(1, refs, LABELS, height, width, generator=generator) * 3, 2).to(device)
    ours, out = measure(lambda: wsss_ext.propagate_labels(query, keys, values, RADIUS, **kwargs), device=device)
    record = {
        "kernel": KERNEL,
        "case": case,
        "shape": [1, refs, CHANNELS, height, width],
        "params": {"radius": RADIUS, "labels": LABELS, **kwargs},
        "ours": ours,
        "references": {},
        "ratios": {},
    }
    unfolded_bytes = refs * CHANNELS * (2 * RADIUS + 1) ** 2 * height * width * 4
    if device.type == "cpu" and unfolded_bytes > 8 * 2**30:
        record["references"]["unfold_softmax"] = {
            "skipped": f"its unfolded keys alone need {unfolded_bytes / 2**30:.1f} GiB; not run on the CPU"
        }
        print(f"    ours {ours['median_ms']:.1f} ms; reference skipped", flush=True)
        return record
    reference, expected = measure(lambda: propagate_labels_unfold(query, keys, values, RADIUS, **kwargs),
                                  device=device, warmup=1, repeat=3)
    record["references"]["unfold_softmax"] = reference
    record["ratios"]["unfold_softmax"] = ratios(ours, reference)
    record["max_abs_diff"] = float((out - expected).abs().max())
    print(f"    ours {ours['median_ms']:.1f} ms, reference {reference['median_ms']:.1f} ms, "
          f"max |diff| {record['max_abs_diff']:.2e}", flush=True)
    return record


def run(device: str, quick: bool) -> list[dict]:
    """Run every case on ``device``; ``quick`` shrinks the maps (a smoke test,
    not results). Returns the case records."""
    device = torch.device(device)
    crw = dict(temperature=0.07, topk=10, normalize=True)
    return [
        _case("mast", 5, {}, device, quick),
        _case("mast_1ref", 1, {}, device, quick),
        _case("crw_1ref", 1, crw, device, quick),
    ]
