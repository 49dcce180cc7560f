"""VGG-16 as DeepLab-LargeFOV (Chen et al., ICLR 2015), the backbone of SEC,
DSRG and FickleNet's VGG model: pool4 and pool5 keep stride 1 (3 x 3
windows, padding 1), conv5 is dilated by 2, pool5 is followed by ``pool5a``
(a 3 x 3 average, stride 1, counting the padding as Caffe's AVE does), and
``fc6`` is a 3 x 3 conv of dilation 12, so a 321 x 321 crop gives 41 x 41
maps (output stride 8).

Convolution names are torchvision's (``features.0`` ... ``features.28``), so
the convolutional part of torchvision's ImageNet VGG-16 loads from a local
file; ``fc6`` / ``fc7`` (1024 channels, as DeepLab's) start from scratch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["VGGLargeFOV", "vgg16_largefov", "vgg_tiny"]

# Output channels of VGG-16's 13 convolutions, "M" a pooling layer (torchvision's configuration "D").
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGGLargeFOV(nn.Module):
    """VGG-16 features with DeepLab-LargeFOV's strides and dilations, then fc6 / fc7.

    Args:
        width: channels of the first stage (64 in the paper; every stage scales with it).
        fc_channels: channels of fc6 and fc7 (1024 in DeepLab-LargeFOV).
        dropout: element-wise dropout after fc6 and fc7 (0.5 in DeepLab, Caffe's Dropout).

    ``forward`` maps B x 3 x H x W to B x fc_channels x ceil(H/8) x ceil(W/8);
    ``stages(x)`` returns the conv3, conv4, conv5 (after pool5 and pool5a) and
    fc7 maps; ``pool5(x)`` the third of them (where DSRG's ASPP branches start).
    """

    def __init__(self, width: int = 64, fc_channels: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        if width < 1 or fc_channels < 1:
            raise ValueError(f"width and fc_channels must be >= 1, got {width} and {fc_channels}")
        layers: list[nn.Module] = []
        channels, n_pools = 3, 0
        for item in _VGG16:
            if item == "M":
                n_pools += 1
                # Pools 4 and 5 keep the resolution: stride 8 overall.
                layers.append(nn.MaxPool2d(3, stride=2 if n_pools <= 3 else 1, padding=1, ceil_mode=True))
                continue
            out = item * width // 64
            dilation = 2 if n_pools == 4 else 1  # conv5 sees through the removed stride of pool4
            layers += [nn.Conv2d(channels, out, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(channels, fc_channels, 3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.out_channels = fc_channels
        self.stage_channels = (4 * width, 8 * width, 8 * width, fc_channels)
        self.output_stride = 8

    def stages(self, x: Tensor) -> list[Tensor]:
        """The outputs of stage 3, stage 4, stage 5 (after their pooling; pool5a for stage 5) and fc7."""
        outputs = []
        n_pools = 0
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                n_pools += 1
                if n_pools >= 3:
                    outputs.append(x)
        x = outputs[-1] = self.pool5a(x)
        outputs.append(self.fc(x))
        return outputs

    def pool5(self, x: Tensor) -> Tensor:
        """conv1 to pool5a: B x 8 width x h x w at stride 8."""
        return self.pool5a(self.features(x))

    def fc(self, x: Tensor) -> Tensor:
        """fc6 then fc7 (ReLU and dropout after each) on ``pool5(x)``."""
        x = self.dropout(self.relu(self.fc6(x)))
        return self.dropout(self.relu(self.fc7(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)[-1]

    def load_torchvision(self, path: str | Path) -> list[str]:
        """Load torchvision's VGG-16 convolutions from a local file; returns the
        keys not used (its fully connected ``classifier``)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        convs = {key: value for key, value in state.items() if key.startswith("features.")}
        missing = [key for key in self.state_dict() if key.startswith("features.") and key not in convs]
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} VGG-16 convolution keys, e.g. {missing[:3]}")
        self.load_state_dict({**self.state_dict(), **convs})
        return [key for key in state if key not in convs]


def vgg16_largefov(fc_channels: int = 1024) -> VGGLargeFOV:
    """VGG-16 DeepLab-LargeFOV (SEC, DSRG, FickleNet's VGG model)."""
    return VGGLargeFOV(64, fc_channels)


def vgg_tiny(width: int = 8, fc_channels: int = 64) -> VGGLargeFOV:
    """The same layout at a CPU size, for tests and the demo."""
    return VGGLargeFOV(width, fc_channels, dropout=0.0)


def _fc8(in_channels: int, out_channels: int) -> nn.Conv2d:
    """DeepLab-LargeFOV's fc8 classifier: a 1 x 1 conv, weights N(0, 0.01), bias 0 (SEC, DSRG)."""
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv
