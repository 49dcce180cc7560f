"""Benchmark of FickleNet's stochastic head: :func:`wsss_ext.fickle_conv2d`
against the expand-then-conv path the paper uses
(``wsss_ext.reference.fickle_conv2d_expanded``: the k^2-times larger expanded
map, centre-preserving dropout, conv with stride k), forward + backward, and
:func:`wsss_ext.fickle_gradcam` against a loop of autograd Grad-CAM passes
over the expanded path, on the same device and inputs.

Cases (k = 3, p = 0.9, 20 VOC classes, conv5 features of 321 x 321 crops at
stride 8, 41 x 41):

- ``vgg16``: batch 10, 512 channels (the paper's VGG-16 backbone).
- ``resnet101``: batch 10, 2048 channels.
- ``gradcam200``: one image, 512 channels, N = 200 stochastic maps for its 2
  classes; the reference runs 200 forward passes and one backward per class.
"""

from __future__ import annotations

import torch

import wsss_ext
from common import measure, ratios
from wsss_ext.reference import fickle_conv2d_expanded

KERNEL = "fickle"
P = 0.9
CLASSES = 20
SIZE = 41


def _inputs(batch: int, channels: int, device: torch.device, requires_grad: bool):
    generator = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(batch, channels, SIZE, SIZE, generator=generator)).to(device)
    weight = (torch.randn(CLASSES, channels, 3, 3, generator=generator) / (3 * channels**0.5)).to(device)
    bias = torch.zeros(CLASSES, device=device)
    return [t.requires_grad_(requires_grad) for t in (x, weight, bias)]


def _train_step(head, x, weight, bias):
    """Forward + backward of a GAP multi-label head; returns the gradients."""
    for t in (x, weight, bias):
        t.grad = None
    logits = head(x, weight, bias).mean((2, 3))
    torch.nn.functional.multilabel_soft_margin_loss(logits, torch.ones_like(logits)).backward()
    return x.grad


def _conv_case(case: str, batch: int, channels: int, device: torch.device) -> dict:
    print(f"  [{KERNEL}/{case} {batch}x{channels}x{SIZE}x{SIZE}]", flush=True)
    x, weight, bias = _inputs(batch, channels, device, True)
    generator = torch.Generator(device=device).manual_seed(0)
    ours, _ = measure(lambda: _train_step(lambda *a: wsss_ext.fickle_conv2d(*a, p=P, seed=1), x, weight, bias),
                      device=device)
    reference, _ = measure(
        lambda: _train_step(lambda *a: fickle_conv2d_expanded(*a, p=P, generator=generator), x, weight, bias),
        device=device, warmup=1, repeat=3)
    record = {
        "kernel": KERNEL,
        "case": case,
        "shape": [batch, channels, SIZE, SIZE],
        "params": {"kernel_size": 3, "p": P, "classes": CLASSES, "pass": "forward + backward"},
        "ours": ours,
        "references": {"expand_then_conv": reference},
        "ratios": {"expand_then_conv": ratios(ours, reference)},
    }
    print(f"    ours {ours['median_ms']:.1f} ms, expand-then-conv {reference['median_ms']:.1f} ms", flush=True)
    return record


def autograd_gradcam_loop(x, weight, bias, classes, n_samples, generator):
    """N stochastic Grad-CAM maps the plain way: a forward pass over the
    expanded path per selection, a backward per class, relu(sum alpha x)."""
    feature = x.detach().requires_grad_()
    maps = []
    for _ in range(n_samples):
        logits = fickle_conv2d_expanded(feature, weight, bias, p=P, generator=generator).mean((2, 3))[0]
        for c in classes:
            (grad,) = torch.autograd.grad(logits[c], feature, retain_graph=True)
            maps.append(torch.relu((grad[0].mean((1, 2))[:, None, None] * feature[0].detach()).sum(0)))
    return torch.stack(maps)


def _gradcam_case(n_samples: int, device: torch.device) -> dict:
    print(f"  [{KERNEL}/gradcam{n_samples} 1x512x{SIZE}x{SIZE}]", flush=True)
    x, weight, bias = _inputs(1, 512, device, False)
    labels = torch.zeros(1, CLASSES, device=device)
    labels[0, [4, 14]] = 1
    generator = torch.Generator(device=device).manual_seed(0)
    ours, _ = measure(lambda: wsss_ext.fickle_gradcam(x, weight, bias, labels, P, n_samples, seed=1), device=device)
    reference, _ = measure(lambda: autograd_gradcam_loop(x, weight, bias, [4, 14], n_samples, generator),
                           device=device, warmup=0, repeat=1)
    record = {
        "kernel": KERNEL,
        "case": f"gradcam{n_samples}",
        "shape": [1, 512, SIZE, SIZE],
        "params": {"kernel_size": 3, "p": P, "classes": CLASSES, "n_samples": n_samples, "present_classes": 2},
        "ours": ours,
        "references": {"autograd_loop": reference},
        "ratios": {"autograd_loop": ratios(ours, reference)},
    }
    print(f"    ours {ours['median_ms']:.1f} ms, autograd loop {reference['median_ms']:.1f} ms", flush=True)
    return record


def run(device: str, quick: bool) -> list[dict]:
    """Run every case on ``device``; ``quick`` shrinks batches and N (a smoke
    test, not results). Returns the case records."""
    device = torch.device(device)
    return [
        _conv_case("vgg16", 2 if quick else 10, 512, device),
        _conv_case("resnet101", 1 if quick else 10, 2048, device),
        _gradcam_case(10 if quick else 200, device),
    ]
