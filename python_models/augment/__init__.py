"""Augmentations with an exact inverse or an exact mixing rule: puzzle
tile / merge (Puzzle-CAM), SEAM's rescaled view, CutMix, ClassMix,
EdgePredictMix (RecurSeed); multi-crop (SwAV, DINO, Leopart), patch masking
(MAE, SimMIM) and the pretext generators (rotations, jigsaw permutations and
tiles, patch pairs, exemplar transforms, centre masking)."""

from python_models.augment.crops import (
    check_multi_crop_views,
    multi_crop,
    multi_crop_batch,
    random_resized_box,
    random_resized_crops,
    size_groups,
)
from python_models.augment.epm import (
    canny_edges,
    certain_labels,
    edge_predict,
    edge_predict_mix,
    EdgePredictMixResult,
)
from python_models.augment.masking import (
    gather_tokens,
    PatchMasking,
    random_masking,
    restore_tokens,
    simmim_mask,
    upsample_mask,
)
from python_models.augment.mix import classmix, classmix_masks, cutmix, cutmix_box
from python_models.augment.pretext import (
    centre_box,
    check_class_indices,
    CONTEXT_NEIGHBOURS,
    drop_channels,
    exemplar_transforms,
    jigsaw_permutations,
    jigsaw_tiles,
    JigsawTiles,
    mask_centre,
    patch_pairs,
    PatchPairs,
    PATHAK_FILL,
    rotations,
    shuffle_tiles,
    standardize_tiles,
)
from python_models.augment.puzzle import puzzle_merge, puzzle_tile
from python_models.augment.views import check_views, random_views, rescale, two_view_batch

__all__ = [
    "canny_edges",
    "centre_box",
    "certain_labels",
    "check_class_indices",
    "check_multi_crop_views",
    "check_views",
    "classmix",
    "classmix_masks",
    "CONTEXT_NEIGHBOURS",
    "cutmix",
    "cutmix_box",
    "drop_channels",
    "edge_predict",
    "edge_predict_mix",
    "EdgePredictMixResult",
    "exemplar_transforms",
    "gather_tokens",
    "jigsaw_permutations",
    "jigsaw_tiles",
    "JigsawTiles",
    "mask_centre",
    "multi_crop",
    "multi_crop_batch",
    "patch_pairs",
    "PatchMasking",
    "PatchPairs",
    "PATHAK_FILL",
    "puzzle_merge",
    "puzzle_tile",
    "random_masking",
    "random_resized_box",
    "random_resized_crops",
    "random_views",
    "rescale",
    "restore_tokens",
    "rotations",
    "shuffle_tiles",
    "simmim_mask",
    "size_groups",
    "standardize_tiles",
    "two_view_batch",
    "upsample_mask",
]
# colour spaces and targets of the video correspondence methods
from python_models.augment.colour import (  # noqa: E402
    channel_dropout,
    colour_centroids,
    grayscale_lab,
    lab_to_rgb,
    normalize_lab,
    quantize_colours,
    rgb_to_lab,
)

__all__ += ["channel_dropout", "colour_centroids", "grayscale_lab", "lab_to_rgb", "normalize_lab",
            "quantize_colours", "rgb_to_lab"]
