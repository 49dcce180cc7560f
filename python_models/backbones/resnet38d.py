"""The wide ResNet-38 of PSA, SEAM and 1-stage-wseg ("resnet38d"; Wu, Shen &
van den Hengel, "Wider or Deeper: Revisiting the ResNet Model for Visual
Recognition", Pattern Recognition 2019, model A; ``network/resnet38d.py`` of
jiwoon-ahn/psa).

Pre-activation residual blocks (BatchNorm -> ReLU before each conv, the
shortcut projection reading the pre-activated input) in seven groups:
``conv1a`` (3x3, 64), ``b2`` .. ``b4`` (3 / 3 / 6 blocks of two 3x3 convs,
128 / 256 / 512 channels, each group's first block stride 2), ``b5`` (3
blocks, 512 -> 1024, dilation 2), ``b6`` and ``b7`` (one bottleneck block
each, 1x1 -> 3x3 -> 1x1, 2048 and 4096 channels, dilation 4, channel dropout
0.3 / 0.5), then ``bn7`` + ReLU. The stem has stride 1, so the output stride is
8; the last map has 4096 channels.

Names. Modules and parameters carry PSA's names (``conv1a.weight``,
``b2.bn_branch2a.weight``, ``b2.conv_branch2a.weight``, ``b2.conv_branch1.weight``,
``b2_1.conv_branch2b1.weight``, ``b6.conv_branch2b2.weight``, ``bn7.running_var``
...), not torchvision's: the published ResNet-38 weights (the MXNet
``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` PSA and SEAM ship) exist only
under these names once converted (PSA's ``convert_mxnet_to_torch``; or
:func:`convert_mxnet_names` on a dict of its tensors), so
``ResNet38d.load_pretrained("resnet38d.pth")`` loads them from a local file.

Stages. ``stages(x)`` returns, in this order (``forward_as_dict`` the same by
name):

    ``conv3``  256 ch, stride 4: the output of ``b3_2`` (1-stage-wseg's
               ``conv3``, its GCI's shallow features; SEAM's ``conv3`` is the
               same map after ``b4.bn_branch2a`` + ReLU);
    ``conv4``  512 ch, stride 8: the pre-activated input of ``b5`` (PSA, SEAM's PCM);
    ``conv5`` 1024 ch, stride 8: the pre-activated input of ``b6`` (PSA, SEAM's PCM);
    ``conv6`` 4096 ch, stride 8: ``relu(bn7(b7(...)))``, equal to ``forward(x)``.

So ``stages(x)[-3:]`` are PSA's ``conv4, conv5, conv6``, as ``stages(x)[1:]``
of a ResNet are ``layer2, layer3, layer4``.

Training regime. PSA keeps every BatchNorm in eval mode with its affine
parameters fixed and ``conv1a`` fixed (SEAM and 1-stage-wseg also ``b2`` ..
``b2_2``). Here the network starts untrained and BatchNorm follows the
module's mode; :meth:`ResNet38d.freeze` applies PSA's regime after loading
weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ResBlock",
    "ResBlockBottleneck",
    "ResNet38d",
    "convert_mxnet_names",
    "resnet38d",
    "resnet38d_tiny",
]


class ResBlock(nn.Module):
    """Pre-activation block of two 3x3 convs (PSA's ``ResBlock``):
    ``a = relu(bn_branch2a(x))``; ``x' = shortcut + conv_branch2b1(relu(bn_branch2b1(conv_branch2a(a))))``
    with ``shortcut = conv_branch1(a)`` (1x1, stride) when the shape changes,
    else ``x``. The first conv has the stride and ``first_dilation``, the
    second ``dilation``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 first_dilation: int | None = None, dilation: int = 1) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        self.conv_branch1 = None if self.same_shape else nn.Conv2d(in_channels, out_channels, 1, stride,
                                                                   bias=False)

    def forward(self, x: Tensor, return_input: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The block's output; with ``return_input`` also its pre-activated
        input ``relu(bn_branch2a(x))`` (PSA's ``get_x_bn_relu``)."""
        activated = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(activated)
        out = shortcut + self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(activated))))
        return (out, activated) if return_input else out


class ResBlockBottleneck(nn.Module):
    """Pre-activation bottleneck (PSA's ``ResBlock_bot``): 1x1 to out/4, 3x3
    (dilation) to out/2, 1x1 to out, each after BatchNorm + ReLU, channel
    dropout before the last two convs; the shortcut ``conv_branch1`` (1x1)
    reads the pre-activated input (PSA always projects: in != out)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if out_channels % 4 or in_channels == out_channels:
            raise ValueError(f"bottleneck needs out_channels divisible by 4 and != in_channels, "
                             f"got {in_channels} -> {out_channels}")
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_channels // 4, out_channels // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor, return_input: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The block's output; with ``return_input`` also its pre-activated
        input ``relu(bn_branch2a(x))`` (PSA's ``get_x_bn_relu``)."""
        activated = F.relu(self.bn_branch2a(x))
        branch = self.conv_branch2a(activated)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        out = self.conv_branch1(activated) + branch
        return (out, activated) if return_input else out


