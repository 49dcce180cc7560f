"""SSSS's segmentation decoder (Araslanov & Roth, CVPR 2020; 1-stage-wseg
``models/stage_net.py`` ``SoftMaxAE``, ``models/mods/gci.py``).

Deep features (the backbone's last stage) go through ASPP
(:class:`python_models.heads.deeplab.ASPP`), are upsampled to the shallow
features' size (stride 4) and fused with them as in DeepLabv3+ (shallow
reduced to 48 channels, concatenated, 3 x 3 conv to 256). Global cue
injection (GCI) re-styles the shallow features with the fused deep ones
(adaptive instance normalisation: per-channel scale and shift from the
spatial max of a 1 x 1 projection of the deep features); the stochastic gate
(:class:`python_models.heads.gate.StochasticGate`) mixes the two, and two
3 x 3 conv -> BN -> ReLU -> dropout (0.5, 0.1) blocks and a 1 x 1
classifier give the foreground logits at stride 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_int, check_maps
from python_models.heads.deeplab import ASPP
from python_models.heads.gate import StochasticGate

__all__ = ["GCI", "SSSSDecoder"]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class GCI(nn.Module):
    """Global cue injection: shallow features re-styled by deep ones.

    ``forward(shallow, deep)``::

        gamma, beta = split(spatial max of relu(BN(conv1x1(deep))))   (2 x channels)
        x = relu(BN_without_affine(conv1x1(shallow)) * (1 + gamma) + beta)
        return relu(BN(conv1x1(x)))

    Args:
        shallow_channels: channels of the shallow features (ResNet-38
            ``conv3``: 256). deep_channels: channels of the deep features
            (the fused decoder features: 256). channels: output channels (256).

    Shape: shallow B x S x h x w, deep B x D x h' x w' -> B x channels x h x w.

    Example:
        >>> gci = GCI(8, 16, 4).eval()
        >>> gci(torch.randn(2, 8, 6, 6), torch.randn(2, 16, 6, 6)).shape
        torch.Size([2, 4, 6, 6])
    """

    def __init__(self, shallow_channels: int, deep_channels: int = 256, channels: int = 256) -> None:
        super().__init__()
        self.shallow_channels = check_int(shallow_channels, "shallow_channels", minimum=1)
        self.deep_channels = check_int(deep_channels, "deep_channels", minimum=1)
        self.channels = check_int(channels, "channels", minimum=1)
        self.fc_deep = nn.Sequential(*_conv_bn_relu(deep_channels, 2 * channels, 1))
        self.fc_skip = nn.Sequential(nn.Conv2d(shallow_channels, channels, 1, bias=False),
                                     nn.BatchNorm2d(channels, affine=False))
        self.fc_cls = nn.Sequential(*_conv_bn_relu(channels, channels, 1))

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        shallow, deep = check_maps(shallow, "shallow"), check_maps(deep, "deep")
        if shallow.shape[0] != deep.shape[0]:
            raise ValueError(f"shallow and deep must have the same batch size, got {shallow.shape[0]} and "
                             f"{deep.shape[0]}")
        if shallow.shape[1] != self.shallow_channels or deep.shape[1] != self.deep_channels:
            raise ValueError(f"shallow / deep must have {self.shallow_channels} / {self.deep_channels} channels, "
                             f"got {shallow.shape[1]} / {deep.shape[1]}")
        attributes = self.fc_deep(deep).flatten(2).amax(2)  # B x 2K
        gamma, beta = attributes.view(len(attributes), 2, self.channels).unbind(1)
        x = self.fc_skip(shallow)
        x = F.relu(x * (1.0 + gamma[..., None, None]) + beta[..., None, None])
        return self.fc_cls(x)


class SSSSDecoder(nn.Module):
    """ASPP + shallow-feature fusion + GCI + stochastic gate + classifier.

    Args:
        deep_channels: channels of the backbone's last stage (ResNet-38: 4096).
        shallow_channels: channels of its stride-4 stage (ResNet-38 ``conv3``: 256).
        num_classes: C, the foreground classes (the background logit is a
            constant added by the method).
        psi: the gate's share of shallow features (0.3).
        aspp_rates: ASPP's atrous rates (1-stage-wseg at output stride 8: 12, 24, 36).
        channels: ASPP / decoder width (256). skip_channels: the reduced
            shallow features (48).

    ``forward(deep, shallow, seed=None)`` -> B x C x h4 x w4 foreground logits
    at the shallow features' size; ``seed`` feeds the gate in train mode.

    Example:
        >>> dec = SSSSDecoder(32, 8, 3, channels=16, skip_channels=4).eval()
        >>> dec(torch.randn(2, 32, 4, 4), torch.randn(2, 8, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, deep_channels: int, shallow_channels: int, num_classes: int, psi: float = 0.3,
                 aspp_rates: Sequence[int] = (12, 24, 36), channels: int = 256, skip_channels: int = 48) -> None:
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.shallow_channels = check_int(shallow_channels, "shallow_channels", minimum=1)
        channels = check_int(channels, "channels", minimum=1)
        skip_channels = check_int(skip_channels, "skip_channels", minimum=1)
        self.aspp = ASPP(deep_channels, channels, tuple(aspp_rates), dropout=0.5)
        self.fc8_skip = nn.Sequential(*_conv_bn_relu(shallow_channels, skip_channels, 1))
        self.fc8_x = nn.Sequential(*_conv_bn_relu(channels + skip_channels, channels, 3))
        self.gci = GCI(shallow_channels, channels, channels)
        self.gate = StochasticGate(psi)
        self.last_conv = nn.Sequential(*_conv_bn_relu(channels, channels, 3), nn.Dropout(0.5),
                                       *_conv_bn_relu(channels, channels, 3), nn.Dropout(0.1),
                                       nn.Conv2d(channels, num_classes, 1))
        # 1-stage-wseg: Kaiming-normal convolutions, BatchNorm weight 1, bias 0.
        for module in (self.fc8_skip, self.fc8_x, self.gci, self.last_conv):
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight)
                elif isinstance(layer, nn.BatchNorm2d) and layer.affine:
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)

    def forward(self, deep: Tensor, shallow: Tensor, seed: int | None = None) -> Tensor:
        deep, shallow = check_maps(deep, "deep"), check_maps(shallow, "shallow")
        if deep.shape[0] != shallow.shape[0]:
            raise ValueError(f"deep and shallow must have the same batch size, got {deep.shape[0]} and "
                             f"{shallow.shape[0]}")
        if shallow.shape[1] != self.shallow_channels:
            raise ValueError(f"shallow must have {self.shallow_channels} channels, got {shallow.shape[1]}")
        x = self.aspp(deep)
        skip = self.fc8_skip(shallow)
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        x = self.fc8_x(torch.cat([x, skip], 1))
        x = self.gate(x, self.gci(shallow, x), seed)
        return self.last_conv(x)
