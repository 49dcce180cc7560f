"""Benchmark of :func:`wsss_ext.dense_crf` against pydensecrf, the library
WSSS code calls today (single-threaded, one image per call, CPU only).

Cases, at the shapes the methods run the CRF:

- ``voc``: one 375 x 500 image, 21 labels, 10 iterations, AffinityNet's
  parameters (gaussian 3, 3; bilateral 80, 13, 10): a pseudo-mask of VOC.
- ``batch512``: 16 images of 512 x 512, the same settings: a batch of crops.
- ``sec_loss``: 32 maps of 41 x 41, 21 labels, AffinityNet's parameters with
  both sxy divided by 12: the shape of SEC/DSRG's constrain-to-boundary loss.

Images are scikit-image's photographs, resized and cropped; unaries come from
CAM-like probabilities (coarse random logits upsampled, plus pixel noise).
pydensecrf runs image by image on the CPU (a GPU run compares against it
too: it is what users replace); for ``sec_loss`` also in a pool of as many
processes as wsss_ext has threads (``pydensecrf_pool``, what WSSS code does
to use more cores; the pool is started and warmed up before the timing).
Agreement with pydensecrf is reported as the fraction of pixels with the
same argmax and the largest |Q difference|. ``ns_per_pixel_label`` is the
cost of one mean-field iteration, (t(10 iterations) - t(1)) / 9 per pixel
and label, for both: the distance to memory bandwidth.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import torch
import torch.nn.functional as F

import wsss_ext
from common import measure, ratios

KERNEL = "dense_crf"
N_LABELS = 21
N_ITERS = 10
AFFINITYNET = dict(
    gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_weight=10.0
)
SEC_SCALE = 12.0
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def photos(batch: int, height: int, width: int) -> torch.Tensor:
    """``batch`` uint8 RGB images ``[B, 3, H, W]`` from scikit-image's photos,
    resized so the shorter side fits, centre-cropped, cycling through PHOTOS."""
    import skimage.data

    images = []
    for index in range(batch):
        photo = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()
        photo = torch.from_numpy(np.ascontiguousarray(photo[..., :3])).permute(2, 0, 1)[None].float()
        scale = max(height / photo.shape[2], width / photo.shape[3])
        size = (max(height, round(photo.shape[2] * scale)), max(width, round(photo.shape[3] * scale)))
        photo = F.interpolate(photo, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (size[0] - height) // 2, (size[1] - width) // 2
        images.append(photo[0, :, top : top + height, left : left + width])
    return torch.stack(images).round().clamp(0, 255).to(torch.uint8)


def cam_like_unary(batch: int, n_labels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Energies of blurry, noisy class maps, as CAMs are: coarse logits upsampled plus pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, n_labels, max(1, height // 32), max(1, width // 32), generator=generator) * 3
    logits = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    logits += torch.randn(batch, n_labels, height, width, generator=generator)
    return wsss_ext.unary_from_probs(torch.softmax(logits, dim=1))


def _pydensecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        return None
    return dcrf


def pydensecrf_batch(dcrf, unary: np.ndarray, images_hwc: np.ndarray, n_iters: int, params: dict) -> np.ndarray:
    """pydensecrf, image by image, as WSSS code calls it."""
    batch, n_labels, height, width = unary.shape
    out = np.empty_like(unary)
    for b in range(batch):
        crf = dcrf.DenseCRF2D(width, height, n_labels)
        crf.setUnaryEnergy(unary[b].reshape(n_labels, -1))
        crf.addPairwiseGaussian(sxy=params["gaussian_sxy"], compat=params["gaussian_weight"])
        crf.addPairwiseBilateral(
            sxy=params["bilateral_sxy"],
            srgb=params["bilateral_srgb"],
            rgbim=images_hwc[b],
            compat=params["bilateral_weight"],
        )
        out[b] = np.asarray(crf.inference(n_iters)).reshape(n_labels, height, width)
    return out


def _pydensecrf_image(task: tuple) -> np.ndarray:
    """One image with pydensecrf, in a pool worker: (unary [L, H, W], image [H, W, 3], n_iters, params)."""
    unary, image_hwc, n_iters, params = task
    return pydensecrf_batch(_pydensecrf(), unary[None], image_hwc[None], n_iters, params)[0]


def _pydensecrf_pool(pool, unary: np.ndarray, images_hwc: np.ndarray, n_iters: int, params: dict) -> np.ndarray:
    """pydensecrf over a process pool, image by image."""
    import bench_dense_crf  # by import name: run.py loads this file under another module object

    tasks = [(unary[b], images_hwc[b], n_iters, params) for b in range(unary.shape[0])]
    return np.stack(pool.map(bench_dense_crf._pydensecrf_image, tasks, chunksize=max(1, len(tasks) // (4 * pool._processes))))


def _ns_per_pixel_label(run, batch: int, height: int, width: int, device, repeats: dict) -> float:
    """One mean-field iteration's cost: (t(N_ITERS) - t(1)) / (N_ITERS - 1) per pixel and label."""
    from common import time_call

    ms = {n: time_call(lambda n=n: run(n), device=device, **repeats)["median_ms"] for n in (1, N_ITERS)}
    return (ms[N_ITERS] - ms[1]) / (N_ITERS - 1) * 1e6 / (batch * height * width * N_LABELS)


