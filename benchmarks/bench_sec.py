"""Benchmark of SEC's training step (issue 13): the dense CRF inside the
constrain-to-boundary loss, which SEC and DSRG users find too slow, with
:func:`wsss_ext.dense_crf` against pydensecrf run image by image, as the
original repositories do (kolesman/SEC ``pylayers.py`` ``CRFLayer``: one
``DenseCRF2D`` per image of the batch, on the CPU).

Cases, on a batch of 16 as SEC trains (``train.prototxt``: 321 x 321 crops,
41 x 41 x 21 score maps):

- ``crf``: the CRF step alone, :func:`python_models.losses.crf_target` on
  CAM-like probabilities 16 x 21 x 41 x 41 and scikit-image photographs
  (321 x 321, downscaled to the map by ``map_image``), against the same
  step with pydensecrf in place of ``wsss_ext.dense_crf``: the same energies
  ``-log p``, the same uint8 images, SEC's settings (``SEC_CRF``: gaussian
  3/12 w 3, bilateral 80/12, 13, w 10, 10 iterations) and the same floor at
  ``min_prob``.
- ``step``: one whole training step of :class:`python_models.methods.sec.SEC`,
  ``losses(batch)`` (forward, seed + expand + constrain) and ``backward()``,
  with ``crf_target`` computed by wsss_ext, then by pydensecrf; each record
  gives the CRF's time inside the step and its share of the step. On the
  CPU the network is SEC's DeepLab-LargeFOV layout at width 8
  (``vgg_tiny``: same strides, 41 x 41 maps): the paper's VGG-16 takes
  about 3.5 minutes per step of 16 on 2 cores, so its share of the CRF
  would be noise. On CUDA it is the paper's VGG-16 LargeFOV, the network
  on the GPU and pydensecrf on the CPU, as users run it.

pydensecrf runs single-threaded on the CPU; wsss_ext on the benchmark device.
Agreement is the fraction of pixels with the same argmax and the largest
|Q difference| between the two targets.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench_dense_crf import _pydensecrf, photos, pydensecrf_batch
from common import measure, ratios

KERNEL = "sec"
N_LABELS = 21  # VOC: background + 20 classes
BATCH = 16
CROP = 321  # SEC's crops; DeepLab-LargeFOV maps them to 41 x 41


def cam_like_probs(batch: int, n_labels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Softmax probabilities of blurry, noisy score maps, as a segmentation
    network's early outputs are: coarse logits upsampled plus pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, n_labels, max(1, height // 8), max(1, width // 8), generator=generator) * 3
    logits = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    logits += torch.randn(batch, n_labels, height, width, generator=generator)
    return torch.softmax(logits, dim=1)


def pydensecrf_crf_target(dcrf, probs: torch.Tensor, images: torch.Tensor, labels=None, *, mask_absent: bool = False,
                          min_prob: float | None = None, **crf: float) -> torch.Tensor:
    """:func:`python_models.losses.crf_target` with pydensecrf, image by image,
    in place of ``wsss_ext.dense_crf``: what SEC's ``CRFLayer`` runs. Takes
    and returns tensors on the caller's device (pydensecrf itself on the CPU)."""
    from python_models.losses.sec import MIN_PROB, SEC_CRF, _log, map_image

    if mask_absent:
        raise NotImplementedError("SEC gives the CRF every class (mask_absent=False)")
    settings = {**SEC_CRF, **crf}
    n_iters = int(settings.pop("n_iters"))
    min_prob = MIN_PROB if min_prob is None else min_prob
    unary = np.ascontiguousarray((-_log(probs.detach().float())).cpu().numpy())
    rgb = map_image(images, probs.shape[-2:]).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    q = pydensecrf_batch(dcrf, unary, rgb, n_iters, settings)
    q = np.maximum(q, min_prob)
    q /= q.sum(1, keepdims=True)
    return torch.from_numpy(q).to(device=probs.device, dtype=probs.dtype)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _crf_case(device: torch.device, batch: int, crop: int, dcrf, quick: bool) -> dict:
    from python_models.losses.sec import SEC_CRF, crf_target
    from python_models.methods.sec import largefov_map_size

    side = largefov_map_size(crop)
    print(f"  [{KERNEL}/crf {batch}x{N_LABELS}x{side}x{side}]", flush=True)
    images = (photos(batch, crop, crop).float() / 255).to(device)
    probs = cam_like_probs(batch, N_LABELS, side, side).to(device)
    ours, q = measure(lambda: crf_target(probs, images), device=device)
    record = {
        "kernel": KERNEL,
        "case": "crf",
        "shape": [batch, N_LABELS, side, side],
        "params": {**SEC_CRF, "image_size": crop},
        "ours": ours,
        "references": {},
        "ratios": {},
    }
    if dcrf is None:
        record["references"]["pydensecrf"] = {"skipped": "pydensecrf2 is not installed"}
        return record
    ref, ref_q = measure(lambda: pydensecrf_crf_target(dcrf, probs, images), device=device)
    ref["device"] = "cpu, 1 thread"
    record["references"]["pydensecrf"] = ref
    record["ratios"]["pydensecrf"] = ratios(ours, ref)
    q, ref_q = q.cpu(), ref_q.cpu()
    record["max_abs_diff"] = float((q - ref_q).abs().max())
    record["argmax_agreement"] = float((q.argmax(1) == ref_q.argmax(1)).double().mean())
    print(
        f"    crf_target: wsss_ext {ours['median_ms']:.1f} ms, pydensecrf {ref['median_ms']:.1f} ms "
        f"({ref['median_ms'] / ours['median_ms']:.2f}x), argmax agreement {record['argmax_agreement']:.5f}, "
        f"max |dQ| {record['max_abs_diff']:.2e}",
        flush=True,
    )
    return record


