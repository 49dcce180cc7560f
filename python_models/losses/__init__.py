"""The methods' losses as plain functions (kornia style): take one without its method."""

from python_models.losses.affinity import AFFINITY_EPS, affinity_loss, AFFINITY_LOSS_WEIGHTS
from python_models.losses.contrastive import info_nce, nce_normalizer, npid_nce_loss, nt_xent
from python_models.losses.dino import dino_loss, dino_teacher_targets
from python_models.losses.dsrg import balanced_seed_loss, DSRG_CRF, dsrg_crf_target, DSRG_RATIO_CLIP
from python_models.losses.irnet import (
    displacement_loss,
    IRNET_AFFINITY_WEIGHTS,
    irnet_losses,
    reduce_label_map,
)
from python_models.losses.leopart import leopart_spatial_loss
from python_models.losses.pooling import gwrp, lse_pool
from python_models.losses.pretext import (
    bigbigan_discriminator_loss,
    bigbigan_generator_loss,
    context_encoder_weights,
    gan_bce_losses,
    masked_l2,
)
from python_models.losses.puzzle import puzzle_cam_loss, puzzle_make_cam, puzzle_re_loss
from python_models.losses.reconstruction import (
    MAE_NORM_EPS,
    masked_reconstruction,
    normalized_patch_target,
    patchify,
    SIMMIM_EPS,
    unpatchify,
)
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
    SEC_TEST_CRF,
    seed_loss,
)
from python_models.losses.ssss import (
    add_background_logit,
    balanced_mask_loss,
    focal_penalty,
    ngwp,
    ssss_class_scores,
)
from python_models.losses.swav import (
    swapped_prediction,
    swav_codes,
    SWAV_EPSILON,
    SWAV_SINKHORN_ITERS,
    SWAV_TEMPERATURE,
)

__all__ = [
    "add_background_logit",
    "AFFINITY_EPS",
    "affinity_loss",
    "AFFINITY_LOSS_WEIGHTS",
    "balanced_mask_loss",
    "balanced_seed_loss",
    "bigbigan_discriminator_loss",
    "bigbigan_generator_loss",
    "constrain_loss",
    "context_encoder_weights",
    "crf_target",
    "dino_loss",
    "dino_teacher_targets",
    "displacement_loss",
    "DSRG_CRF",
    "dsrg_crf_target",
    "DSRG_RATIO_CLIP",
    "equivariant_cross_regularization",
    "equivariant_regularization",
    "expand_loss",
    "floored_softmax",
    "focal_penalty",
    "gan_bce_losses",
    "gwrp",
    "info_nce",
    "IRNET_AFFINITY_WEIGHTS",
    "irnet_losses",
    "leopart_spatial_loss",
    "lse_pool",
    "MAE_NORM_EPS",
    "map_image",
    "masked_l2",
    "masked_reconstruction",
    "max_norm",
    "max_onehot",
    "min_pooling_loss",
    "MIN_PROB",
    "nce_normalizer",
    "ngwp",
    "normalized_patch_target",
    "npid_nce_loss",
    "nt_xent",
    "patchify",
    "puzzle_cam_loss",
    "puzzle_make_cam",
    "puzzle_re_loss",
    "reduce_label_map",
    "seam_cross_term",
    "seam_losses",
    "SEC_CRF",
    "SEC_TEST_CRF",
    "seed_loss",
    "SIMMIM_EPS",
    "ssss_class_scores",
    "swapped_prediction",
    "swav_codes",
    "SWAV_EPSILON",
    "SWAV_SINKHORN_ITERS",
    "SWAV_TEMPERATURE",
    "unpatchify",
    "with_background",
]
# the video correspondence methods (colorization, CorrFlow, MAST, SS-VOS)
from python_models.losses.video import colour_cross_entropy, lab_reconstruction_loss, mast_clip_loss  # noqa: E402

__all__ += ["colour_cross_entropy", "lab_reconstruction_loss", "mast_clip_loss"]
