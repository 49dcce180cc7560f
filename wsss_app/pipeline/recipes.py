"""How each WSSS method is built and trained on small tagged images (the
demo's synthetic set, the pseudo-label benchmark), through the method
contract only (:func:`wsss_app.pipeline.training.fit`).

- From the tags alone: ``cam``, ``puzzle_cam`` and ``seam`` on a ResNet with
  one bottleneck per stage (output stride 8; SEAM's ``"tiny"`` wide ResNet-38
  trains about 5 times slower), ``recurseed`` and ``ssss`` on their own
  ``"tiny"`` backbones.
- From a CAM network's CAMs of the training images (:data:`FROM_CAMS`):
  ``affinitynet`` on PSA's affinity labels and ``irnet`` on IRNet's IR
  labels, both starting from the CAM network's backbone (standing in for
  ImageNet weights). IRNet trains that backbone with its branches, where irn
  freezes its ImageNet backbone: frozen classification-only features gave a
  boundary map too weak for the walk to gain.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from python_models import METHODS, create, pseudo, resnet_tiny
from python_models.losses import reduce_label_map
from wsss_app.pipeline.training import fit, to_unit

__all__ = ["FROM_CAMS", "FROM_TAGS", "Recipe", "batched", "cam_label_extras", "method_cams", "train_method"]

FROM_TAGS = ("cam", "puzzle_cam", "seam", "recurseed", "ssss")
FROM_CAMS = ("affinitynet", "irnet")


@dataclass
class Recipe:
    """The training settings every method shares (AdamW, one-cycle; see ``fit``)."""

    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 2e-3
    width: int = 16  # the ResNet's first-stage width (cam, puzzle_cam, seam)
    cam_scales: tuple[float, ...] = (1.0, 0.75, 1.25)
    # IRNet's pair radius: irn's 10 at stride 4 spans a 512 crop's 128 x 128 map; the 16 x 16 maps of 64-pixel
    # images take 5 (its walk's radius).
    irnet_radius: int = 5
    seed: int = 0


def batched(fn: Callable[..., Tensor], *tensors: Tensor, batch_size: int) -> Tensor:
    """``fn`` over consecutive slices of ``tensors`` (same first dimension), concatenated."""
    return torch.cat([fn(*(t[i : i + batch_size] for t in tensors)) for i in range(0, len(tensors[0]), batch_size)])


def _check_key(key: str) -> None:
    if key not in FROM_TAGS + FROM_CAMS:
        known = sorted(FROM_TAGS + FROM_CAMS)
        hint = "" if key in METHODS else " (not a registered method)"
        raise ValueError(f"method {key!r}{hint} has no recipe here; choose from {known}")


def train_method(key: str, images: Tensor, tags: Tensor, recipe: Recipe, *, device: str | torch.device = "cpu",
                 progress: bool = False, cam_network: nn.Module | None = None,
                 cams: Tensor | None = None) -> nn.Module:
    """Train method ``key`` on N uint8 images (N x 3 x H x W) and their tags (N x C).

    Args:
        cam_network, cams: for :data:`FROM_CAMS` methods, the trained ``cam``
            network (its backbone is copied as theirs) and its normalised CAMs of
            ``images`` (N x C x H x W), from which their training labels are made.

    Returns:
        The trained method in eval mode, seeded by ``recipe.seed`` (the same
        arguments give the same weights).
    """
    _check_key(key)
    device = torch.device(device)
    classes = tags.shape[1]
    common = dict(epochs=recipe.epochs, batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                  seed=recipe.seed, device=device, progress=progress, desc=f"training {key}")
    torch.manual_seed(recipe.seed)  # each method's initial weights do not depend on what was trained before
    if key in FROM_TAGS:
        if key in ("cam", "puzzle_cam", "seam"):  # SEAM's own ResNet-38 stand-in trains 5x slower
            model = create(key, backbone=resnet_tiny(output_stride=8, width=recipe.width), num_classes=classes)
        else:
            model = create(key, backbone="tiny", num_classes=classes)
        fit(model.to(device), images, tags, **common)
        return model
    if cam_network is None or cams is None:
        raise ValueError(f"{key} is trained on the labels of a CAM network's CAMs: pass cam_network and cams")
    if cams.shape[:2] != tags.shape or cams.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"cams {tuple(cams.shape)} must be N x C x H x W for the {tuple(images.shape)} images "
                         f"and {tuple(tags.shape)} tags")
    backbone = copy.deepcopy(cam_network.backbone)
    if key == "affinitynet":
        model = create("affinitynet", backbone=backbone, num_classes=classes, cam_network=None)
    else:
        model = create("irnet", backbone=backbone, num_classes=classes, cam_network=None,
                       crop_size=images.shape[-1], radius=recipe.irnet_radius, freeze_backbone=False)
    extras = cam_label_extras(key, cams, images, tags, batch_size=recipe.batch_size, device=device)
    fit(model.to(device), images, tags, extras=extras, **common)
    return model


def cam_label_extras(key: str, cams: Tensor, images: Tensor, tags: Tensor, *, batch_size: int = 16,
                     device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The per-image training labels a :data:`FROM_CAMS` method learns from a
    CAM network's normalised CAMs (N x C x H x W) of N images (uint8, or float
    in [0, 1]) and their N x C tags, on the CPU: ``affinity_labels``
    (PSA's rule, :func:`python_models.pseudo.psa_affinity_label_map`) or
    ``ir_labels`` (IRNet's, :func:`python_models.pseudo.ir_labels` reduced to
    the ceil(H / 4) x ceil(W / 4) boundary map), and ``cams`` itself. Shared by
    :func:`train_method` and ``wsss-ext train --cam-run``."""
    if key not in FROM_CAMS:
        raise ValueError(f"method {key!r} does not train on a CAM network's labels; those are {FROM_CAMS}")
    device = torch.device(device)

    def labelled(rule):
        unit = (lambda x: to_unit(x)) if images.dtype == torch.uint8 else (lambda x: x.float())
        return batched(lambda c, x, t: rule(c.to(device), unit(x.to(device)), t.to(device)), cams, images, tags,
                       batch_size=batch_size).cpu()

    if key == "affinitynet":
        extras = {"affinity_labels": labelled(pseudo.psa_affinity_label_map)}
    else:
        size = tuple((s - 1) // 4 + 1 for s in images.shape[-2:])
        extras = {"ir_labels": labelled(lambda c, x, t: reduce_label_map(pseudo.ir_labels(c, x, t), size))}
    return {**extras, "cams": cams.cpu()}


@torch.no_grad()
def method_cams(model: nn.Module, images: Tensor, tags: Tensor, recipe: Recipe,
                device: str | torch.device = "cpu") -> Tensor:
    """The method's normalised CAMs (``cams(images, tags, recipe.cam_scales, flip=True)``:
    tagged classes only, as WSSS does) of N uint8 images, N x C x H x W on ``device``."""
    return batched(lambda x, t: model.cams(to_unit(x.to(device)), t.to(device), recipe.cam_scales, flip=True),
                   images, tags, batch_size=recipe.batch_size)
