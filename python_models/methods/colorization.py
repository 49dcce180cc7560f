"""Tracking by colorization (Vondrick, Shrivastava, Fathi, Guadarrama &
Murphy, "Tracking Emerges by Colorizing Videos", ECCV 2018): grayscale
frames are embedded, and each pixel of a target frame copies the colours of
reference frames' pixels through a softmax over embedding similarities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsss_ext
from python_models.augment.colour import ColourQuantizer, grayscale_lab
from python_models.heads.correspondence import CorrespondenceEncoder
from python_models.losses.video import colour_cross_entropy
from python_models.methods.base import VideoMethod
from python_models.methods.registry import register

__all__ = ["Colorization", "TemporalConv"]


class TemporalConv(nn.Module):
    """``layers`` 3 x 3 x 3 convolutions over a clip's stacked frame features
    (zero temporal padding), BatchNorm and ReLU between them, the last one
    linear: the 3D network Vondrick et al. put after the per-frame ResNet.

    Shape: B x T x D x h x w -> the same.
    """

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        for index in range(layers):
            modules.append(nn.Conv3d(dim, dim, 3, padding=1))
            if index < layers - 1:
                modules += [nn.BatchNorm3d(dim), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.transpose(1, 2)).transpose(1, 2)


@register
class Colorization(VideoMethod):
    """Colorization as a pointer: ŷ_j = Σ_i softmax_i(f_i^T f_j) c_i.

    Network: the frames' lightness (``L / 50 - 1``, copied to three
    channels) through a ResNet-18 at stride ``output_stride`` 8 (256 x 256
    frames give 32 x 32 embeddings), a 3 x 3 projection to ``dim`` 64, and
    :class:`TemporalConv` over the clip (``temporal_layers`` 4).

    Loss: in a clip of four frames the first three are references and the
    fourth is the target; every reference pixel's colour is one of
    ``colour_clusters`` 16 k-means clusters of ab
    (:class:`python_models.augment.colour.ColourQuantizer`), one-hot and
    resized bilinearly to the embedding grid; the target's distribution
    over the 16 colours is the pointer's output, and the loss its
    cross-entropy against the target's true colours
    (:func:`python_models.losses.colour_cross_entropy`, after a bilinear
    upsampling).

    Attention: the paper's softmax runs over every pixel of every reference
    (global). Here ``wsss_ext.propagate_labels`` computes it with a window
    that covers the whole embedding grid from every pixel (radius
    ``max(h, w) - 1``) and out-of-frame taps excluded (``BORDER =
    "exclude"``): exactly the global softmax while the grid is at most 65
    pixels on a side (520 px frames at stride 8). Larger grids get the
    kernel's largest window, radius 64, the documented approximation;
    ``radius`` / ``test_radius`` set a window explicitly.

    Test: references frame 0 and the ``n_recent`` 3 latest frames (the
    training clip's three references), each with its argmaxed prediction.

    Defaults (Vondrick et al. 2018, Sections 3-4): 16 colour clusters (k-means
    in Lab's ab), three reference frames and one target, 64-d embeddings at
    1/8 of the 256 x 256 input, ResNet-18, temperature 1 in training.
    **Unverified** (no code was read; the paper's TensorFlow code is not
    public): temporal_layers 4, the test memory (frame 0 + 3 recent), the
    test temperature 1 (the paper mentions a temperature for the colour
    predictions; its value was not checked). YouTube-VOS 38.9.
    num_classes 0: no classes (the setting exists for the contract).

    Kernels: ``propagate_labels`` in ``losses()`` and ``track``.

    Batch: ``frames`` B x 4 x 3 x H x W RGB in [0, 1] (H, W multiples of 8).
    """

    KEY = "colorization"
    PAPER = "Vondrick et al., Tracking Emerges by Colorizing Videos, ECCV 2018"
    DEFAULTS = dict(
        num_classes=0,
        backbone="resnet18",
        output_stride=8,
        dim=64,
        temporal_layers=4,
        colour_clusters=16,
        radius=None,
        temperature=1.0,
        test_radius=None,
        n_recent=3,
    )
    KERNELS = ("propagate_labels",)
    BORDER = "exclude"
    CLIP_LENGTH = 4

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.encoder = CorrespondenceEncoder(self.build_backbone(int(self.config.output_stride)), int(self.config.dim))
        self.STRIDE = self.encoder.stride
        self.temporal = TemporalConv(int(self.config.dim), int(self.config.temporal_layers))
        self.quantizer = ColourQuantizer(int(self.config.colour_clusters))

    def encode_clip(self, frames: Tensor) -> Tensor:
        """Embeddings B x T x D x h x w of RGB clips B x T x 3 x H x W (their lightness only)."""
        b, t = frames.shape[:2]
        gray = grayscale_lab(frames.flatten(0, 1)).expand(-1, 3, -1, -1)
        return self.temporal(self.encoder(gray).unflatten(0, (b, t)))

    def encode(self, images: Tensor) -> Tensor:
        """Embeddings of single frames (each a clip of one)."""
        return self.encode_clip(images.unsqueeze(1))[:, 0]

    @torch.no_grad()
    def embed(self, frames: Tensor) -> Tensor:
        """Embeddings of a whole video T x 3 x H x W, the temporal convolutions across all of it."""
        frames = self.check_frames(frames.unsqueeze(0) if isinstance(frames, Tensor) and frames.dim() == 4
                                   else frames, "frames", 1)
        was_training = self.training
        self.eval()
        try:
            return self.encode_clip(frames)[0]
        finally:
            self.train(was_training)

    def colorize(self, features: Tensor, colours: Tensor) -> Tensor:
        """The last frame's colour distribution B x K x h x w from the others'
        (``features`` B x T x D x h x w, ``colours`` B x (T - 1) x K x H x W)."""
        grid = features.shape[-2:]
        values = F.interpolate(colours.flatten(0, 1), size=grid, mode="bilinear", align_corners=False)
        values = values.unflatten(0, colours.shape[:2])
        radius = self.window_radius(self.config.radius, grid)
        return wsss_ext.propagate_labels(features[:, -1], features[:, :-1], values, radius,
                                         float(self.config.temperature), border=self.BORDER)

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        frames = self.check_frames(batch["frames"])
        colours = self.quantizer(frames)  # B x T x H x W
        one_hot = F.one_hot(colours[:, :-1], self.quantizer.k).movedim(-1, 2).to(frames.dtype)
        probs = self.colorize(self.encode_clip(frames), one_hot)
        loss = colour_cross_entropy(probs, colours[:, -1])
        return {"colorization": loss, "loss": loss}
