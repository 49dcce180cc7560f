"""FickleNet's stochastic classifier head (Lee et al., "FickleNet: Weakly and
Semi-supervised Semantic Image Segmentation using Stochastic Inference",
CVPR 2019); :func:`python_models.pseudo.fickle_seeds` turns its
stochastic Grad-CAMs into seeds.

The head is a k x k classifier convolution over a random selection of hidden
units: the paper expands the features so every k x k window is its own block,
drops every unit but the window centres with probability p, and convolves
with stride k. :func:`wsss_ext.fickle_conv2d` computes the same thing without
the expanded map (equal to ``conv2d(wsss_ext.expanded_dropout(x, k, p,
seed=s), weight, bias, stride=k)`` for the same seed); global average pooling
then gives the logits. :func:`wsss_ext.fickle_gradcam` draws N such
selections and aggregates their Grad-CAMs.

Seeds are explicit integers: :func:`derive_seed` maps (base seed, stream) to
a 63-bit seed, so a training run that derives its seed from the step repeats.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

import wsss_ext
from python_models._checks import check_int, check_real

__all__ = ["FickleHead", "derive_seed"]

_MASK64 = (1 << 64) - 1


def derive_seed(base: int, stream: int) -> int:
    """A seed in [0, 2**63) from a base seed and a stream number (e.g. the
    training step), by SplitMix64 mixing: different streams give unrelated
    masks, the same pair always the same seed.

    >>> derive_seed(0, 5) == derive_seed(0, 5), derive_seed(0, 5) != derive_seed(0, 6)
    (True, True)
    """
    base = check_int(base, "seed", minimum=0)
    stream = check_int(stream, "step")
    z = (base * 0x9E3779B97F4A7C15 + (stream & _MASK64) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class FickleHead(nn.Module):
    """The k x k classifier over randomly selected hidden units.

    Args:
        in_channels: channels of the features (the backbone's conv5 / layer4).
        num_classes: C.
        kernel_size: k (odd, at most 5; FickleNet's value is not stated in
            the text we follow, 3 here).
        p: drop probability of the non-centre units, in training AND at
            inference (0.9 in the paper).
        rescale: multiply the kept non-centre units by 1 / (1 - p)
            (``False``: wsss_ext's default, the selection is used at test time too).

    ``forward(features, seed, n_samples=1)``: (n_samples B) x C x h x w score
    maps of stochastic selections (row s * B + b: selection s of image b).
    ``logits``: their spatial mean. ``deterministic(features)``: the maps with
    nothing dropped (an ordinary k x k conv). ``localization``: the stochastic
    Grad-CAM of :func:`wsss_ext.fickle_gradcam`.
    """

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int = 3, p: float = 0.9,
                 rescale: bool = False) -> None:
        super().__init__()
        kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
        if kernel_size % 2 == 0 or kernel_size > 5:
            raise ValueError(f"kernel_size must be odd and at most 5, got {kernel_size}")
        p = check_real(p, "p")
        if not 0 <= p < 1:
            raise ValueError(f"p must be in [0, 1), got {p}")
        self.p, self.rescale, self.kernel_size = p, bool(rescale), kernel_size
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size, padding=kernel_size // 2)

    @property
    def weight(self) -> Tensor:
        """C x in_channels x k x k."""
        return self.classifier.weight

    @property
    def bias(self) -> Tensor:
        return self.classifier.bias

    def forward(self, features: Tensor, seed: int, n_samples: int = 1) -> Tensor:
        return wsss_ext.fickle_conv2d(features, self.weight, self.bias, self.p, seed=seed, n_samples=n_samples,
                                      rescale=self.rescale)

    def logits(self, features: Tensor, seed: int) -> Tensor:
        """B x C: global average pooling of one stochastic selection's maps."""
        return self(features, seed).mean((2, 3))

    def deterministic(self, features: Tensor) -> Tensor:
        """B x C x h x w maps with every unit kept."""
        return F.conv2d(features, self.weight, self.bias, padding=self.kernel_size // 2)

    def localization(self, features: Tensor, labels: Tensor, seed: int, n_samples: int = 200,
                     threshold: float = 0.35, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
        """``(maps, labels)`` of :func:`wsss_ext.fickle_gradcam` on these
        features and this head's weights: B x C x h x w mean normalised
        Grad-CAMs, B x h x w class index (tag column) or ``ignore_index``."""
        return wsss_ext.fickle_gradcam(features, self.weight, self.bias, labels, p=self.p, n_samples=n_samples,
                                       seed=seed, threshold=threshold, rescale=self.rescale,
                                       ignore_index=ignore_index)
