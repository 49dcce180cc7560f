"""Pseudo-label rules as plain functions: CAM normalisation, Grad-CAM, dense
CRF over each image's tags, confident labels (IRNet, PSA), affinity pairs and
PSA's walk, DSRG region growing, FickleNet's seeds, box rules (Simple Does It),
ESL / SSL selection, SSSS's pseudo ground truth, RecurSeed's SCG."""

from python_models.pseudo.affinity_pairs import (
    affinity_pair_labels,
    psa_affinity_label_map,
    psa_random_walk,
    walked_labels,
)
from python_models.pseudo.boxes import (
    BOX_INNER_RATIO,
    box_masks,
    BOX_MIN_IOU,
    box_pseudo_labels,
    box_rules,
    box_tags,
    boxes_to_labels,
    check_boxes,
    DEEPLAB_LARGEFOV_CRF,
    refine_box_labels,
)
from python_models.pseudo.cams import cams_to_labels, multiscale_cams, normalize_cams
from python_models.pseudo.confident import (
    affinity_labels,
    alpha_crf_labels,
    alpha_crf_unary,
    confident_labels,
    ir_labels,
    IRNET_CRF,
    psa_confident_labels,
    PSA_CRF,
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
from python_models.pseudo.pamr_gt import gtmask_to_labels, PAMR_DILATIONS, pseudo_gtmask, ssss_refine
from python_models.pseudo.self_correlation import scg, self_correlation

__all__ = [
    "ABSENT_ENERGY",
    "affinity_labels",
    "affinity_pair_labels",
    "alpha_crf_labels",
    "alpha_crf_unary",
    "BOX_INNER_RATIO",
    "box_masks",
    "BOX_MIN_IOU",
    "box_pseudo_labels",
    "box_rules",
    "box_tags",
    "boxes_to_labels",
    "cams_to_labels",
    "capture_output",
    "check_boxes",
    "confident_labels",
    "crf_labels",
    "DEEPLAB_LARGEFOV_CRF",
    "dsrg_grow",
    "esl_labels",
    "esl_thresholds",
    "fickle_seeds",
    "grad_cam",
    "gtmask_to_labels",
    "ir_labels",
    "IRNET_CRF",
    "multiscale_cams",
    "normalize_cams",
    "normalized_entropy",
    "PAMR_DILATIONS",
    "psa_affinity_label_map",
    "psa_confident_labels",
    "PSA_CRF",
    "psa_random_walk",
    "pseudo_gtmask",
    "refine_box_labels",
    "scg",
    "self_correlation",
    "ssl_labels",
    "ssl_thresholds",
    "ssss_refine",
    "tag_unary_from_labels",
    "tag_unary_from_probs",
    "to_uint8",
    "walked_labels",
]