def _case(case: str, batch: int, height: int, width: int, params: dict, device: torch.device, long: bool,
          pool: bool = False) -> dict:
    print(f"  [{KERNEL}/{case} {batch}x{N_LABELS}x{height}x{width}]", flush=True)
    images = photos(batch, height, width)
    unary = cam_like_unary(batch, N_LABELS, height, width)
    unary_dev, images_dev = unary.to(device), images.to(device)
    repeats = dict(warmup=0, repeat=1) if long else {}
    ours, q = measure(lambda: wsss_ext.dense_crf(unary_dev, images_dev, N_ITERS, **params), device=device, **repeats)
    ours["threads"] = torch.get_num_threads() if device.type == "cpu" else None
    record = {
        "kernel": KERNEL,
        "case": case,
        "shape": [batch, N_LABELS, height, width],
        "params": {**params, "n_iters": N_ITERS},
        "ours": ours,
        "references": {},
        "ratios": {},
    }
    dcrf = _pydensecrf()
    if dcrf is None:
        record["references"]["pydensecrf"] = {"skipped": "pydensecrf2 is not installed"}
        return record
    unary_np = np.ascontiguousarray(unary.numpy())
    images_hwc = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
    ref, ref_q = measure(lambda: pydensecrf_batch(dcrf, unary_np, images_hwc, N_ITERS, params), device="cpu", **repeats)
    ref["device"] = "cpu, 1 thread"
    record["references"]["pydensecrf"] = ref
    record["ratios"]["pydensecrf"] = ratios(ours, ref)
    q = q.cpu().numpy()
    record["max_abs_diff"] = float(np.abs(q - ref_q).max())
    record["argmax_agreement"] = float((q.argmax(1) == ref_q.argmax(1)).mean())
    line = (f"    ours {ours['median_ms']:.1f} ms, pydensecrf {ref['median_ms']:.1f} ms "
            f"({ref['median_ms'] / ours['median_ms']:.2f}x)")
    if pool and device.type == "cpu" and torch.get_num_threads() > 1:
        processes = torch.get_num_threads()
        with multiprocessing.get_context("spawn").Pool(processes) as workers:
            run_pool = lambda: _pydensecrf_pool(workers, unary_np, images_hwc, N_ITERS, params)  # noqa: E731
            pooled, pooled_q = measure(run_pool, device="cpu", **repeats)
        pooled["device"] = f"cpu, {processes} processes"
        record["references"]["pydensecrf_pool"] = pooled
        record["ratios"]["pydensecrf_pool"] = ratios(ours, pooled)
        line += f", pydensecrf in {processes} processes {pooled['median_ms']:.1f} ms"
    if not long:
        fewer = dict(warmup=1, repeat=3)
        record["ns_per_pixel_label"] = {
            "ours": _ns_per_pixel_label(lambda n: wsss_ext.dense_crf(unary_dev, images_dev, n, **params),
                                        batch, height, width, device, fewer),
            "pydensecrf": _ns_per_pixel_label(lambda n: pydensecrf_batch(dcrf, unary_np, images_hwc, n, params),
                                              batch, height, width, "cpu", fewer),
        }
        line += (f"; per iteration {record['ns_per_pixel_label']['ours']:.2f} vs "
                 f"{record['ns_per_pixel_label']['pydensecrf']:.2f} ns per pixel-label")
    print(line + f"; argmax agreement {record['argmax_agreement']:.5f}, max |dQ| {record['max_abs_diff']:.2e}",
          flush=True)
    return record


def run(device: str, quick: bool) -> list[dict]:
    """Run every case on ``device``; ``quick`` shrinks the images and batches
    (a smoke test, not results). Returns the case records."""
    device = torch.device(device)
    shrink = 4 if quick else 1
    sec = {**AFFINITYNET, "gaussian_sxy": 3.0 / SEC_SCALE, "bilateral_sxy": 80.0 / SEC_SCALE}
    return [
        _case("voc", 1, 375 // shrink, 500 // shrink, AFFINITYNET, device, long=False),
        _case("batch512", 16 // shrink, 512 // shrink, 512 // shrink, AFFINITYNET, device, long=not quick),
        _case("sec_loss", 32 // shrink, 41, 41, sec, device, long=False, pool=True),
    ]
