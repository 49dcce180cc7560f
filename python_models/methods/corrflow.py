"""CorrFlow (Lai & Xie, "Self-supervised Learning for Video Correspondence
Flow", BMVC 2019): a stride-4 ResNet-18 learns to copy quantised colours
from a reference frame through a 13 x 13 window, recursively over a clip,
with scheduled sampling and a forward-backward cycle (zlai0/CorrFlow)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext
from python_models.augment.colour import (
    CORRFLOW_DROPOUT,
    ColourQuantizer,
    channel_dropout,
)
from python_models.heads.correspondence import CorrespondenceEncoder
from python_models.losses.video import (
    colour_cross_entropy,
    scheduled_sampling_threshold,
)
from python_models.methods.base import VideoMethod
from python_models.methods.registry import register

__all__ = ["CorrFlow"]


@register
class CorrFlow(VideoMethod):
    """CorrFlow: a recursive colour pointer with an information bottleneck.

    Network (``models/corrflow.py``): a ResNet-18 at output stride 4 on the
    RGB frame in [0, 1] (no normalisation, as the release feeds
    ``ToTensor`` images), then a 3 x 3 convolution to ``dim`` 64 channels
    (``post_convolution``). The release's ResNet-18 reaches stride 4
    without max-pool and with undilated 256-wide last stages; here it is
    torchvision's layout with layers 2-4 dilated.

    Pointer (``models/colorizer.py``): the reference's colour distribution
    (one-hot of the quantised colours, or a previous prediction), resized
    bilinearly to the feature grid, propagated by ``wsss_ext.propagate_labels``
    over a 13 x 13 window (radius 6) with padded taps excluded (score
    -1e10 in the release: ``BORDER = "exclude"``, labels replicate-padded,
    so the propagated distribution sums to exactly 1), then upsampled
    bilinearly to the frame.

    Colours: each pixel's ab quantised to the nearest of ``colour_clusters``
    16 centroids (:class:`python_models.augment.colour.ColourQuantizer`). The
    release loads 16 k-means centroids of 10000 Kinetics pixels; the
    quantizer starts at :func:`python_models.augment.colour.gamut_centroids`
    (k-means of uniform sRGB colours) and ``model.quantizer.fit(frames)``
    sets them from training frames.

    Information bottleneck (``dropout2d``): with probability 0.7 one or two
    of the three input channels are zeroed in every frame of the batch and
    the rest rescaled by 3 / (3 - n) (:data:`~python_models.augment.colour.CORRFLOW_DROPOUT`).
    METHODS.md calls it a Lab channel dropout; the release drops channels
    of the network's RGB input, which this follows.

    Losses (``main.py``), on a clip of three frames:
    L_sim = Σ_{i=0,1} CE(pointer(f_i, c_i, f_{i+1}), q_{i+1}), where c_0 are the
    true colours and c_1 the true ones with probability
    :func:`python_models.losses.scheduled_sampling_threshold` (0.9 -> 0.6 over
    training), else the previous prediction (scheduled sampling);
    L_long = Σ_{i=1,2} CE of frame 0's colours after the chain 0 -> ... -> i -> ... -> 0
    (forward-backward cycle); loss = L_sim + 0.1 L_long. CE is
    :func:`python_models.losses.colour_cross_entropy` (``-log(p + 1e-8)``).
    The schedule's state (``iteration``, ``max_steps`` buffers) moves in
    ``after_step`` only; each draw uses torch's global generator unless the
    batch holds ``use_truth`` (one bool per recursive step, T - 2).

    Test (``test.py``): frame-to-frame propagation from the previous frame's
    argmaxed prediction (``memory(t) = [t - 1]``), radius ``test_radius`` 6.

    Defaults (zlai0/CorrFlow): backbone ResNet-18 at stride 4, dim 64;
    radius 6 and colour_clusters 16 (``colorizer.py`` R, C); sampling_start
    0.9, sampling_end 0.6 (``compute_ls`` eps_s, eps_e); long_weight 0.1;
    test_radius 6; temperature 1. Optimiser (not a method setting): Adam lr
    2e-4, betas (0.9, 0.999), batch 6 clips of 256 x 256. DAVIS-2017 J 48.4.
    num_classes 0: no classes (the setting exists for the contract).

    Kernels: ``propagate_labels`` in ``losses()`` and ``track``.

    Batch: ``frames`` B x T x 3 x H x W (T >= 3; three in the release) RGB
    in [0, 1]; optionally ``dropped_channels`` (a tuple, () for none) and
    ``use_truth``.
    """

    KEY = "corrflow"
    PAPER = "Lai & Xie, Self-supervised Learning for Video Correspondence Flow, BMVC 2019"
    DEFAULTS = dict(
        num_classes=0,
        backbone="resnet18",
        dim=64,
        radius=6,
        colour_clusters=16,
        sampling_start=0.9,
        sampling_end=0.6,
        long_weight=0.1,
        test_radius=6,
        temperature=1.0,
    )
    KERNELS = ("propagate_labels",)
    BORDER = "exclude"
    CLIP_LENGTH = 3

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.encoder = CorrespondenceEncoder(self.build_backbone(4), int(self.config.dim))
        self.STRIDE = self.encoder.stride
        self.quantizer = ColourQuantizer(int(self.config.colour_clusters))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))
        self.register_buffer("max_steps", torch.zeros((), dtype=torch.int64))

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def memory(self, t: int) -> list[tuple[int, int]]:
        return [(t - 1, 0)]

    @property
    def truth_probability(self) -> float:
        """The current probability of feeding true colours (scheduled sampling)."""
        return scheduled_sampling_threshold(int(self.iteration), int(self.max_steps), float(self.config.sampling_start),
                                            float(self.config.sampling_end))

    def pointer(self, reference: Tensor, colours: Tensor, target: Tensor) -> Tensor:
        """The target's colour distribution B x K x H x W copied from the
        reference's (B x K x H x W) through features B x D x h x w."""
        size = colours.shape[-2:]
        values = F.interpolate(colours, size=reference.shape[-2:], mode="bilinear", align_corners=False)
        out = wsss_ext.propagate_labels(target, reference.unsqueeze(1), values.unsqueeze(1),
                                        int(self.config.radius), float(self.config.temperature), border=self.BORDER)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)

    def _draws(self, batch: Mapping[str, Any], count: int) -> list[bool]:
        given = batch.get("use_truth")
        if given is None:
            threshold = self.truth_probability
            return [bool(torch.rand(()) < threshold) for _ in range(count)]
        if not isinstance(given, Sequence) or len(given) != count:
            raise ValueError(f"use_truth must hold one bool per recursive step ({count}), got {given!r}")
        return [bool(x) for x in given]

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        frames = self.check_frames(batch["frames"])
        b, t = frames.shape[:2]
        k = int(self.config.colour_clusters)
        colours = self.quantizer(frames)                                          # B x T x H x W
        one_hot = F.one_hot(colours, k).movedim(-1, 2).to(frames.dtype)           # B x T x K x H x W
        dropped = batch.get("dropped_channels")
        if dropped is None:
            seen, _ = channel_dropout(frames, **CORRFLOW_DROPOUT)
        else:
            dropped = tuple(int(c) for c in dropped)
            seen = frames if not dropped else channel_dropout(frames, dropped, (len(dropped),), 0.0)[0]
        features = self.encoder(seen.flatten(0, 1)).unflatten(0, (b, t))
        f = [features[:, i] for i in range(t)]
        truth = self._draws(batch, t - 2)

        similarity = frames.new_zeros(())
        outputs = one_hot[:, 0]
        for i in range(t - 1):
            reference = one_hot[:, i] if i == 0 or truth[i - 1] else outputs
            outputs = self.pointer(f[i], reference, f[i + 1])
            similarity = similarity + colour_cross_entropy(outputs, colours[:, i + 1])

        cycle = frames.new_zeros(())
        for i in range(1, t):
            outputs = one_hot[:, 0]
            for j in range(i):
                outputs = self.pointer(f[j], outputs, f[j + 1])
            for j in range(i, 0, -1):
                outputs = self.pointer(f[j], outputs, f[j - 1])
            cycle = cycle + colour_cross_entropy(outputs, colours[:, 0])

        loss = similarity + float(self.config.long_weight) * cycle
        return {"similarity": similarity, "long": cycle, "loss": loss}

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Advance the scheduled-sampling clock: ``step + 1`` of ``max_steps`` done."""
        self.iteration.fill_(int(step) + 1)
        self.max_steps.fill_(int(max_steps))
