"""Benchmark of :func:`wsss_ext.pamr` against the published method
(``wsss_ext.reference.pamr_unfold``: every tap stacked into a
``B x C x 48 x H x W`` tensor on each iteration, as 1-stage-wseg does), on the
same device, inputs and settings (dilations 1, 2, 4, 8, 12, 24; sigma 0.1;
10 iterations).

Cases:

- ``training``: 16 x 21 x 81 x 81, the stride-4 masks of 321 x 321 training
  crops, where single-stage WSSS runs PAMR every step.
- ``full_res``: 1 x 21 x 512 x 512, refinement at full resolution.

Images are smooth random fields with an edge and pixel noise (the timing does
not depend on content); masks are softmax probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import wsss_ext
from common import measure, ratios
from wsss_ext.reference import pamr_unfold

KERNEL = "pamr"
DILATIONS = (1, 2, 4, 8, 12, 24)
N_ITERS = 10
SIGMA = 0.1


def _inputs(batch: int, channels: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(batch, 3, max(2, height // 8), max(2, width // 8), generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    image[..., : width // 3] += 0.5
    image += 0.05 * torch.rand(batch, 3, height, width, generator=generator)
    mask = torch.softmax(3 * torch.randn(batch, channels, height, width, generator=generator), dim=1)
    return image, mask


def _case(case: str, batch: int, channels: int, height: int, width: int, device: torch.device) -> dict:
    print(f"  [{KERNEL}/{case} {batch}x{channels}x{height}x{width}]", flush=True)
    image, mask = (tensor.to(device) for tensor in _inputs(batch, channels, height, width))
    ours, refined = measure(lambda: wsss_ext.pamr(image, mask, DILATIONS, N_ITERS, SIGMA), device=device)
    reference, expected = measure(lambda: pamr_unfold(image, mask, DILATIONS, N_ITERS, SIGMA), device=device,
                                  warmup=1, repeat=3)
    record = {
        "kernel": KERNEL,
        "case": case,
        "shape": [batch, channels, height, width],
        "params": {"dilations": list(DILATIONS), "n_iters": N_ITERS, "sigma": SIGMA},
        "ours": ours,
        "references": {"pamr_unfold": reference},
        "ratios": {"pamr_unfold": ratios(ours, reference)},
        "max_abs_diff": float((refined - expected).abs().max()),
    }
    print(
        f"    ours {ours['median_ms']:.1f} ms, reference {reference['median_ms']:.1f} ms, "
        f"max |diff| {record['max_abs_diff']:.2e}",
        flush=True,
    )
    return record


def run(device: str, quick: bool) -> list[dict]:
    """Run every case on ``device``; ``quick`` shrinks batches and maps (a
    smoke test, not results). Returns the case records."""
    device = torch.device(device)
    shrink = 4 if quick else 1
    return [
        _case("training", 16 // shrink, 21, 81, 81, device),
        _case("full_res", 1, 21, 512 // shrink, 512 // shrink, device),
    ]
