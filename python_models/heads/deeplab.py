"""ASPP (DeepLabv3, Chen et al. 2017) and the DeepLabv3+ decoder (Chen et al.,
ECCV 2018), shared by the segmentation heads (SSSS, RecurSeed).

Module names follow torchvision's ``torchvision.models.segmentation.deeplabv3``
(``convs.0`` 1 x 1 branch, ``convs.1`` .. ``convs.3`` atrous 3 x 3 branches,
``convs.4`` image pooling, ``project``), so the ASPP part of torchvision's
DeepLabv3 head loads::

    state = torch.load("deeplabv3_resnet50_coco-cd0a2569.pth")
    aspp.load_state_dict({k[len("classifier.0."):]: v for k, v in state.items()
                          if k.startswith("classifier.0.")})

(torchvision's DeepLabv3 uses rates 12, 24, 36 at output stride 8; DeepLabv3+
uses 6, 12, 18 at output stride 16: the rates change no parameter shape.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_int, check_maps

__all__ = ["ASPP", "ASPPConv", "ASPPPooling", "DeepLabV3PlusDecoder"]


class ASPPConv(nn.Sequential):
    """3 x 3 atrous conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ASPPPooling(nn.Sequential):
    """Image pooling: global average -> 1 x 1 conv -> BatchNorm -> ReLU,
    broadcast back (bilinear from 1 x 1) to the input's size.

    In train mode BatchNorm on a 1 x 1 map needs a batch of 2 or more."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: B x in_channels x h x w -> B x out_channels x h x w.

    Five parallel branches (1 x 1 conv, three 3 x 3 convs at ``rates``, image
    pooling), each conv -> BN -> ReLU, concatenated and projected by a 1 x 1
    conv -> BN -> ReLU -> Dropout(``dropout``) (torchvision and DeepLabv3+
    use 0.5).

    Args:
        in_channels: channels of the high-level features (2048 for ResNet-50).
        out_channels: channels of every branch and of the output (256).
        rates: the dilations of the three atrous branches ((6, 12, 18) at
            output stride 16; double them at stride 8).
        dropout: dropout probability after the projection.

    Example:
        >>> aspp = ASPP(64, 16).eval()
        >>> aspp(torch.randn(2, 64, 5, 7)).shape
        torch.Size([2, 16, 5, 7])
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18),
                 dropout: float = 0.5) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        out_channels = check_int(out_channels, "out_channels", minimum=1)
        rates = tuple(rates)
        if len(rates) != 3 or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rates):
            raise ValueError(f"rates must be three positive ints, got {rates}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels, self.rates = in_channels, out_channels, rates
        branches: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )]
        branches += [ASPPConv(in_channels, out_channels, rate) for rate in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(float(dropout)),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = check_maps(x, "features")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"features must have {self.in_channels} channels, got {x.shape[1]}")
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, rates={self.rates}"


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabv3+'s head: ASPP on the high-level features, the low-level
    (stride 4) features reduced by a 1 x 1 conv -> BN -> ReLU to
    ``low_reduced`` (48) channels, the ASPP output upsampled (bilinear) to
    the low-level size and concatenated, two 3 x 3 conv -> BN -> ReLU
    (``decoder_channels``, 256) with dropout 0.5 and 0.1 after them (as the
    DeepLabv3+ reference PyTorch port used by PuzzleCAM / RecurSeed), and a
    1 x 1 classifier with bias (DeepLabv3+; RecurSeed's ``core/layers.py``
    uses a 3 x 3 one without bias: ``classifier_kernel=3, classifier_bias=False``).

    Args:
        low_channels: channels of the stride-4 features (256 for ResNet-50's layer1).
        high_channels: channels of the high-level features (2048).
        num_classes: output channels (background included where wanted).
        aspp_channels, low_reduced, decoder_channels: 256, 48, 256.
        rates: ASPP dilations. dropout: after the ASPP projection and the two 3 x 3 convs.

    ``forward(low, high, size=None)``: low B x low_channels x h4 x w4, high
    B x high_channels x h x w -> logits B x num_classes x h4 x w4, or
    upsampled (bilinear, align_corners=False) to ``size`` when given.

    Example:
        >>> dec = DeepLabV3PlusDecoder(8, 32, 3, aspp_channels=16, decoder_channels=16).eval()
        >>> dec(torch.randn(2, 8, 8, 8), torch.randn(2, 32, 2, 2), size=(32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, aspp_channels: int = 256,
                 low_reduced: int = 48, decoder_channels: int = 256, rates: Sequence[int] = (6, 12, 18),
                 dropout: tuple[float, float, float] = (0.5, 0.5, 0.1), classifier_kernel: int = 1,
                 classifier_bias: bool = True) -> None:
        super().__init__()
        self.low_channels = check_int(low_channels, "low_channels", minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        low_reduced = check_int(low_reduced, "low_reduced", minimum=1)
        decoder_channels = check_int(decoder_channels, "decoder_channels", minimum=1)
        self.aspp = ASPP(high_channels, aspp_channels, rates, dropout[0])
        self.reduce = nn.Sequential(
            nn.Conv2d(low_channels, low_reduced, 1, bias=False),
            nn.BatchNorm2d(low_reduced),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(aspp_channels + low_reduced, decoder_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout[1]),
            nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout[2]),
        )
        classifier_kernel = check_int(classifier_kernel, "classifier_kernel", minimum=1)
        if classifier_kernel % 2 == 0:
            raise ValueError(f"classifier_kernel must be odd, got {classifier_kernel}")
        self.classifier = nn.Conv2d(decoder_channels, num_classes, classifier_kernel,
                                    padding=classifier_kernel // 2, bias=bool(classifier_bias))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def features(self, low: Tensor, high: Tensor) -> Tensor:
        """The fused decoder features before the classifier: B x decoder_channels x h4 x w4."""
        low = check_maps(low, "low")
        high = check_maps(high, "high")
        if low.shape[0] != high.shape[0]:
            raise ValueError(f"low and high must have the same batch size, got {low.shape[0]} and {high.shape[0]}")
        if low.shape[1] != self.low_channels:
            raise ValueError(f"low must have {self.low_channels} channels, got {low.shape[1]}")
        x = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, self.reduce(low)], dim=1))

    def forward(self, low: Tensor, high: Tensor, size: Sequence[int] | None = None) -> Tensor:
        logits = self.classifier(self.features(low, high))
        if size is not None and tuple(size) != tuple(logits.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits
