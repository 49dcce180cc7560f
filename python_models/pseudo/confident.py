"""Confident pseudo-labels from CAMs with a dense CRF run twice, once eager
and once reluctant to call a pixel background; they agree on the confident
pixels and the rest is ignored:

- IRNet (Ahn et al., CVPR 2019, ``step/cam_to_ir_label.py``): constant
  background scores 0.30 and 0.05 (:func:`confident_labels`);
- PSA / AffinityNet (Ahn & Kwak, CVPR 2018, ``infer_cls.py``) and SEAM:
  background ``(1 - max)^alpha`` with alpha 4 and 24 (:func:`alpha_crf_labels`,
  :func:`psa_confident_labels`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

import wsss_ext
from python_models._checks import check_probs, check_real, check_tags
from python_models.pseudo.cams import cams_to_labels
from python_models.pseudo.crf import crf_labels, tag_unary_from_labels, tag_unary_from_probs, to_uint8

__all__ = [
    "IRNET_CRF",
    "PSA_CRF",
    "affinity_labels",
    "alpha_crf_labels",
    "alpha_crf_unary",
    "confident_labels",
    "ir_labels",
    "psa_confident_labels",
]

# irn misc/imutils.py crf_inference_label: gaussian sxy 3 compat 3, bilateral sxy 50 srgb 5 compat 10, 10 iterations.
IRNET_CRF = dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=50.0, bilateral_srgb=5.0,
                 bilateral_weight=10.0)


def confident_labels(images: Tensor, cams: Tensor, labels: Tensor, fg_threshold: float = 0.30,
                     bg_threshold: float = 0.05, crf: Mapping | None = None, ignore_index: int = 255) -> Tensor:
    """Foreground where the CRF of the seed at ``fg_threshold`` says a class,
    background where the CRF of the seed at ``bg_threshold`` also says
    background, ``ignore_index`` elsewhere.

    Each seed is the argmax of [constant background score, CAMs] over the
    image's tags, refined by ``unary_from_labels`` (gt_prob 0.7) and
    ``wsss_ext.dense_crf`` over the present labels.

    Args:
        images: B x 3 x H x W float RGB in [0, 1] (or uint8).
        cams: B x C x H x W normalised CAMs at the images' size.
        labels: B x C tags.
        fg_threshold, bg_threshold: IRNet's conf_fg_thres 0.30 and conf_bg_thres 0.05.
        crf: ``dense_crf`` settings (default :data:`IRNET_CRF`).

    Returns:
        B x H x W int64: 0 background, c + 1 for tag column c, ``ignore_index``.
    """
    if not 0 <= bg_threshold <= fg_threshold:
        raise ValueError(f"need 0 <= bg_threshold <= fg_threshold, got {bg_threshold} and {fg_threshold}")
    settings = dict(IRNET_CRF if crf is None else crf)
    refined = [crf_labels(images, tag_unary_from_labels(cams_to_labels(cams, labels, threshold), labels, 0.7, None),
                          **settings) for threshold in (fg_threshold, bg_threshold)]
    foreground, background = refined
    result = torch.where(foreground == 0, torch.full_like(foreground, ignore_index), foreground)
    return torch.where((foreground == 0) & (background == 0), torch.zeros_like(result), result)


# psa tool/imutils.py crf_inference (SEAM's is the same; scale_factor 1, t 10):
# gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10.
PSA_CRF = dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
               bilateral_weight=10.0)


def alpha_crf_unary(cams: Tensor, labels: Tensor, alpha: float) -> Tensor:
    """The energies of PSA's / SEAM's ``_crf_with_alpha``: background score
    ``(1 - max_c cams)^alpha`` before the tagged CAMs, ``-log(clip(p, 1e-5, 1))``
    (pydensecrf's ``unary_from_softmax``), untagged classes at
    :data:`python_models.pseudo.ABSENT_ENERGY` (so the CRF runs over the present labels only).

    Args:
        cams: B x C x H x W normalised CAMs in [0, 1], zero outside the tags.
        labels: B x C tags.
        alpha: SEAM's 4 (low, more background) or 24 (high, less background).

    Returns:
        B x (1 + C) x H x W float32 energies, background first.
    """
    cams = check_probs(cams, "cams")
    labels = check_tags(labels, cams.shape[0], cams.shape[1])
    alpha = check_real(alpha, "alpha", positive=True)
    tagged = cams.detach().float() * labels[..., None, None]
    background = (1 - tagged.amax(1, keepdim=True)).clamp(min=0) ** alpha
    return tag_unary_from_probs(torch.cat([background, tagged], 1), labels)


def alpha_crf_labels(images: Tensor, cams: Tensor, labels: Tensor, alphas: Sequence[float] = (4.0, 24.0),
                     crf: Mapping | None = None) -> list[Tensor]:
    """The argmax of ``wsss_ext.dense_crf`` on :func:`alpha_crf_unary` for each alpha,
    all alphas in one batched call.

    Args:
        images: B x 3 x H x W float RGB in [0, 1] (or uint8), at the CAMs' size.
        cams, labels: as :func:`alpha_crf_unary`.
        alphas: background powers (SEAM ``infer_SEAM.py``: 4 and 24).
        crf: ``dense_crf`` settings (default :data:`PSA_CRF`).

    Returns:
        One B x H x W int64 label map per alpha (0 background, c + 1 for tag column c).
    """
    if not alphas:
        raise ValueError("alphas must name at least one background power")
    unary = torch.cat([alpha_crf_unary(cams, labels, alpha) for alpha in alphas])
    image = images if images.dtype == torch.uint8 else to_uint8(images)
    q = wsss_ext.dense_crf(unary, image.repeat(len(alphas), 1, 1, 1), **dict(PSA_CRF if crf is None else crf))
    return list(q.argmax(1).chunk(len(alphas)))


def psa_confident_labels(low: Tensor, high: Tensor, ignore_index: int = 255) -> Tensor:
    """PSA's rule for the affinity labels (psa / SEAM ``voc12/data.py`` ``VOC12AffDataset``):
    the low-alpha label, except ``ignore_index`` where the low-alpha CRF says
    background, and background where the high-alpha CRF says background. So a
    pixel is foreground where the background-friendly CRF still calls it
    foreground, background where the background-shy CRF still calls it
    background, and ignored where the two disagree about background.

    Args:
        low, high: B x H x W int64 label maps of the low- and high-alpha CRFs.

    Example:
        >>> import torch
        >>> psa_confident_labels(torch.tensor([[0, 0, 2, 2]]), torch.tensor([[0, 1, 1, 0]]))
        tensor([[  0, 255,   2,   0]])
    """
    if not isinstance(low, Tensor) or not isinstance(high, Tensor):
        raise TypeError("low and high must be torch.Tensor label maps")
    if low.shape != high.shape:
        raise ValueError(f"low {tuple(low.shape)} and high {tuple(high.shape)} must have the same shape")
    if low.dtype.is_floating_point or high.dtype.is_floating_point:
        raise TypeError(f"low and high must be integer label maps, got {low.dtype} and {high.dtype}")
    result = torch.where(low == 0, torch.full_like(low, ignore_index), low)
    return torch.where(high == 0, torch.zeros_like(result), result)


def ir_labels(cams: Tensor, images: Tensor, labels: Tensor, fg: float = 0.30, bg: float = 0.05,
              crf: Mapping | None = None, ignore_index: int = 255) -> Tensor:
    """IRNet's IR labels (``step/cam_to_ir_label.py``): :func:`confident_labels`
    at ``conf_fg_thres`` 0.30 and ``conf_bg_thres`` 0.05 with IRNet's CRF.

    Args:
        cams: B x C x H x W normalised CAMs at the images' size.
        images: B x 3 x H x W float RGB in [0, 1] (or uint8). labels: B x C tags.

    Returns:
        B x H x W int64: 0 background, c + 1 for tag column c, ``ignore_index`` between.
    """
    return confident_labels(images, cams, labels, fg, bg, crf, ignore_index)


def affinity_labels(cams: Tensor, images: Tensor, labels: Tensor, alphas: Sequence[float] = (4.0, 24.0),
                    crf: Mapping | None = None, ignore_index: int = 255) -> Tensor:
    """PSA's affinity labels (``infer_cls.py`` then ``VOC12AffDataset``): the
    dense CRFs of the CAMs with background ``(1 - max)^alpha`` at the low and
    high alpha, combined by :func:`psa_confident_labels`.

    Args:
        cams: B x C x H x W normalised CAMs at the images' size, zero outside the tags.
        images: B x 3 x H x W float RGB in [0, 1] (or uint8). labels: B x C tags.
        alphas: (low, high): PSA's 4 and 24 (32 in some of its scripts).
        crf: ``dense_crf`` settings (default :data:`PSA_CRF`).

    Returns:
        B x H x W int64: 0 background, c + 1, ``ignore_index`` where the two CRFs disagree.
    """
    if len(alphas) != 2:
        raise ValueError(f"alphas must be (low, high), got {tuple(alphas)}")
    low, high = alpha_crf_labels(images, cams, labels, alphas, crf)
    return psa_confident_labels(low, high, ignore_index)
