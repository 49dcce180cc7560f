"""Pseudo-label rules as plain functions: CAM normalisation, Grad-CAM, dense
CRF over each image's tags, confident labels (IRNet, PSA), DSRG region
growing, FickleNet's seeds, box rules (Simple Does It), ESL / SSL selection."""

from python_models.pseudo.boxes import (
    BOX_INNER_RATIO,
    BOX_MIN_IOU,
    DEEPLAB_LARGEFOV_CRF,
    box_masks,
    box_pseudo_labels,
    box_rules,
    box_tags,
    boxes_to_labels,
    check_boxes,
    refine_box_labels,
)
from python_models.pseudo.cams import cams_to_labels, multiscale_cams, normalize_cams
from python_models.pseudo.confident import (
    IRNET_CRF,
    PSA_CRF,
    alpha_crf_labels,
    alpha_crf_unary,
    confident_labels,
    psa_confident_labels,
)
from python_models.pseudo.crf import (
    ABSENT_ENERGY,
    crf_labels,
    tag_unary_from_labels,
    tag_unary_from_probs,
    to_uint8,
)
from python_models.pseudo.esl import (
    esl_labels,
    esl_thresholds,
    normalized_entropy,
    ssl_labels,
    ssl_thresholds,
)
from python_models.pseudo.fickle import fickle_seeds
from python_models.pseudo.grad_cam import capture_output, grad_cam
from python_models.pseudo.grow import dsrg_grow

__all__ = [
    "ABSENT_ENERGY",
    "BOX_INNER_RATIO",
    "BOX_MIN_IOU",
    "DEEPLAB_LARGEFOV_CRF",
    "IRNET_CRF",
    "PSA_CRF",
    "alpha_crf_labels",
    "alpha_crf_unary",
    "box_masks",
    "box_pseudo_labels",
    "box_rules",
    "box_tags",
    "boxes_to_labels",
    "cams_to_labels",
    "capture_output",
    "check_boxes",
    "confident_labels",
    "crf_labels",
    "dsrg_grow",
    "esl_labels",
    "esl_thresholds",
    "fickle_seeds",
    "grad_cam",
    "multiscale_cams",
    "normalize_cams",
    "normalized_entropy",
    "psa_confident_labels",
    "refine_box_labels",
    "ssl_labels",
    "ssl_thresholds",
    "tag_unary_from_labels",
    "tag_unary_from_probs",
    "to_uint8",
]