@contextlib.contextmanager
def _timed_crf_target(device: torch.device, replacement=None):
    """Swaps ``crf_target`` in SEC's method module for a wrapper that times
    each call (and runs ``replacement`` instead, if given); yields the list
    of call times in ms. The module global is what ``SEC.losses`` calls."""
    import python_models.methods.sec as sec_module

    original = sec_module.crf_target
    inner = replacement or original
    times_ms: list[float] = []

    def timed(*args, **kwargs):
        _synchronize(device)
        start = time.perf_counter()
        result = inner(*args, **kwargs)
        _synchronize(device)
        times_ms.append((time.perf_counter() - start) * 1e3)
        return result

    sec_module.crf_target = timed
    try:
        yield times_ms
    finally:
        sec_module.crf_target = original


def _step_case(device: torch.device, batch: int, crop: int, dcrf, quick: bool) -> dict:
    from python_models.methods.sec import SEC, largefov_map_size, synthetic_seeds

    backbone = "vgg16_largefov" if device.type == "cuda" else SEC.TINY_BACKBONE
    side = largefov_map_size(crop)
    print(f"  [{KERNEL}/step {batch}x3x{crop}x{crop} -> {N_LABELS}x{side}x{side}, {backbone}]", flush=True)
    torch.manual_seed(0)
    model = SEC(backbone=backbone).to(device).train()
    example = model.example_batch(batch, crop, torch.Generator().manual_seed(0))
    batch_data = {
        "images": (photos(batch, crop, crop).float() / 255).to(device),
        "labels": example["labels"].to(device),
        "seeds": synthetic_seeds(example["masks"], (side, side)).to(device),
    }

    def step():
        model.zero_grad(set_to_none=True)
        losses = model.losses(batch_data)
        losses["loss"].backward()
        return {name: float(value.detach()) for name, value in losses.items()}

    repeats = dict(warmup=1, repeat=1) if quick else dict(warmup=1, repeat=3)
    calls = 1 + repeats["repeat"] + 1  # warmup, timed calls, the memory call
    with _timed_crf_target(device) as crf_ms:
        ours, ours_losses = measure(step, device=device, **repeats)
    ours["crf_median_ms"] = statistics.median(crf_ms[1:calls - 1])
    ours["crf_share"] = ours["crf_median_ms"] / ours["median_ms"]
    record = {
        "kernel": KERNEL,
        "case": "step",
        "shape": [batch, 3, crop, crop],
        "params": {"backbone": backbone, "map": [N_LABELS, side, side], **model.config.crf},
        "ours": ours,
        "references": {},
        "ratios": {},
        "losses": ours_losses,
    }
    line = (f"    step: {ours['median_ms']:.0f} ms with wsss_ext, of which the CRF {ours['crf_median_ms']:.1f} ms "
            f"({100 * ours['crf_share']:.1f}%)")
    if dcrf is None:
        record["references"]["pydensecrf"] = {"skipped": "pydensecrf2 is not installed"}
    else:
        def reference(*args, **kwargs):
            return pydensecrf_crf_target(dcrf, *args, **kwargs)

        with _timed_crf_target(device, reference) as ref_crf_ms:
            ref, ref_losses = measure(step, device=device, **repeats)
        ref["crf_median_ms"] = statistics.median(ref_crf_ms[1:calls - 1])
        ref["crf_share"] = ref["crf_median_ms"] / ref["median_ms"]
        ref["device"] = f"{device.type} network, pydensecrf on the cpu, 1 thread"
        record["references"]["pydensecrf"] = ref
        record["ratios"]["pydensecrf"] = ratios(ours, ref)
        record["ratios"]["pydensecrf"]["crf_time"] = ref["crf_median_ms"] / ours["crf_median_ms"]
        record["max_abs_diff"] = max(abs(ours_losses[name] - ref_losses[name]) for name in ours_losses)
        line += (f"; with pydensecrf {ref['median_ms']:.0f} ms, of which the CRF {ref['crf_median_ms']:.1f} ms "
                 f"({100 * ref['crf_share']:.1f}%); max |d loss| {record['max_abs_diff']:.1e}")
    print(line, flush=True)
    return record


def run(device: str, quick: bool) -> list[dict]:
    """Run both cases on ``device``; ``quick`` shrinks the batch and crops
    (a smoke test, not results). Returns the case records."""
    device = torch.device(device)
    batch, crop = (4, 161) if quick else (BATCH, CROP)
    dcrf = _pydensecrf()
    return [_crf_case(device, batch, crop, dcrf, quick), _step_case(device, batch, crop, dcrf, quick)]
