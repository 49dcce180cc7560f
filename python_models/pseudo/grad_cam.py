"""Grad-CAM (Selvaraju et al., ICCV 2017) for every class of a multi-label
batch at once, as WSSS needs it: tensors in and out, ReLU'd maps per class,
differentiable on request, and the hook removed even if the forward raises."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["capture_output", "grad_cam"]


@contextmanager
def capture_output(layer: nn.Module) -> Iterator[dict]:
    """Within the block, ``captured["output"]`` holds ``layer``'s latest output;
    the forward hook is removed on leaving, exception or not."""
    captured: dict = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.__setitem__("output", output))
    try:
        yield captured
    finally:
        handle.remove()


def grad_cam(model: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor | None = None, layer: nn.Module | None = None,
             create_graph: bool = False) -> Tensor:
    r"""Grad-CAM maps of every class: :math:`\mathrm{ReLU}(\sum_k \alpha_{ck} A_k)`,
    :math:`\alpha_{ck}` the spatial mean of :math:`\partial y_c / \partial A_k`.

    Args:
        model: a module or function mapping images to B x C logits; ``layer``
            must run inside it.
        images: what ``model`` takes, B x ...
        labels: B x C tags; classes outside them get zero maps (and no
            backward pass when no image has them). None: every class.
        layer: the module whose output is A (default: ``model.backbone``;
            required when ``model`` is a function).
        create_graph: keep the graph so the maps are differentiable (for a
            loss on them); otherwise they are detached.

    Returns:
        B x C x h x w, A's resolution, not normalised. With a GAP-linear head
        (``python_models.methods.CAM``) the map of class c is
        ``relu(raw CAM_c) / (h w)``.
    """
    if layer is None:
        if not isinstance(getattr(model, "backbone", None), nn.Module):
            raise ValueError("layer is required: the model has no backbone module to default to")
        layer = model.backbone
    with capture_output(layer) as captured, torch.enable_grad():
        logits = model(images)
        if "output" not in captured:
            raise ValueError(f"layer {type(layer).__name__} did not run in the model's forward")
        features = captured["output"]
        if logits.dim() != 2:
            raise ValueError(f"model must return B x C logits, got shape {tuple(logits.shape)}")
        present = range(logits.shape[1]) if labels is None else labels.sum(0).nonzero().flatten().tolist()
        maps = features.new_zeros(features.shape[0], logits.shape[1], *features.shape[2:])
        maps = [maps[:, c] for c in range(logits.shape[1])]
        for c in present:
            # Images are independent, so one backward of the batch sum gives every image's gradient.
            (gradient,) = torch.autograd.grad(logits[:, c].sum(), features, retain_graph=True,
                                              create_graph=create_graph)
            maps[c] = F.relu((gradient.mean((2, 3), keepdim=True) * features).sum(1))
    result = torch.stack(maps, 1)
    if labels is not None:
        result = result * labels.to(result.dtype)[..., None, None]
    return result if create_graph else result.detach()
