"""Jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual
Representations by Solving Jigsaw Puzzles", ECCV 2016): shuffle the 3 x 3
tiles of an image by one of P fixed permutations and classify which."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images, check_int
from python_models.augment.pretext import (
    check_class_indices,
    jigsaw_permutations,
    jigsaw_tiles,
    shuffle_tiles,
    standardize_tiles,
)
from python_models.heads.pretext import PRETEXT_OUTPUT_STRIDE, mlp, pooled_features
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["Jigsaw"]


@register
class Jigsaw(Method):
    """The context-free network (CFN): 9 tiles, each through one shared tower
    (backbone, pooling, fc6), concatenated in puzzle order, then fc7 and fc8
    classify the permutation index; cross-entropy (``permutation`` = ``loss``).

    The permutation set (buffer ``permutations``, num_classes x 9) is
    :func:`python_models.augment.jigsaw_permutations` (greedy maximal mean
    Hamming distance, first one from ``permutation_seed``). Tiles are made by
    the data pipeline (``example_batch`` shows how): 3 x 3 cells, a random
    crop of 64/75 of the cell in each (:func:`python_models.augment.jigsaw_tiles`),
    shuffled (:func:`python_models.augment.shuffle_tiles`): batch ``tiles``
    B x 9 x 3 x c x c and ``permutations`` B int64. With ``standardize`` each
    tile is normalised on its own (mean 0, std 1 per channel, as the paper's
    per-tile normalisation), otherwise with the ImageNet statistics.
    ``forward(images)`` returns the tower's pooled features B x D.

    Defaults (paper, Sec. 3 and 4.2):
        num_classes 1000 permutations (the paper's default of its 100-1000 study);
        crop_fraction 64 / 75 (64-px crops in 75-px cells of a 225-px crop);
        tile_dim 1024 (fc6 per tile), hidden_dim 4096 (fc7);
        standardize True; permutation_seed 0 (the paper draws its first
            permutation at random; its published set is a file we do not ship);
        backbone "resnet50": the paper's tower is AlexNet (stride-2 conv1);
            Kolesnikov et al. (CVPR 2019) and Goyal et al. (ICCV 2019)
            re-implement jigsaw on ResNet-50.

    Kernels: none (none of wsss_ext's six kernels applies to jigsaw puzzles).
    """

    KEY = "jigsaw"
    PAPER = ("Noroozi & Favaro, Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles, "
             "ECCV 2016")
    DEFAULTS = dict(num_classes=1000, backbone="resnet50", crop_fraction=64 / 75, tile_dim=1024, hidden_dim=4096,
                    standardize=True, permutation_seed=0)
    KERNELS = ()
    BATCH_KEYS = {
        "tiles": "B x 9 x 3 x c x c float RGB in [0, 1]: the shuffled puzzle, position i holding "
                 "tile permutations[p, i]",
        "permutations": "B int64 in [0, num_classes): the permutation index p of each puzzle",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        count = check_int(self.config.num_classes, "num_classes", minimum=2)  # permutations
        self.register_buffer("permutations", jigsaw_permutations(count, self.config.permutation_seed))
        self.backbone = self.build_backbone(PRETEXT_OUTPUT_STRIDE)
        self.fc6 = nn.Sequential(nn.Linear(self.backbone.out_channels, int(self.config.tile_dim)),
                                 nn.ReLU(inplace=True))
        self.classifier = mlp(9 * int(self.config.tile_dim), int(self.config.hidden_dim), count)

    def forward(self, images: Tensor) -> Tensor:
        """Pooled tower features B x D of images (or tiles) in [0, 1]."""
        return pooled_features(self.backbone, self.normalize(check_images(images)))

    def permutation_logits(self, tiles: Tensor) -> Tensor:
        """B x num_classes logits of puzzles B x 9 x 3 x c x c in [0, 1]."""
        flat = tiles.flatten(0, 1)
        flat = standardize_tiles(flat) if self.config.standardize else self.normalize(flat)
        per_tile = self.fc6(pooled_features(self.backbone, flat))
        return self.classifier(per_tile.view(tiles.shape[0], -1))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        tiles = batch["tiles"]
        if not isinstance(tiles, Tensor) or tiles.dim() != 5 or tiles.shape[1:3] != (9, 3):
            raise ValueError(f"tiles must be B x 9 x 3 x c x c, got "
                             f"{tuple(tiles.shape) if isinstance(tiles, Tensor) else type(tiles).__name__}")
        check_images(tiles.flatten(0, 1), "tiles")
        labels = check_class_indices(batch["permutations"], tiles.shape[0], self.config.num_classes,
                                     "permutations")
        loss = F.cross_entropy(self.permutation_logits(tiles), labels)
        return {"permutation": loss, "loss": loss}

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic images, their tiles and a uniformly drawn permutation of each."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 3, g)["images"]
        tiles = jigsaw_tiles(images, self.config.crop_fraction, generator=g).tiles
        labels = torch.randint(0, self.config.num_classes, (batch_size,), generator=g)
        return {"images": images, "tiles": shuffle_tiles(tiles, self.permutations, labels), "permutations": labels}
