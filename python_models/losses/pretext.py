"""Losses of the generative pretext tasks: the context encoder's weighted
masked L2 and its adversarial (non-saturating BCE) terms (Pathak et al. 2016),
and BigBiGAN's hinge losses with unary x, z and joint terms (Donahue &
Simonyan 2019). The classification pretext tasks (rotation, relative
position, jigsaw, exemplar) use plain cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_float, check_int, check_real

__all__ = [
    "bigbigan_discriminator_loss",
    "bigbigan_generator_loss",
    "context_encoder_weights",
    "gan_bce_losses",
    "masked_l2",
]


def context_encoder_weights(height: int, width: int, overlap: int = 4, overlap_weight: float = 10.0,
                            *, device: torch.device | str | None = None) -> Tensor:
    """Pathak et al.'s per-pixel L2 weights, H x W: 0 outside the centre box
    (:func:`python_models.augment.centre_box`), ``overlap_weight`` (10,
    ``overlapL2Weight`` of context-encoder ``train.lua``) on its border ring of
    ``overlap`` pixels, which the input still shows, and 1 inside.

    >>> context_encoder_weights(8, 8, overlap=1)[2].tolist()
    [0.0, 0.0, 10.0, 10.0, 10.0, 10.0, 0.0, 0.0]
    """
    from python_models.augment.pretext import centre_box

    overlap = check_int(overlap, "overlap", minimum=0)
    overlap_weight = check_real(overlap_weight, "overlap_weight")
    y0, y1, x0, x1 = centre_box(height, width)
    weights = torch.zeros(height, width, device=device)
    weights[y0:y1, x0:x1] = overlap_weight
    weights[y0 + overlap:y1 - overlap, x0 + overlap:x1 - overlap] = 1.0
    return weights


def masked_l2(prediction: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Weighted squared error over the pixels with a weight, averaged over them:
    ``Σ w (prediction − target)² / (C · #{w > 0})`` (per image and channel
    elements, as Torch's MSECriterion over the predicted centre).

    Pixels of weight 0 do not enter: changing the prediction there leaves the
    loss unchanged. Pathak's generator minimises ``0.999 · masked_l2`` with the
    weights of :func:`context_encoder_weights`.

    Shape: prediction and target B x C x H x W; weights H x W, 1 x 1 x H x W or
    B x 1 x H x W, >= 0.
    """
    prediction, target = check_float(prediction, "prediction"), check_float(target, "target")
    weights = check_float(weights, "weights")
    if prediction.dim() != 4 or prediction.shape != target.shape:
        raise ValueError(f"prediction and target must be equal B x C x H x W, got {tuple(prediction.shape)} "
                         f"and {tuple(target.shape)}")
    if weights.dim() == 2:
        weights = weights[None, None]
    if weights.dim() != 4 or weights.shape[1] != 1 or weights.shape[-2:] != prediction.shape[-2:] or \
            weights.shape[0] not in (1, prediction.shape[0]):
        raise ValueError(f"weights must be H x W or B x 1 x H x W matching {tuple(prediction.shape)}, "
                         f"got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or bool((weights < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    weights = weights.to(prediction.dtype).expand(prediction.shape[0], 1, *prediction.shape[-2:])
    count = (weights > 0).sum() * prediction.shape[1]
    return (weights * (prediction - target) ** 2).sum() / count.clamp(min=1)


def gan_bce_losses(real_logits: Tensor, fake_logits_discriminator: Tensor,
                   fake_logits_generator: Tensor) -> tuple[Tensor, Tensor]:
    """The standard GAN's (non-saturating) cross-entropy terms, as Pathak's
    context encoder trains them (``nn.BCECriterion`` on a sigmoid, here on
    logits): ``(generator, discriminator)`` with

    - generator = BCE(D(G), real): −mean log σ(fake_logits_generator);
    - discriminator = BCE(D(x), real) + BCE(D(G), fake):
      −mean log σ(real) − mean log(1 − σ(fake_logits_discriminator)).

    The two fake arguments are the same scores computed twice, once with the
    generator's output detached (for the discriminator) and once with the
    discriminator's parameters detached (for the generator), so one backward of
    the sum gives each player the gradient of its own term.
    """
    real = check_float(real_logits, "real_logits")
    fake_d = check_float(fake_logits_discriminator, "fake_logits_discriminator")
    fake_g = check_float(fake_logits_generator, "fake_logits_generator")
    generator = F.binary_cross_entropy_with_logits(fake_g, torch.ones_like(fake_g))
    discriminator = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                     + F.binary_cross_entropy_with_logits(fake_d, torch.zeros_like(fake_d)))
    return generator, discriminator


def _scores(value: object, name: str) -> Tensor:
    value = check_float(value, name)
    if value.dim() != 2 or value.shape[1] != 3:
        raise ValueError(f"{name} must be B x 3 scores (s_x, s_z, s_xz), got shape {tuple(value.shape)}")
    return value


def bigbigan_generator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """BigBiGAN's encoder / generator loss (Donahue & Simonyan 2019, eq. 4-5):
    ``L_EG = E_x[s_x + s_z + s_xz](x, E(x)) − E_z[s_x + s_z + s_xz](G(z), z)``,
    i.e. ℓ_EG(x, z, y) = y (s_x + s_z + s_xz) with y = +1 for the encoder's pairs
    and −1 for the generator's. E and G minimise it: they push the scores of
    (x, E(x)) down and those of (G(z), z) up (no hinge on this side).

    Shape: real_scores, fake_scores B x 3 (the unary x, unary z and joint scores).

    >>> bigbigan_generator_loss(torch.tensor([[1., 2., 3.]]), torch.tensor([[0.5, 0., -1.]])).item()
    6.5
    """
    real, fake = _scores(real_scores, "real_scores"), _scores(fake_scores, "fake_scores")
    return real.sum(1).mean() - fake.sum(1).mean()


def bigbigan_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """BigBiGAN's discriminator loss: the hinge h(t) = max(0, 1 − t) applied to
    each score separately,
    ``L_D = E_x[Σ_k h(s_k(x, E(x)))] + E_z[Σ_k h(−s_k(G(z), z))]`` over
    k ∈ {x, z, xz}. D minimises it (real pairs above +1, fake pairs below −1).

    >>> bigbigan_discriminator_loss(torch.tensor([[2., 0., -1.]]), torch.tensor([[-2., 0., 1.]])).item()
    6.0
    """
    real, fake = _scores(real_scores, "real_scores"), _scores(fake_scores, "fake_scores")
    return F.relu(1 - real).sum(1).mean() + F.relu(1 + fake).sum(1).mean()
