"""Augmentations with an exact inverse or an exact mixing rule: puzzle
tile / merge (Puzzle-CAM), SEAM's rescaled view, CutMix, ClassMix and
EdgePredictMix (RecurSeed)."""

from python_models.augment.epm import (
    canny_edges,
    certain_labels,
    edge_predict,
    edge_predict_mix,
    EdgePredictMixResult,
)
from python_models.augment.mix import classmix, classmix_masks, cutmix, cutmix_box
from python_models.augment.puzzle import puzzle_merge, puzzle_tile
from python_models.augment.views import rescale

__all__ = [
    "canny_edges",
    "certain_labels",
    "classmix",
    "classmix_masks",
    "cutmix",
    "cutmix_box",
    "edge_predict",
    "edge_predict_mix",
    "EdgePredictMixResult",
    "puzzle_merge",
    "puzzle_tile",
    "rescale",
]
