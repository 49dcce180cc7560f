"""``wsss-ext train --cam-run``: the second stage of a two-stage method
(:data:`SECOND_STAGE`: ``affinitynet``, ``irnet``, and SEC's and DSRG's
segmentation networks) trained on the labels a trained first-stage CAM run's
CAMs give.

SEC and DSRG (:data:`SEEDED`) learn from localisation cues
(:func:`python_models.pseudo.localisation_cues`: 20 % of each class's CAM
maximum for the foreground; for the background, where the papers use a
saliency model this library does not have, every tagged CAM below 0.05),
sampled at the network's output size (``seeds``). They keep their own
backbones (VGG-16 LargeFOV, DeepLab-ASPP), initialised as the method builds
them.

Before training, the CAM run's method computes the normalised CAMs of every
training image once, at the training size (the images ``train`` feeds, before
any flip; ``method.cams`` at the run's own published scales and flip, no
gradient), and :func:`~wsss_app.pipeline.recipes.cam_label_extras` derives
the method's labels from them by the demo recipes' rules. They reach the
method as per-image extra batch keys (``affinity_labels`` / ``ir_labels``;
``cams`` too where the method's ``BATCH_KEYS`` read them) through ``train_run``'s data path, indexed like the images, so
every epoch's order, DDP share and resume are the images'. A flipped image
gets its label maps and CAMs flipped with it (labels derived once, not after
each flip: the CRF of a mirror image is the mirror of the CRF up to float
rounding, and the label grids (stride 4 / 8) mirror exactly when the image
size is a multiple of 8).

The second stage starts from the CAM network's backbone weights when the two
backbones have the same parameter names and shapes (the recipes' stand-in for
ImageNet weights), else from its own initialisation; :func:`adopt_backbone`
says which. The run's ``config.json`` records ``cam_run`` (resolved), which
``--resume`` reads back, so the labels are recomputed identically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from wsss_app.pipeline.datasets import TaggedDataset

__all__ = ["SECOND_STAGE", "SEEDED", "adopt_backbone", "cam_run_extras", "open_cam_run", "second_stage_overrides"]

SECOND_STAGE = ("affinitynet", "irnet", "sec", "dsrg")
# The second stages that learn from localisation cues ("seeds") rather than pairwise labels.
SEEDED = ("sec", "dsrg")


def open_cam_run(cam_run: str | os.PathLike, dataset: TaggedDataset, device: str | torch.device = "cpu"):
    """The CAM run's trained method (eval mode on ``device``) and config.

    Raises:
        ValueError: its classes are not the dataset's (naming both), or its
            method yields no CAMs.
        FileNotFoundError: no such run, or a run without a checkpoint.
    """
    from wsss_app.pipeline.runs import load_run

    method, config = load_run(cam_run, device)
    if list(config["classes"]) != list(dataset.classes):
        raise ValueError(f"--cam-run {cam_run} was trained on the classes {list(config['classes'])}, not the "
                         f"dataset's {list(dataset.classes)}: train the CAM run on the same classes")
    if not callable(getattr(method, "cams", None)) or config["method"] in SECOND_STAGE:
        raise ValueError(f"--cam-run {cam_run} is a {config['method']} run: it needs a first-stage CAM method "
                         f"(e.g. cam, puzzle_cam, seam)")
    return method, config


@torch.no_grad()
def cam_run_extras(key: str, cam_method: nn.Module, images: torch.utils.data.Dataset, tags: Tensor, *,
                   batch_size: int = 8, device: str | torch.device = "cpu",
                   map_size: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """Method ``key``'s per-image extras (N x ..., on the CPU, indexed like
    ``images``): the CAM method's normalised CAMs of every image of
    ``images`` (``(index, 3 x S x S float in [0, 1])`` items, train_loop's
    resized images) and the labels derived from them: for :data:`SEEDED`
    methods the ``seeds`` at ``map_size`` (their network's output size)."""
    from wsss_app.pipeline.recipes import cam_label_extras

    device = torch.device(device)
    pixels = torch.stack([images[i][1] for i in range(len(images))])
    cams = torch.cat([cam_method.cams(pixels[i : i + batch_size].to(device), tags[i : i + batch_size].to(device))
                      .float().cpu() for i in range(0, len(pixels), batch_size)])
    if key in SEEDED:
        from python_models.losses.irnet import reduce_label_map
        from python_models.pseudo import localisation_cues

        if map_size is None:
            raise ValueError(f"{key} needs map_size, its network's output size, for its seeds")
        return {"seeds": reduce_label_map(localisation_cues(cams, tags), tuple(map_size))}
    return cam_label_extras(key, cams, pixels, tags, batch_size=batch_size, device=device)


def adopt_backbone(method: nn.Module, cam_method: nn.Module) -> str:
    """Copy the CAM network's backbone weights into ``method.backbone`` when
    their parameter names and shapes match; the line saying what was done."""
    ours, theirs = getattr(method, "backbone", None), getattr(cam_method, "backbone", None)
    name = getattr(method, "KEY", type(method).__name__)
    if isinstance(ours, nn.Module) and isinstance(theirs, nn.Module):
        mine, given = ours.state_dict(), theirs.state_dict()
        if mine.keys() == given.keys() and all(mine[k].shape == given[k].shape for k in mine):
            ours.load_state_dict(given)
            return f"{name} starts from the CAM network's backbone weights ({type(ours).__name__})"
    return (f"{name} starts from its own initialisation: its backbone ({type(ours).__name__}) does not match the "
            f"CAM network's ({type(theirs).__name__}); --backbone picks one that does")


def second_stage_overrides(key: str, cam_config: Mapping[str, Any], image_size: int,
                           overrides: Mapping[str, Any], backbone_given: bool = False) -> dict[str, Any]:
    """The method overrides a second stage adds under the user's: no CAM
    network of its own (its CAMs come from the CAM run), the CAM run's
    backbone name unless ``--backbone`` was given (so the weights can be copied), and for IRNet a
    ``crop_size`` of the training size."""
    if key in SEEDED:  # their own networks: nothing of the CAM run's to take
        return dict(overrides)
    added: dict[str, Any] = {"cam_network": None}
    backbone = cam_config.get("overrides", {}).get("backbone")
    if backbone == "tiny":  # each method's "tiny" is its own stand-in: name the CAM method's
        from python_models import METHODS

        backbone = getattr(METHODS.get(cam_config.get("method")), "TINY_BACKBONE", backbone)
    if isinstance(backbone, str) and not backbone_given:
        added["backbone"] = backbone
    if key == "irnet":
        added["crop_size"] = image_size
    return {**added, **dict(overrides)}
