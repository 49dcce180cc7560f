"""Pseudo-label selection for self-training in domain adaptation:
ESL's entropy rule (Saporta et al., "ESL: Entropy-guided Self-supervised
Learning for Domain Adaptation in Semantic Segmentation", CVPR-W 2020) and
BDL's confidence rule (Li et al., "Bidirectional Learning for Domain
Adaptation of Semantic Segmentation", CVPR 2019, ``SSL.py``).

Both take the softmax of a segmentation network over K classes (no
background-first convention: labels are class indices 0 .. K - 1 and
``ignore_index`` (255) marks the pixels left out) and choose, per predicted
class, a threshold from the whole chunk of images passed together (ESL's
``MAX_MEDIAN_BATCH`` images, BDL's whole target set), not per image.

The "median" is the one both published scripts take: the sorted values'
element at index ``round(n / 2)`` (half to even, numpy's and torch's
rounding), i.e. the upper median for an even count. A class nobody predicts
gets threshold 0 (it selects nothing anyway).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from python_models._checks import check_int, check_probs, check_real

__all__ = ["esl_labels", "esl_thresholds", "normalized_entropy", "ssl_labels", "ssl_thresholds"]


def _check_distribution(probs: object, name: str = "probs") -> Tensor:
    probs = check_probs(probs, name)
    if probs.shape[1] < 2:
        raise ValueError(f"{name} must hold K >= 2 classes (B x K x H x W), got shape {tuple(probs.shape)}")
    if probs.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(probs.shape)}")
    sums = probs.double().sum(1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        raise ValueError(f"{name} must sum to 1 over its K classes (dim 1, a softmax), got sums in "
                         f"[{float(sums.min()):.4g}, {float(sums.max()):.4g}]")
    return probs


def normalized_entropy(probs: Tensor) -> Tensor:
    """H = -Σ_k p_k log p_k / log K per pixel (0 log 0 = 0), in [0, 1].

    Args:
        probs: B x K x H x W probabilities summing to 1 over dim 1 (K >= 2).

    Returns:
        B x H x W, in probs' dtype (computed in float64).

    Example:
        >>> import torch
        >>> p = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).T.reshape(1, 2, 1, 2)
        >>> normalized_entropy(p)
        tensor([[[0., 1.]]])
    """
    probs = _check_distribution(probs)
    values = probs.double()
    entropy = -torch.xlogy(values, values).sum(1) / math.log(probs.shape[1])
    return (entropy.clamp(0, 1) + 0.0).to(probs.dtype)  # + 0.0: no -0.0


def _class_medians(values: Tensor, predicted: Tensor, num_classes: int) -> Tensor:
    """K thresholds: per class, sorted values of its pixels at index round(n / 2); 0 for an empty class."""
    thresholds = torch.zeros(num_classes, dtype=torch.float64, device=values.device)
    values, predicted = values.flatten().double(), predicted.flatten()
    for c in range(num_classes):
        chosen = values[predicted == c]
        if chosen.numel():
            index = int(torch.round(torch.tensor(chosen.numel() * 0.5)))
            thresholds[c] = torch.sort(chosen).values[min(index, chosen.numel() - 1)]
    return thresholds


def esl_thresholds(probs: Tensor, floor: float = 0.1) -> Tensor:
    """ESL's per-class entropy thresholds t_c = max(median H of the pixels predicted c, floor).

    The floor is a lower bound (valeoai/ESL ``esl_UDA.py``: ``thres[thres <
    0.1] = 0.1``, ``cfg.ESL.THRESHOLD = 0.1``): pixels with entropy at most
    ``floor`` are always kept.

    Args:
        probs: B x K x H x W softmax probabilities of the chunk.
        floor: the lower bound (0.1 in ESL).

    Returns:
        K thresholds (float64); classes no pixel predicts get ``floor``.
    """
    probs = _check_distribution(probs)
    floor = check_real(floor, "floor")
    medians = _class_medians(normalized_entropy(probs), probs.argmax(1), probs.shape[1])
    return medians.clamp(min=floor)


def esl_labels(probs: Tensor, floor: float = 0.1, ignore_index: int = 255) -> Tensor:
    """ESL's pseudo-labels: the argmax class, ``ignore_index`` where the
    normalised entropy exceeds its class's threshold (:func:`esl_thresholds`).

    Args:
        probs: B x K x H x W softmax probabilities of a chunk of target images
            (the thresholds are taken over all of them).
        floor: lower bound of the thresholds (0.1).
        ignore_index: label of the discarded pixels (255).

    Returns:
        B x H x W int64: class index in [0, K) or ``ignore_index``.

    Example:
        >>> import torch
        >>> p0 = torch.tensor([0.98, 0.9, 0.7, 0.6])
        >>> p = torch.stack([p0, 1 - p0]).reshape(1, 2, 1, 4)
        >>> esl_labels(p)   # class 0's threshold: entropy 0.88 (index 2 of 0.14, 0.47, 0.88, 0.97)
        tensor([[[  0,   0,   0, 255]]])
    """
    probs = _check_distribution(probs)
    ignore_index = check_int(ignore_index, "ignore_index")
    thresholds = esl_thresholds(probs, floor)
    predicted = probs.argmax(1)
    entropy = normalized_entropy(probs).double()
    return torch.where(entropy > thresholds[predicted], torch.full_like(predicted, ignore_index), predicted)


def ssl_thresholds(probs: Tensor, cap: float = 0.9) -> Tensor:
    """BDL's per-class confidence thresholds t_c = min(median max-probability of
    the pixels predicted c, cap) (liyunsheng13/BDL ``SSL.py``: ``thres[thres >
    0.9] = 0.9``). Classes no pixel predicts get 0.

    Args:
        probs: B x K x H x W softmax probabilities. cap: the upper bound (0.9).

    Returns:
        K thresholds (float64).
    """
    probs = _check_distribution(probs)
    cap = check_real(cap, "cap")
    confidence, predicted = probs.max(1)
    return _class_medians(confidence, predicted, probs.shape[1]).clamp(max=cap)


def ssl_labels(probs: Tensor, cap: float = 0.9, ignore_index: int = 255) -> Tensor:
    """BDL's SSL pseudo-labels: the argmax class where its probability is at
    least its class's threshold (:func:`ssl_thresholds`), else ``ignore_index``.

    Args:
        probs: B x K x H x W softmax probabilities of a chunk.
        cap: upper bound of the thresholds (0.9). ignore_index: 255.

    Returns:
        B x H x W int64: class index in [0, K) or ``ignore_index``.

    Example:
        >>> import torch
        >>> p0 = torch.tensor([0.98, 0.9, 0.7, 0.6])
        >>> p = torch.stack([p0, 1 - p0]).reshape(1, 2, 1, 4)
        >>> ssl_labels(p)   # class 0's threshold: confidence 0.9 (index 2 of 0.6, 0.7, 0.9, 0.98)
        tensor([[[  0,   0, 255, 255]]])
    """
    probs = _check_distribution(probs)
    ignore_index = check_int(ignore_index, "ignore_index")
    thresholds = ssl_thresholds(probs, cap)
    confidence, predicted = probs.max(1)
    keep = confidence.double() >= thresholds[predicted]
    return torch.where(keep, predicted, torch.full_like(predicted, ignore_index))
