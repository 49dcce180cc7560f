"""Benchmark of :func:`wsss_ext.random_walk` against two peers, on the same
device and inputs, 256 steps, radius 5 (69 taps), in the same run:

- ``torch_sparse``: what a strong PyTorch user writes (:func:`sparse_walk`):
  the normalised transition matrix as a ``torch.sparse`` CSR matrix, built
  once, then 256 ``P @ X`` with the channels as the dense matrix's columns.
  Timed twice: the 256 products alone (``torch_sparse``, the matrix built
  outside the timed part) and with the matrix built from the affinities
  (``torch_sparse_with_build``), as our time includes the normalisation.
- ``dense``: the dense method of AffinityNet and IRNet
  (``wsss_ext.reference.random_walk_dense``: the (HW)^2 affinity matrix,
  ``T = A^beta`` column-normalised, squared 8 times, ``x @ T``).

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

import warnings

import torch
import torch.nn.functional as F

import wsss_ext
from common import measure, ratios
from wsss_ext.ops.random_walk import _transition_weights
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


def transition_csr(affinity: torch.Tensor, beta: float, radius: int = 5) -> torch.Tensor:
    """The walk's transition matrix for one image as CSR: ``P[p, q] = w_pt``
    for ``q = p + o_t`` inside the map, with wsss_ext's normalisation (the
    weights a user would compute the same way)."""
    weights = _transition_weights(affinity, radius, beta)[0]  # [T, H, W]
    taps, height, width = weights.shape
    offsets = wsss_ext.neighbour_offsets(radius).to(affinity.device)
    rows, cols = torch.meshgrid(torch.arange(height, device=affinity.device),
                                torch.arange(width, device=affinity.device), indexing="ij")
    source_y = rows.reshape(1, -1) + offsets[:, :1]
    source_x = cols.reshape(1, -1) + offsets[:, 1:]
    inside = (source_y >= 0) & (source_y < height) & (source_x >= 0) & (source_x < width)
    pixel = (rows * width + cols).reshape(1, -1).expand(taps, -1)
    indices = torch.stack([pixel[inside], (source_y * width + source_x)[inside]])
    nodes = height * width
    with warnings.catch_warnings():  # "sparse CSR support is in beta", "invariant checks are disabled"
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_coo_tensor(indices, weights.reshape(taps, -1)[inside], (nodes, nodes))
        return matrix.coalesce().to_sparse_csr()


def sparse_walk(matrix: torch.Tensor, cams: torch.Tensor, n_steps: int = N_STEPS) -> torch.Tensor:
    """``n_steps`` CSR mat-mats ``P @ X``, X the [H*W, C] channels of one image."""
    _, channels, height, width = cams.shape
    values = cams[0].reshape(channels, -1).t().contiguous()
    for _ in range(n_steps):
        values = matrix @ values
    return values.t().reshape(1, channels, height, width)


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
        "params": {"beta": beta, "n_steps": N_STEPS, "radius": 5, "affinity": kind,
                   "threads": torch.get_num_threads()},
        "ours": ours,
        "references": {},
        "ratios": {},
    }
    matrix = transition_csr(affinity, beta)
    sparse, sparse_walked = measure(lambda: sparse_walk(matrix, cams), device=device)
    with_build, _ = measure(lambda: sparse_walk(transition_csr(affinity, beta), cams), device=device, repeat=3)
    # Both float32 walks against the float64 one: 256 steps repeat each
    # weight's rounding, so two float32 walks whose weights were rounded
    # differently (torch ops here, one C++ pass in the op) part by ~1e-4
    # relative on IRNet's boundary maps, each as far from float64.
    exact = wsss_ext.random_walk(cams.double(), affinity.double(), beta, N_STEPS)
    scale = float(exact.abs().max())
    ours_error = float((walked.double() - exact).abs().max()) / scale
    sparse_error = float((sparse_walked.double() - exact).abs().max()) / scale
    sparse_diff = float((walked - sparse_walked).abs().max() / walked.abs().max())
    if not max(ours_error, sparse_error) <= 2e-3:
        raise AssertionError(f"float32 walks differ from the float64 walk by {ours_error:.2e} (wsss_ext) and "
                             f"{sparse_error:.2e} (torch.sparse), relative")
    for name, timing in (("torch_sparse", sparse), ("torch_sparse_with_build", with_build)):
        record["references"][name] = timing
        record["ratios"][name] = ratios(ours, timing)
    record["max_relative_diff_torch_sparse"] = sparse_diff
    record["max_relative_error_vs_float64"] = {"ours": ours_error, "torch_sparse": sparse_error}
    print(
        f"    ours {ours['median_ms']:.1f} ms, torch.sparse CSR {sparse['median_ms']:.1f} ms "
        f"({record['ratios']['torch_sparse']['time']:.2f}x; with the matrix build {with_build['median_ms']:.1f} ms, "
        f"{record['ratios']['torch_sparse_with_build']['time']:.2f}x), max relative diff {sparse_diff:.1e}",
        flush=True,
    )
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