def _group_names(group: int, blocks: int) -> list[str]:
    """PSA's block names: ``b4, b4_1, ..., b4_5`` for group 4 with 6 blocks."""
    return [f"b{group}"] + [f"b{group}_{i}" for i in range(1, blocks)]


class ResNet38d(nn.Module):
    """Wide ResNet-38 at output stride 8 (PSA's ``resnet38d.Net`` at the defaults).

    Args:
        width: channels of ``conv1a`` (64 in the paper); every group scales
            with it (``b2`` 2w, ``b3`` 4w, ``b4`` 8w, ``b5`` 8w -> 16w, ``b6``
            32w, ``b7`` 64w).
        blocks: blocks in groups b2, b3, b4, b5 ((3, 3, 6, 3) in the paper);
            b6 and b7 have one each.
        dropout: channel dropout of b6 and b7 ((0.3, 0.5) in PSA).
        output_stride: only 8 (the network has no strided variant).

    Attributes: ``out_channels`` (64w), ``stage_channels`` (4w, 8w, 16w, 64w),
    ``stage_strides`` (4, 8, 8, 8), ``output_stride`` 8, ``block_names``.

    Shape:
        - Input: B x 3 x H x W (ImageNet-normalised RGB).
        - Output: B x 64w x ceil(H / 8) x ceil(W / 8).

    Example:
        >>> net = resnet38d_tiny()
        >>> [tuple(m.shape) for m in net.stages(torch.zeros(1, 3, 32, 32))]
        [(1, 16, 8, 8), (1, 32, 4, 4), (1, 64, 4, 4), (1, 256, 4, 4)]
    """

    def __init__(self, width: int = 64, blocks: tuple[int, int, int, int] = (3, 3, 6, 3),
                 dropout: tuple[float, float] = (0.3, 0.5), output_stride: int = 8) -> None:
        super().__init__()
        if output_stride != 8:
            raise ValueError(f"output_stride must be 8 for ResNet-38, got {output_stride}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        if len(blocks) != 4 or any(not isinstance(n, int) or n < 1 for n in blocks):
            raise ValueError(f"blocks must be four positive ints, got {blocks!r}")
        w = width
        self.output_stride = 8
        self.conv1a = nn.Conv2d(3, w, 3, padding=1, bias=False)
        names: list[str] = []
        # (group, in, mid, out, stride, first dilation, dilation)
        plain = ((2, w, 2 * w, 2 * w, 2, 1, 1), (3, 2 * w, 4 * w, 4 * w, 2, 1, 1),
                 (4, 4 * w, 8 * w, 8 * w, 2, 1, 1), (5, 8 * w, 8 * w, 16 * w, 1, 1, 2))
        for (group, cin, mid, cout, stride, first, dilation), count in zip(plain, blocks):
            for i, name in enumerate(_group_names(group, count)):
                block = (ResBlock(cin, mid, cout, stride, first, dilation) if i == 0
                         else ResBlock(cout, mid, cout, dilation=dilation))
                self.add_module(name, block)
                names.append(name)
        self.b6 = ResBlockBottleneck(16 * w, 32 * w, dilation=4, dropout=dropout[0])
        self.b7 = ResBlockBottleneck(32 * w, 64 * w, dilation=4, dropout=dropout[1])
        self.bn7 = nn.BatchNorm2d(64 * w)
        self.block_names = tuple(names + ["b6", "b7"])
        self._conv3_after = _group_names(3, blocks[1])[-1]
        self.out_channels = 64 * w
        self.stage_channels = (4 * w, 8 * w, 16 * w, 64 * w)
        self.stage_strides = (4, 8, 8, 8)
        self._frozen_bn = False

    def forward_as_dict(self, x: Tensor) -> dict[str, Tensor]:
        """PSA's ``forward_as_dict`` plus 1-stage-wseg's ``conv3``: ``{"conv3",
        "conv4", "conv5", "conv6"}`` (see the module docstring)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be B x 3 x H x W, got {tuple(x.shape)}")
        out: dict[str, Tensor] = {}
        x = self.conv1a(x)
        for name in self.block_names:
            block = getattr(self, name)
            if name in ("b5", "b6"):
                x, out["conv4" if name == "b5" else "conv5"] = block(x, return_input=True)
            else:
                x = block(x)
            if name == self._conv3_after:
                out["conv3"] = x
        out["conv6"] = F.relu(self.bn7(x))
        return {key: out[key] for key in ("conv3", "conv4", "conv5", "conv6")}

    def stages(self, x: Tensor) -> list[Tensor]:
        """``[conv3, conv4, conv5, conv6]`` (256 / 512 / 1024 / 4096 channels at
        width 64; strides 4, 8, 8, 8)."""
        return list(self.forward_as_dict(x).values())

    def forward(self, x: Tensor) -> Tensor:
        """``conv6``: B x ``out_channels`` x h x w at stride 8."""
        return self.forward_as_dict(x)["conv6"]

    def freeze(self, modules: Iterable[str] = ("conv1a",), batchnorm: bool = True) -> None:
        """PSA's training regime: fix the parameters of the named modules
        (PSA: ``conv1a``; SEAM and 1-stage-wseg add ``b2``, ``b2_1``, ``b2_2``)
        and, with ``batchnorm``, keep every BatchNorm in eval mode with fixed
        affine parameters (running statistics from the loaded weights)."""
        children = dict(self.named_children())
        for name in modules:
            if name not in children:
                raise ValueError(f"modules: ResNet38d has no module {name!r}")
            children[name].requires_grad_(False)
        if batchnorm:
            self._frozen_bn = True
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.requires_grad_(False)
            self.train(self.training)

    def train(self, mode: bool = True) -> ResNet38d:
        super().train(mode)
        if self._frozen_bn:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Load PSA's converted ResNet-38 weights (a state dict under PSA's
        names, e.g. ``convert_mxnet_to_torch("ilsvrc-cls_rna-a1_cls1000_ep-0001.params")``
        saved with ``torch.save``) from a local file; returns the keys that
        did not match (none for PSA's file, whose ImageNet ``linear1000`` is
        dropped by the conversion). BatchNorm ``num_batches_tracked`` may be absent.

        Raises:
            TypeError: the file holds no state dict.
            ValueError: the file lacks backbone keys, or a tensor's shape differs.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise TypeError(f"{path} holds a {type(state).__name__}, not a state dict")
        own = self.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} backbone keys, e.g. {missing[:3]}")
        wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise ValueError(f"{path}: {len(wrong)} tensors of another shape, e.g. {k} "
                             f"{tuple(state[k].shape)} != {tuple(own[k].shape)}")
        result = self.load_state_dict(state, strict=False)
        return list(result.unexpected_keys)


_MXNET_KEY = re.compile(r"^(?:arg:|aux:)?(res|bn)(\d)(a|b(\d+))_(branch\w+?)_(\w+)$")
_MXNET_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var",
             "mean": "running_mean", "var": "running_var"}


def convert_mxnet_names(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the tensors of the MXNet ResNet-38 checkpoint to PSA's names
    (the renaming of PSA's ``convert_mxnet_to_torch``, without MXNet: load the
    ``.params`` arrays yourself, e.g. ``mxnet.nd.load``, as tensors).

    ``res{g}a_branch2a_weight`` -> ``b{g}.conv_branch2a.weight``,
    ``res{g}b{i}_...`` -> ``b{g}_{i}.conv_...``, ``bn{g}a_branch2a_gamma`` ->
    ``b{g}.bn_branch2a.weight`` (beta / moving_mean / moving_var -> bias /
    running_mean / running_var), ``conv1a_weight`` -> ``conv1a.weight``,
    ``bn7_*`` -> ``bn7.*``; the ImageNet classifier ``linear1000_*`` is dropped;
    ``arg:`` / ``aux:`` prefixes are ignored.

    Example:
        >>> sorted(convert_mxnet_names({"arg:res4b5_branch2b1_weight": torch.zeros(1),
        ...                             "aux:bn2a_branch2a_moving_var": torch.zeros(1)}))
        ['b2.bn_branch2a.running_var', 'b4_5.conv_branch2b1.weight']

    Raises:
        ValueError: a key of another form.
    """
    renamed: dict[str, Tensor] = {}
    for key, value in params.items():
        bare = key.split(":", 1)[-1]
        if bare.startswith("linear1000"):
            continue
        if bare.startswith("conv1a"):
            renamed["conv1a.weight"] = value
            continue
        if bare.startswith("bn7_"):
            renamed["bn7." + _MXNET_BN[bare[4:]]] = value
            continue
        match = _MXNET_KEY.match(bare)
        if match is None or (match.group(1) == "bn" and match.group(6) not in _MXNET_BN):
            raise ValueError(f"params: unexpected MXNet key {key!r}")
        kind, group, _, index, branch, leaf = match.groups()
        block = f"b{group}" if index is None else f"b{group}_{index}"
        if kind == "res":
            renamed[f"{block}.conv_{branch}.weight"] = value
        else:
            renamed[f"{block}.bn_{branch}.{_MXNET_BN[leaf]}"] = value
    return renamed


def resnet38d(output_stride: int = 8) -> ResNet38d:
    """ResNet-38 as PSA / SEAM use it: width 64, blocks (3, 3, 6, 3) + b6 + b7,
    4096 output channels at stride 8 (105,070,912 parameters; PSA's ImageNet
    ``linear1000`` would add 4,097,000)."""
    return ResNet38d(64, (3, 3, 6, 3), output_stride=output_stride)


def resnet38d_tiny(output_stride: int = 8, width: int = 4) -> ResNet38d:
    """ResNet-38's layout at one block per group and width 4 (``b2``, ``b3``,
    ``b4``, ``b5``, ``b6``, ``b7``, ``bn7``; 256 output channels at stride 8):
    a CPU-sized stand-in for tests."""
    return ResNet38d(width, (1, 1, 1, 1), output_stride=output_stride)
