"""One small pass of every wsss_ext op on a device, forward and backward, for
``compute-sanitizer`` (memcheck, racecheck, synccheck) to watch.

The sizes are chosen to cross the kernels' tile and warp edges (odd sides,
partial blocks, 21 and 81 labels) while staying small enough that a
sanitizer, which slows kernels down 10-100x, finishes in seconds::

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/gpu_sanitize_pass.py --device cuda
    python benchmarks/gpu_sanitize_pass.py --device cpu      # the same calls on the CPU backend

Prints one line per op; exits non-zero if an op raises.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable

import torch

import wsss_ext


def _cases(device: str) -> dict[str, Callable[[], None]]:
    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=False, dtype=torch.float32):
        t = torch.rand(*shape, generator=g, dtype=dtype).to(device)
        return t.requires_grad_(grad)

    def randn(*shape, grad=False):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)

    def image(batch, height, width):
        return torch.randint(0, 256, (batch, 3, height, width), generator=g, dtype=torch.uint8).to(device)

    def dense_crf():
        for labels in (1, 2, 21, 81):
            unary = randn(2, labels, 19, 23)
            wsss_ext.dense_crf(unary, image(2, 19, 23), n_iters=3)

    def pamr():
        masks = rand(2, 21, 17, 29, grad=True)
        wsss_ext.pamr(rand(2, 3, 17, 29), masks, n_iters=3, dilations=(1, 2)).sum().backward()
        wsss_ext.pamr_affinity(rand(2, 3, 17, 29), dilations=(1, 2, 4))

    def random_walk():
        features = randn(2, 5, 13, 21, grad=True)
        affinity = wsss_ext.feature_affinity(features, 3)
        cams = rand(2, 21, 13, 21, grad=True)
        wsss_ext.random_walk(cams, affinity, beta=8, n_steps=5).sum().backward()
        wsss_ext.irnet_random_walk(rand(2, 4, 13, 21), rand(2, 1, 13, 21), radius=5, beta=10, n_steps=3)

    def fickle():
        x = randn(2, 33, 11, 13, grad=True)
        y = wsss_ext.expanded_dropout(x, p=0.5, kernel_size=3, seed=1)
        y.sum().backward()
        weight = randn(7, 33, 3, 3, grad=True)
        wsss_ext.fickle_conv2d(x.detach().requires_grad_(), weight, p=0.5, seed=2, n_samples=3).sum().backward()

    def sinkhorn():
        scores = randn(1031, 67)
        wsss_ext.sinkhorn_knopp(scores, epsilon=0.05, n_iters=3)
        wsss_ext.sinkhorn_knopp(scores, epsilon=0.05, tol=1e-3)
        wsss_ext.sinkhorn_knopp(scores.half(), epsilon=0.05, n_iters=3)

    def correlation():
        a, b = randn(2, 37, 15, 17, grad=True), randn(2, 37, 15, 17, grad=True)
        wsss_ext.correlation(a, b, patch_size=5, stride=1).sum().backward()
        wsss_ext.correlation(a, b, kernel_size=3, patch_size=7, stride=2, padding=1, dilation_patch=2).sum().backward()

    def propagation():
        query = randn(1, 33, 14, 19, grad=True)
        keys = randn(1, 3, 33, 14, 19, grad=True)
        values = torch.softmax(randn(1, 3, 5, 14, 19), dim=2).requires_grad_()
        wsss_ext.propagate_labels(query, keys, values, radius=4).sum().backward()
        wsss_ext.propagate_labels(query, keys, values, radius=4, temperature=0.07, topk=10,
                                  normalize=True).sum().backward()

    return {"dense_crf": dense_crf, "pamr": pamr, "random_walk": random_walk, "fickle": fickle,
            "sinkhorn": sinkhorn, "correlation": correlation, "propagation": propagation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "gpu_sanitize_pass.py: torch sees no CUDA GPU\n")
    failures = 0
    for name, case in _cases(args.device).items():
        try:
            case()
            if args.device == "cuda":
                torch.cuda.synchronize()
            print(f"ok    {name}", flush=True)
        except Exception:  # report every op, then fail
            failures += 1
            print(f"FAIL  {name}\n{traceback.format_exc()}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
