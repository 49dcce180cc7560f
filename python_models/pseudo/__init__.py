"""Pseudo-label rules as plain functions: CAM normalisation, Grad-CAM, dense
CRF over each image's tags, confident labels (IRNet, PSA), affinity pairs and
PSA's walk, DSRG region growing, FickleNet's seeds, box rules (Simple Does It),
ESL / SSL selection, SSSS's pseudo ground truth, RecurSeed's SCG; and the
self-supervised targets: SeLa / DeepCluster labels (k-means, PCA whitening),
Leopart's RoIAlign, attention foreground and CBFE, HN labels from depth."""

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
from python_models.pseudo.cams import (
    cams_to_labels,
    localisation_cues,
    multiscale_cams,
    normalize_cams,
    synthetic_cams,
)
from python_models.pseudo.clustering import (
    deepcluster_labels,
    kmeans,
    pca_whiten,
    sela_labels,
    uniform_cluster_sampler,
)
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
from python_models.pseudo.hn_labels import (
    backproject,
    fit_floor,
    height_and_angle,
    hn_labels,
    surface_normals,
)
from python_models.pseudo.leopart import (
    attention_foreground,
    cbfe,
    cbfe_search_cut,
    cls_attention_map,
    cluster_precisions,
    crop_intersections,
    drop_small_components,
    gaussian_blur,
    keep_attention_mass,
    roi_align,
)
from python_models.pseudo.pamr_gt import gtmask_to_labels, PAMR_DILATIONS, pseudo_gtmask, ssss_refine
from python_models.pseudo.self_correlation import scg, self_correlation

__all__ = [
    "ABSENT_ENERGY",
    "affinity_labels",
    "affinity_pair_labels",
    "alpha_crf_labels",
    "alpha_crf_unary",
    "attention_foreground",
    "backproject",
    "BOX_INNER_RATIO",
    "box_masks",
    "BOX_MIN_IOU",
    "box_pseudo_labels",
    "box_rules",
    "box_tags",
    "boxes_to_labels",
    "cams_to_labels",
    "capture_output",
    "cbfe",
    "cbfe_search_cut",
    "check_boxes",
    "cls_attention_map",
    "cluster_precisions",
    "confident_labels",
    "crf_labels",
    "crop_intersections",
    "deepcluster_labels",
    "DEEPLAB_LARGEFOV_CRF",
    "drop_small_components",
    "dsrg_grow",
    "esl_labels",
    "esl_thresholds",
    "fickle_seeds",
    "fit_floor",
    "gaussian_blur",
    "grad_cam",
    "gtmask_to_labels",
    "height_and_angle",
    "hn_labels",
    "ir_labels",
    "IRNET_CRF",
    "keep_attention_mass",
    "kmeans",
    "localisation_cues",
    "multiscale_cams",
    "normalize_cams",
    "normalized_entropy",
    "PAMR_DILATIONS",
    "pca_whiten",
    "psa_affinity_label_map",
    "psa_confident_labels",
    "PSA_CRF",
    "psa_random_walk",
    "pseudo_gtmask",
    "refine_box_labels",
    "roi_align",
    "scg",
    "sela_labels",
    "self_correlation",
    "ssl_labels",
    "ssl_thresholds",
    "ssss_refine",
    "surface_normals",
    "synthetic_cams",
    "tag_unary_from_labels",
    "tag_unary_from_probs",
    "to_uint8",
    "uniform_cluster_sampler",
    "walked_labels",
]
