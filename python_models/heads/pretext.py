"""Pieces of the pretext and generative methods' networks (RotNet, Context
Prediction, Jigsaw, Exemplar-CNN, Context Encoder, BigBiGAN): the backbone's
full stride, its global average pooled features, plain MLP heads and a call
with the parameters detached (the other player of a GAN)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["PRETEXT_OUTPUT_STRIDE", "frozen_call", "mlp", "pooled_features"]

# Pretext backbones run as classifiers: the backbone's full stride (ResNet-50's 32).
PRETEXT_OUTPUT_STRIDE = 32


def pooled_features(backbone: nn.Module, normalized: Tensor) -> Tensor:
    """Global average pooled backbone features, B x D: the representation the
    pretext methods learn (the input is already normalised)."""
    return backbone(normalized).mean((2, 3))


def mlp(*dims: int) -> nn.Sequential:
    """Linear layers of sizes ``dims[0] -> dims[1] -> ... -> dims[-1]`` with a
    ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def frozen_call(module: nn.Module, *args: Tensor) -> Tensor:
    """``module(*args)`` with its parameters detached: gradients reach the
    inputs (the other player of a GAN) but not ``module``'s parameters.
    Buffers are the module's own (BatchNorm statistics update as in any call)."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, params, args)
