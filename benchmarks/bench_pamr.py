"""Benchmark of :func:`wsss_ext.pamr` against two plain-PyTorch peers, on the
same device, inputs and settings (dilations 1, 2, 4, 8, 12, 24; sigma 0.1;
10 iterations), in the same run:

- ``pamr_unfold``: the published method (``wsss_ext.reference.pamr_unfold``),
  every tap stacked into a ``B x C x 48 x H x W`` tensor on each iteration,
  as 1-stage-wseg does.
- ``inplace_loop``: what a careful PyTorch user writes instead
  (:func:`pamr_inplace_loop` below): the published affinities computed once,
  then each iteration pads the mask once and accumulates the 48 shifted
  slices into one buffer with ``addcmul_``, no stacked tensor. The strongest
  alternative we know; every ratio in the README is against it too.

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
from wsss_ext.reference import pamr_affinity_unfold, pamr_unfold

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


def _offsets(dilations) -> list[tuple[int, int]]:
    """The taps in wsss_ext's order: per dilation, the 3 x 3 cells row-major, centre skipped."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


@torch.no_grad()
def pamr_inplace_loop(image, mask, dilations=DILATIONS, n_iters=N_ITERS, sigma=SIGMA, weights=None):
    """PAMR as a strong PyTorch user writes it: affinities once (the
    published computation, unless ``weights`` [B, 48, H, W] are given), then
    per iteration one replicate pad and 48 in-place multiply-adds of shifted
    views into one buffer (no B x C x 48 x H x W tensor)."""
    if weights is None:
        weights = pamr_affinity_unfold(image, dilations, sigma)  # [B, 48, H, W]
    pad = max(dilations)
    height, width = mask.shape[-2:]
    offsets = _offsets(dilations)
    buffers = [torch.empty_like(mask), torch.empty_like(mask)]  # used in turn; the input is never written
    for step in range(n_iters):
        padded = F.pad(mask, (pad, pad, pad, pad), mode="replicate")
        out = buffers[step % 2]
        out.zero_()
        for k, (dy, dx) in enumerate(offsets):
            shifted = padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]
            out.addcmul_(weights[:, k : k + 1], shifted)
        mask = out
    return mask


def _case(case: str, batch: int, channels: int, height: int, width: int, device: torch.device) -> dict:
    print(f"  [{KERNEL}/{case} {batch}x{channels}x{height}x{width}]", flush=True)
    image, mask = (tensor.to(device) for tensor in _inputs(batch, channels, height, width))
    ours, refined = measure(lambda: wsss_ext.pamr(image, mask, DILATIONS, N_ITERS, SIGMA), device=device)
    loop, looped = measure(lambda: pamr_inplace_loop(image, mask), device=device, warmup=1, repeat=5)
    # The strongest reading: the loop alone, its affinities computed outside the timed part.
    given = pamr_affinity_unfold(image, DILATIONS, SIGMA)
    loop_only, _ = measure(lambda: pamr_inplace_loop(image, mask, weights=given), device=device, warmup=1, repeat=5)
    reference, expected = measure(lambda: pamr_unfold(image, mask, DILATIONS, N_ITERS, SIGMA), device=device,
                                  warmup=1, repeat=3)
    # The peer must compute what the op computes (the published method's own
    # float32 rounding differs from ours by about 1e-6).
    loop_diff = float((refined - looped).abs().max())
    if not loop_diff <= 1e-4:
        raise AssertionError(f"pamr_inplace_loop differs from wsss_ext.pamr by {loop_diff:.2e}")
    record = {
        "kernel": KERNEL,
        "case": case,
        "shape": [batch, channels, height, width],
        "params": {"dilations": list(DILATIONS), "n_iters": N_ITERS, "sigma": SIGMA,
                   "threads": torch.get_num_threads()},
        "ours": ours,
        "references": {"inplace_loop": loop, "inplace_loop_weights_given": loop_only, "pamr_unfold": reference},
        "ratios": {"inplace_loop": ratios(ours, loop), "inplace_loop_weights_given": ratios(ours, loop_only),
                   "pamr_unfold": ratios(ours, reference)},
        "max_abs_diff": float((refined - expected).abs().max()),
        "max_abs_diff_inplace_loop": loop_diff,
    }
    print(
        f"    ours {ours['median_ms']:.1f} ms, in-place loop {loop['median_ms']:.1f} ms "
        f"({record['ratios']['inplace_loop']['time']:.2f}x; the loop alone {loop_only['median_ms']:.1f} ms, "
        f"{record['ratios']['inplace_loop_weights_given']['time']:.2f}x), published {reference['median_ms']:.1f} ms "
        f"({record['ratios']['pamr_unfold']['time']:.2f}x); max |diff| {record['max_abs_diff']:.2e} "
        f"(loop {loop_diff:.2e})",
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
