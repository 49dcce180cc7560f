"""The methods' losses as plain functions (kornia style): take one without its method."""

from python_models.losses.dsrg import DSRG_CRF, DSRG_RATIO_CLIP, balanced_seed_loss, dsrg_crf_target
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
    MIN_PROB,
    SEC_CRF,
    constrain_loss,
    crf_target,
    expand_loss,
    floored_softmax,
    map_image,
    seed_loss,
)

__all__ = [
    "DSRG_CRF",
    "DSRG_RATIO_CLIP",
    "MIN_PROB",
    "SEC_CRF",
    "balanced_seed_loss",
    "constrain_loss",
    "crf_target",
    "dsrg_crf_target",
    "equivariant_cross_regularization",
    "equivariant_regularization",
    "expand_loss",
    "floored_softmax",
    "gwrp",
    "lse_pool",
    "map_image",
    "max_norm",
    "max_onehot",
    "min_pooling_loss",
    "puzzle_cam_loss",
    "puzzle_make_cam",
    "puzzle_re_loss",
    "seam_cross_term",
    "seam_losses",
    "seed_loss",
    "with_background",
]
