"""MAST (Lai, Lu & Xie, "MAST: A Memory-Augmented Self-Supervised Tracker",
CVPR 2020): a stride-4 ResNet-18 learns to reconstruct a dropped Lab channel
of a target frame by pointing into reference frames; at test time a memory of
short- and long-term references carries the first mask (zlai0/MAST)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from python_models.augment.colour import (
    normalize_lab,
    rgb_to_lab,
)
from python_models.heads.correspondence import (
    CorrespondenceEncoder,
    long_term_dilation,
)
from python_models.losses.video import mast_clip_loss
from python_models.methods.base import VideoMethod
from python_models.methods.registry import register

__all__ = ["MAST", "mast_memory"]


def mast_memory(t: int, long_term: tuple[int, ...] = (0, 5), recent: int = 3, gap: int = 2,
                long_term_gap: int = 15) -> list[tuple[int, int]]:
    """MAST's references for target frame ``t`` (``benchmark.py``, ``--ref 0``):
    the long-term frames (0 and 5) already seen, and ``recent`` frames every
    ``gap`` back from ``t - 1`` (t-1, t-3, t-5), sorted; each with its
    coarse-search dilation (``min(4, distance // 15 + 1)`` beyond 15 frames,
    else 0: read in place)."""
    previous = t - 1
    chosen = {r for r in long_term if r <= previous}
    chosen |= {r for r in range(previous, previous - gap * recent, -gap) if r > 0}
    return [(r, long_term_dilation(t - r, long_term_gap)) for r in sorted(chosen)]


@register
class MAST(VideoMethod):
    """MAST: self-supervised Lab reconstruction through a memory of references.

    Network (``models/mast.py``, ``submodule.py``): a ResNet-18 at output
    stride 4 on the normalised Lab frame ((L - 50)/50, a/127, b/127; MAST
    ``lab_preprocess``), then a 3 x 3 convolution to ``dim`` (64) channels.
    MAST's ResNet-18 reaches stride 4 by dropping the max-pool and the
    strides of layers 3-4 (widths 64-128-256-256); here it is torchvision's
    ResNet-18 with layers 2-4 dilated (512 channels), so ImageNet weights load.

    Training (``main.py compute_lphoto``): a clip of three frames, video
    frames 0, 2 and 4 (MAST's ``ref_index [0, 2]`` and target 4). Lab
    channel dropout (:func:`python_models.augment.channel_dropout` with
    :data:`~python_models.augment.colour.MAST_DROPOUT`: one of a, b zeroed in
    every frame, the rest times 3/2) hides a colour channel from the network;
    the target's dropped channel is reconstructed from the references' true
    one, subsampled to the feature grid (``prep``: every 4th pixel), by
    :func:`python_models.heads.read_memory` (radius ``train_radius`` 6,
    one softmax over both references x 169 taps, out-of-frame taps score 0
    and label 0: ``BORDER = "zero"``). Loss:
    :func:`python_models.losses.lab_reconstruction_loss`, smooth-L1 of
    ``20 * out`` (upsampled bilinearly) against ``20 * target``.

    Test (``benchmark.py``): references :func:`mast_memory` (frames 0 and 5,
    and t-1, t-3, t-5), radius ``test_radius`` 12; references more than 15
    frames back are found by the coarse search (``wsss_ext.correlation``,
    25 x 25 at dilation 2-4, soft-argmax offset) and read around it
    (:func:`python_models.heads.correspondence.align`); the argmaxed
    prediction is fed back as one-hot labels.

    Defaults (zlai0/MAST): backbone ResNet-18 at stride 4 and dim 64
    (``post_convolution`` 256 -> 64); train_radius 6, test_radius 12
    (``models/mast.py``: "Use smaller R for faster training"); temperature 1
    (no scaling of the dot products); loss_scale 20; train_references (0, 2)
    and train_target 4 (``compute_lphoto``); long_term (0, 5), recent 3,
    recent_gap 2 (``benchmark.py``); long_term_gap 15 and search_radius 12
    (``colorizer.py`` ``dil_int``, ``memory_patch_R``). Optimiser (not a
    method setting): Adam lr 1e-3, betas (0.9, 0.999), halved at 0.4 M,
    0.6 M, 0.8 M, 1 M samples; batch 12 of 256 x 256 crops. YouTube-VOS 64.2.
    num_classes 0: no classes (the setting exists for the contract).

    Kernels: ``propagate_labels`` in ``losses()`` (and ``track``);
    ``correlation`` in ``track`` for long-term references.

    Batch: ``frames`` B x 3 x 3 x H x W (video frames 0, 2, 4), RGB in [0, 1];
    optionally ``dropped_channels`` (a tuple of Lab channels to zero, else
    drawn from torch's global generator).
    """

    KEY = "mast"
    PAPER = "Lai, Lu & Xie, MAST: A Memory-Augmented Self-Supervised Tracker, CVPR 2020"
    DEFAULTS = dict(
        num_classes=0,
        backbone="resnet18",
        dim=64,
        train_radius=6,
        test_radius=12,
        temperature=1.0,
        loss_scale=20.0,
        train_references=(0, 2),
        train_target=4,
        long_term=(0, 5),
        recent=3,
        recent_gap=2,
        long_term_gap=15,
        search_radius=12,
    )
    KERNELS = ("propagate_labels",)
    BORDER = "zero"
    CLIP_LENGTH = 3

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.encoder = CorrespondenceEncoder(self.build_backbone(4), int(self.config.dim))
        self.STRIDE = self.encoder.stride

    def encode(self, images: Tensor) -> Tensor:
        """Features of RGB images (their normalised Lab through the network)."""
        return self.encoder(normalize_lab(rgb_to_lab(images)))

    def memory(self, t: int) -> list[tuple[int, int]]:
        config = self.config
        return mast_memory(t, tuple(config.long_term), int(config.recent), int(config.recent_gap),
                           int(config.long_term_gap))

    def reconstruction_loss(self, frames: Tensor, dropped: tuple[int, ...] | None = None) -> Tensor:
        """MAST's loss of RGB clips B x 3 x 3 x H x W (:func:`python_models.losses.mast_clip_loss`;
        the dropout is drawn when ``dropped`` is None)."""
        c = self.config
        return mast_clip_loss(self.encoder, frames, dropped, references=c.train_references, target=c.train_target,
                              radius=c.train_radius, temperature=c.temperature, border=self.BORDER,
                              long_term_gap=c.long_term_gap, search_radius=c.search_radius, scale=c.loss_scale)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        frames = self.check_frames(batch["frames"])
        if frames.shape[1] != len(self.config.train_references) + 1:
            raise ValueError(f"frames must hold {len(self.config.train_references) + 1} frames per clip "
                             f"(references {tuple(self.config.train_references)} and the target), got {frames.shape[1]}")
        loss = self.reconstruction_loss(frames, batch.get("dropped_channels"))
        return {"reconstruction": loss, "loss": loss}
