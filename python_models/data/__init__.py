"""Datasets the methods train on: single-image self-supervision (Asano et al. 2020)."""

from python_models.data.single_image import (
    SINGLE_IMAGE_CROPS,
    SingleImageCrops,
    color_jitter,
)

__all__ = ["SINGLE_IMAGE_CROPS", "SingleImageCrops", "color_jitter"]
