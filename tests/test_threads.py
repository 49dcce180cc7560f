"""Every CPU kernel gives the same bits on 1, 2 and 3 threads, forward and
backward.

The kernels hand their work out dynamically (whichever thread is free takes
the next block, so that a thread slowed by another process holds back only
the block it has), so which thread computes what changes from run to run:
the results must not. Each thread count runs in its own process
(OMP_NUM_THREADS, which torch.get_num_threads() and so the kernels follow);
the sizes are above every kernel's threshold for a parallel region, and PAMR
and the dense CRF run both of their ways to share the work (one image split
among the threads; whole images per thread). The dense CRF and Sinkhorn have
their own such tests in their files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROGRAM = r"""
import hashlib, json, torch, wsss_ext

g = torch.Generator().manual_seed(0)


def digest(*tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def leaf(*shape, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).requires_grad_()


def cotangent(t):
    return torch.randn(t.shape, generator=g)


out = {}
for batch in (1, 3):  # PAMR: one image shared by the threads; whole images per thread
    image = torch.rand(batch, 3, 40, 50, generator=g)
    logits = leaf(batch, 5, 40, 50, scale=3.0)
    refined = wsss_ext.pamr(image, torch.softmax(logits, 1), (1, 2, 4), 5, 0.1)
    refined.backward(cotangent(refined))
    out[f"pamr_{batch}"] = digest(refined, logits.grad)

cams = leaf(2, 21, 30, 40).abs()
cams.retain_grad()
boundary = torch.rand(2, 1, 30, 40, generator=g).pow(4).requires_grad_()
walked = wsss_ext.random_walk(cams, wsss_ext.boundary_affinity(boundary), 8.0, 20)
walked.backward(cotangent(walked))
out["random_walk"] = digest(walked, cams.grad, boundary.grad)

x, weight, bias = leaf(2, 16, 20, 20).relu(), leaf(6, 16, 3, 3, scale=0.1), leaf(6)
x.retain_grad()
y = wsss_ext.fickle_conv2d(x, weight, bias, p=0.9, seed=3, n_samples=2)
y.backward(cotangent(y))
out["fickle_conv2d"] = digest(y, x.grad, weight.grad, bias.grad)

in1, in2 = leaf(2, 16, 24, 32), leaf(2, 16, 24, 32)
corr = wsss_ext.correlation(in1, in2, kernel_size=1, patch_size=9)
corr.backward(cotangent(corr))
out["correlation"] = digest(corr, in1.grad, in2.grad)

query, keys, values = leaf(1, 16, 24, 30, scale=0.25), leaf(1, 3, 16, 24, 30, scale=0.25), leaf(1, 3, 5, 24, 30)
labels = wsss_ext.propagate_labels(query, keys, torch.softmax(values, 2), 4)
labels.backward(cotangent(labels))
out["propagate_labels"] = digest(labels, query.grad, keys.grad, values.grad)

unary, photo = torch.rand(1, 21, 60, 80, generator=g) * 4, torch.randint(0, 256, (1, 3, 60, 80), generator=g, dtype=torch.uint8)
out["dense_crf"] = digest(wsss_ext.dense_crf(unary, photo, 5))
out["sinkhorn_knopp"] = digest(wsss_ext.sinkhorn_knopp(torch.randn(2000, 100, generator=g), 0.05, 3))
print(json.dumps(out))
"""


def test_every_cpu_kernel_gives_the_same_bits_on_any_thread_count(tmp_path):
    runs = {}
    for threads in ("1", "2", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        # cwd elsewhere: `python -c` would import the source tree, which has no compiled _C
        result = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True,
                                cwd=tmp_path)
        runs[threads] = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(runs["1"]) == 8
    for threads in ("2", "3"):
        differing = sorted(op for op, h in runs[threads].items() if h != runs["1"][op])
        assert not differing, f"{threads} threads changed {differing}"
