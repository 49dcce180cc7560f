"""Backbones: a module mapping B x 3 x H x W images to B x C x h x w features,
with ``out_channels``, ``stage_channels``, ``output_stride`` and
``stages(x)`` (the maps of every stage, the last equal to ``forward(x)``).

``BACKBONES`` maps a registered name to its factory; methods take either a
module or one of these names (``"tiny"`` is each method's CPU-sized version
of its paper's backbone).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from python_models.backbones.efficientnet import EfficientNetLite, efficientnet_lite0
from python_models.backbones.resnet import Bottleneck, ResNet, resnet50, resnet101, resnet_tiny
from python_models.backbones.resnet import BasicBlock, resnet18, resnet18_tiny
from python_models.backbones.resnet38d import ResNet38d, convert_mxnet_names, resnet38d, resnet38d_tiny
from python_models.backbones.vgg import VGGLargeFOV, vgg16_largefov, vgg_tiny
from python_models.backbones.vit import VisionTransformer, interpolate_pos_embed, set_drop_path, vit_backbone, vit_small, vit_tiny

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "EfficientNetLite",
    "ResNet",
    "ResNet38d",
    "VGGLargeFOV",
    "VisionTransformer",
    "build_backbone",
    "convert_mxnet_names",
    "efficientnet_lite0",
    "interpolate_pos_embed",
    "resnet101",
    "resnet18",
    "resnet18_tiny",
    "resnet38d",
    "resnet38d_tiny",
    "resnet50",
    "resnet_tiny",
    "set_drop_path",
    "vgg16_largefov",
    "vgg_tiny",
    "vit_backbone",
    "vit_small",
    "vit_tiny",
]

# name -> (factory, whether it takes an output stride)
BACKBONES: dict[str, tuple[Callable[..., nn.Module], bool]] = {
    "resnet50": (resnet50, True),
    "resnet101": (resnet101, True),
    "resnet_tiny": (resnet_tiny, True),
    "resnet18": (resnet18, True),  # output stride 4 by default (the video methods)
    "resnet18_tiny": (resnet18_tiny, True),
    "resnet38d": (resnet38d, True),  # output stride 8 only
    "resnet38d_tiny": (resnet38d_tiny, True),
    "efficientnet_lite0": (efficientnet_lite0, False),  # ImageNet weights: efficientnet_lite0(pretrained=True)
    "vgg16_largefov": (vgg16_largefov, False),
    "vgg_tiny": (vgg_tiny, False),
    "vit_small": (vit_small, False),  # patch 16: output stride 16
    "vit_tiny": (vit_tiny, False),
}


def build_backbone(backbone: str | nn.Module, *, tiny: str, output_stride: int | None = None) -> nn.Module:
    """The backbone a method was given: a module as it is, or a registered name
    (``"tiny"`` meaning ``tiny``, the method's small stand-in for its paper's).

    Raises:
        TypeError: ``backbone`` is neither a module nor a string, or a module
            without ``out_channels``.
        ValueError: an unknown name.
    """
    if isinstance(backbone, nn.Module):
        if not isinstance(getattr(backbone, "out_channels", None), int):
            raise TypeError(f"backbone {type(backbone).__name__} needs an int attribute out_channels")
        return backbone
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be an nn.Module or a name, got {type(backbone).__name__}")
    name = tiny if backbone == "tiny" else backbone
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES) + ['tiny']} or pass a module")
    factory, takes_stride = BACKBONES[name]
    return factory(output_stride=output_stride) if takes_stride and output_stride else factory()
