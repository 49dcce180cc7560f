"""Augmentations with an exact inverse or an exact mixing rule: puzzle
tile / merge (Puzzle-CAM), SEAM's rescaled view, CutMix and ClassMix."""

from python_models.augment.mix import classmix, classmix_masks, cutmix, cutmix_box
from python_models.augment.puzzle import puzzle_merge, puzzle_tile
from python_models.augment.views import rescale

__all__ = ["classmix", "classmix_masks", "cutmix", "cutmix_box", "puzzle_merge", "puzzle_tile", "rescale"]
