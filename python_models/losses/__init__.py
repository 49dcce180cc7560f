"""The methods' losses as plain functions (kornia style): take one without its method."""

from python_models.losses.affinity import AFFINITY_EPS, affinity_loss, AFFINITY_LOSS_WEIGHTS
from python_models.losses.dsrg import balanced_seed_loss, DSRG_CRF, dsrg_crf_target, DSRG_RATIO_CLIP
from python_models.losses.irnet import (
    displacement_loss,
    IRNET_AFFINITY_WEIGHTS,
    irnet_losses,
    reduce_label_map,
)
from python_models.losses.pooling import gwrp, lse_pool
from python_models.losses.puzzle import puzzle_cam_loss, puzzle_make_cam, puzzle_re_loss
from python_models.losses.seam import (
    equivariant_cross_regularization,
    equivariant_regularization,
    max_norm,
    max_onehot,
    min_pooling_loss,
    seam_cross_term,
    seam_losses,
    with_background,
)
from python_models.losses.sec import (
    constrain_loss,
    crf_target,
    expand_loss,
    floored_softmax,
    map_image,
    MIN_PROB,
    SEC_CRF,
    seed_loss,
)
from python_models.losses.ssss import (
    add_background_logit,
    balanced_mask_loss,
    focal_penalty,
    ngwp,
    ssss_class_scores,
)

__all__ = [
    "add_background_logit",
    "AFFINITY_EPS",
    "affinity_loss",
    "AFFINITY_LOSS_WEIGHTS",
    "balanced_mask_loss",
    "balanced_seed_loss",
    "constrain_loss",
    "crf_target",
    "displacement_loss",
    "DSRG_CRF",
    "dsrg_crf_target",
    "DSRG_RATIO_CLIP",
    "equivariant_cross_regularization",
    "equivariant_regularization",
    "expand_loss",
    "floored_softmax",
    "focal_penalty",
    "gwrp",
    "IRNET_AFFINITY_WEIGHTS",
    "irnet_losses",
    "lse_pool",
    "map_image",
    "max_norm",
    "max_onehot",
    "min_pooling_loss",
    "MIN_PROB",
    "ngwp",
    "puzzle_cam_loss",
    "puzzle_make_cam",
    "puzzle_re_loss",
    "reduce_label_map",
    "seam_cross_term",
    "seam_losses",
    "SEC_CRF",
    "seed_loss",
    "ssss_class_scores",
    "with_background",
]
