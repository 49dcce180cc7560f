"""The CAM head (Zhou et al., CVPR 2016): a 1 x 1 classifier without bias on
the backbone's features. Global average pooling and the classifier commute, so
the logits are the spatial mean of the raw class activation maps."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CAMHead"]


class CAMHead(nn.Module):
    """``forward(features) -> raw CAMs``: B x C_in x h x w to B x classes x h x w.

    ``logits(features)`` is their spatial mean (GAP then the classifier).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1, bias=False)

    @property
    def weight(self) -> Tensor:
        """num_classes x in_channels x 1 x 1."""
        return self.classifier.weight

    def forward(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def logits(self, features: Tensor) -> Tensor:
        return self.classifier(features).mean((2, 3))
