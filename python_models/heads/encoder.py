"""A backbone, global average pooling and a head: the encoder of the
two-view contrastive methods (SimCLR, MoCo, NPID)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["GlobalPoolEncoder"]


class GlobalPoolEncoder(nn.Module):
    """A backbone, global average pooling and a head: images (normalised)
    to B x out embeddings; ``features(x)`` is the pooled B x C representation."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
