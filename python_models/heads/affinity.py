"""AffinityNet's feature head (Ahn & Kwak, "Learning Pixel-level Semantic
Affinity with Image-level Supervision", CVPR 2018, Sec. 3.2; psa
``network/resnet38_aff.py``).

Three backbone stages are each reduced by a 1 x 1 convolution without bias
and an ELU (ResNet-38's ``conv4`` 512 -> 64, ``conv5`` 1024 -> 128, ``conv6``
4096 -> 256), concatenated (448 channels) and mixed by a fourth 1 x 1
convolution without bias and an ELU (448 -> 448). The affinities are
``wsss_ext.feature_affinity`` of its output: ``a_ij = exp(-mean_c |f_i - f_j|)``,
symmetric, in (0, 1], 1 on the diagonal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AFFINITY_HEAD_CHANNELS", "AffinityHead"]

# psa network/resnet38_aff.py: f8_3 -> 64, f8_4 -> 128, f8_5 -> 256 (f9: 448 -> 448).
AFFINITY_HEAD_CHANNELS = (64, 128, 256)


class AffinityHead(nn.Module):
    """``f8_3``, ``f8_4``, ``f8_5`` and ``f9`` of AffinityNet.

    Args:
        in_channels: channels of the three stages it reads (ResNet-38:
            512, 1024, 4096; ResNet: ``stage_channels[-3:]``).
        channels: the reductions (64, 128, 256); ``out_channels`` is their sum.

    ``forward(features)`` takes the three maps (B x C_i x h_i x w_i) and returns
    B x 448 x h x w at the first map's size (the others are resized
    bilinearly if their stride differs; in ResNet-38 all three are at stride 8).

    Initialisation as psa: Kaiming-normal reductions, Xavier-uniform ``f9``
    with gain 4.

    Example:
        >>> import torch
        >>> head = AffinityHead((8, 16, 32))
        >>> head([torch.randn(2, 8, 5, 5), torch.randn(2, 16, 5, 5), torch.randn(2, 32, 5, 5)]).shape
        torch.Size([2, 448, 5, 5])
    """

    def __init__(self, in_channels: Sequence[int], channels: Sequence[int] = AFFINITY_HEAD_CHANNELS) -> None:
        super().__init__()
        in_channels, channels = tuple(in_channels), tuple(channels)
        if len(in_channels) != len(channels) or not all(int(c) > 0 for c in in_channels + channels):
            raise ValueError(f"in_channels {in_channels} and channels {channels} must be positive and "
                             f"of the same length")
        self.in_channels = in_channels
        self.out_channels = sum(channels)
        self.reduce = nn.ModuleList(nn.Conv2d(c_in, c_out, 1, bias=False) for c_in, c_out in zip(in_channels, channels))
        self.mix = nn.Conv2d(self.out_channels, self.out_channels, 1, bias=False)
        for conv in self.reduce:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.mix.weight, gain=4)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        features = list(features)
        if len(features) != len(self.reduce):
            raise ValueError(f"features must be {len(self.reduce)} maps, got {len(features)}")
        for index, (feature, expected) in enumerate(zip(features, self.in_channels)):
            if not isinstance(feature, Tensor) or feature.dim() != 4 or feature.shape[1] != expected:
                shape = tuple(feature.shape) if isinstance(feature, Tensor) else type(feature).__name__
                raise ValueError(f"features[{index}] must be B x {expected} x h x w, got {shape}")
        size = features[0].shape[-2:]
        reduced = [F.elu(conv(f if f.shape[-2:] == size else
                              F.interpolate(f, size, mode="bilinear", align_corners=False)))
                   for conv, f in zip(self.reduce, features)]
        return F.elu(self.mix(torch.cat(reduced, 1)))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
