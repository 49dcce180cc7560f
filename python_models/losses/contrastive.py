"""Contrastive losses on embeddings: SimCLR's NT-Xent between two views,
MoCo's InfoNCE against a queue of keys, and NPID's noise-contrastive
estimation over a memory bank (with the Monte-Carlo estimate of its
normalising constant). Every function L2-normalises the embeddings it is
given (the published models normalise before the loss; a second
normalisation is a no-op)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_int, check_real

__all__ = ["info_nce", "nce_normalizer", "npid_nce_loss", "nt_xent"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _embeddings(value: object, name: str, *, rank: int = 2, like: Tensor | None = None,
                dim: int | None = None) -> Tensor:
    """A finite float tensor of the given rank; with ``like`` the same shape
    and dtype as it, with ``dim`` that many features in the last dimension."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != rank:
        shape = "N x D" if rank == 2 else "N x K x D"
        raise ValueError(f"{name} must be {shape} embeddings, got shape {tuple(value.shape)}")
    if like is not None:
        if value.shape != like.shape:
            raise ValueError(f"{name} must have the shape {tuple(like.shape)} of the other view, "
                             f"got {tuple(value.shape)}")
        if value.dtype != like.dtype:
            raise TypeError(f"{name} must have dtype {like.dtype} like the other view, got {value.dtype}")
    if dim is not None and value.shape[-1] != dim:
        raise ValueError(f"{name} must have {dim} features (the embedding size), got shape {tuple(value.shape)}")
    if value.shape[-1] == 0:
        raise ValueError(f"{name} has no features: shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return value


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    r"""SimCLR's normalised temperature-scaled cross-entropy (Chen et al.,
    ICML 2020, eq. 1): over the 2N embeddings of two views, each row's
    positive is its other view and the other 2N - 2 rows are its negatives,

    .. math:: \ell_{i,j} = -\log \frac{\exp(\mathrm{sim}(z_i, z_j)/\tau)}
              {\sum_{k \ne i} \exp(\mathrm{sim}(z_i, z_k)/\tau)},

    ``sim`` the cosine similarity, averaged over all 2N anchors (the paper's
    :math:`\frac{1}{2N}\sum_k [\ell(2k-1, 2k) + \ell(2k, 2k-1)]`).
    google-research/simclr ``objective.py`` returns ``loss_a + loss_b``, each
    a mean over N, which is twice this value (a factor the learning rate
    absorbs). Symmetric in the views; when all 2N embeddings are
    identical every similarity is 1 and the loss is :math:`\log(2N - 1)`,
    whatever the temperature.

    Args:
        z1, z2: N x D embeddings of the two views (row i of each from the
            same image), differentiable; normalised here.
        temperature: :math:`\tau` > 0 (SimCLR: 0.1 for ImageNet at batch
            4096, 0.5 for CIFAR-10).

    Returns:
        A scalar.

    Example:
        >>> import math, torch
        >>> z = torch.ones(3, 4)
        >>> bool(torch.isclose(nt_xent(z, z, 0.5), torch.tensor(math.log(5.0))))
        True
    """
    z1 = _embeddings(z1, "z1")
    z2 = _embeddings(z2, "z2", like=z1)
    temperature = check_real(temperature, "temperature", positive=True)
    n = z1.shape[0]
    if n == 0:
        raise ValueError("z1 is empty: need at least one pair of views")
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    itself = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(itself, float("-inf"))
    positive = torch.arange(2 * n, device=z.device).roll(n)  # row i pairs with (i + N) mod 2N
    return F.cross_entropy(logits, positive)


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.07) -> Tensor:
    r"""MoCo's InfoNCE (He et al., CVPR 2020, eq. 1; facebookresearch/moco
    ``moco/builder.py``): the logits of each query are
    :math:`[q \cdot k^+, q \cdot \mathrm{queue}_1, ..., q \cdot \mathrm{queue}_K] / \tau`
    and the loss is their cross-entropy with the positive (index 0),
    averaged over the N queries.

    Args:
        q: N x D queries, differentiable.
        k: N x D positive keys (MoCo: from the momentum encoder under
            ``no_grad``; gradients flow into ``k`` if it has them).
        queue: K x D negative keys (K >= 0), used detached.
        temperature: :math:`\tau` > 0 (MoCo v1 0.07, v2 0.2).

    All three are L2-normalised here (MoCo's queue rows are unit already).

    Returns:
        A scalar.

    Example:
        >>> import math, torch
        >>> q = torch.tensor([[1.0, 0.0]]); k = torch.tensor([[1.0, 0.0]])
        >>> queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
        >>> expected = -math.log(math.e / (math.e + 1 + math.exp(-1)))
        >>> bool(torch.isclose(info_nce(q, k, queue, 1.0), torch.tensor(expected)))
        True
    """
    q = _embeddings(q, "q")
    k = _embeddings(k, "k", like=q)
    queue = _embeddings(queue, "queue", dim=q.shape[1])
    temperature = check_real(temperature, "temperature", positive=True)
    if q.shape[0] == 0:
        raise ValueError("q is empty: need at least one query")
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    negatives = F.normalize(queue.detach().to(q.dtype), dim=1)
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def nce_normalizer(v: Tensor, noise: Tensor, temperature: float, data_size: int) -> Tensor:
    r"""NPID's Monte-Carlo estimate of the partition function (Wu et al.,
    CVPR 2018, eq. 7): :math:`Z \approx n \, \mathrm{mean}_{b,j} \exp(w_{b,j}^\top v_b / \tau)`
    over the noise rows drawn for each embedding. NPID estimates it once,
    on the first batch, and keeps it constant (zhirongw/lemniscate.pytorch
    ``lib/NCEAverage.py``, which also averages over the positive column).

    Args:
        v: B x D embeddings (normalised here).
        noise: B x K x D memory-bank rows drawn as noise for each embedding.
        temperature: :math:`\tau` > 0 (0.07).
        data_size: n, the number of instances (bank rows).

    Returns:
        A positive scalar, detached.
    """
    v = F.normalize(_embeddings(v, "v"), dim=1)
    noise = _embeddings(noise, "noise", rank=3, dim=v.shape[1])
    if noise.shape[0] != v.shape[0] or noise.shape[1] == 0:
        raise ValueError(f"noise must be B x K x D with B = {v.shape[0]} and K >= 1, got {tuple(noise.shape)}")
    temperature = check_real(temperature, "temperature", positive=True)
    data_size = check_int(data_size, "data_size", minimum=1)
    with torch.no_grad():
        scores = torch.einsum("bd,bkd->bk", v, noise.to(v.dtype)) / temperature
        # mean of exp(scores), through log-sum-exp so a large 1/tau cannot overflow
        log_mean = torch.logsumexp(scores.flatten(), dim=0) - math.log(scores.numel())
        return torch.exp(log_mean) * data_size


def npid_nce_loss(v: Tensor, positives: Tensor, negatives: Tensor, temperature: float,
                  normalizer: float | Tensor, data_size: int) -> Tensor:
    r"""NPID's noise-contrastive estimation of the non-parametric softmax
    (Wu et al., CVPR 2018, eqs. 2-6; lemniscate.pytorch ``lib/NCECriterion.py``).

    With :math:`P(i|v) = \exp(w_i^\top v/\tau) / Z` and the uniform noise
    :math:`P_n = 1/n`, a sample comes from the data with posterior
    :math:`h(i, v) = P(i|v) / (P(i|v) + K P_n)`; the loss is
    :math:`-\frac{1}{B}\sum_b [\log h(i_b, v_b) + \sum_{j=1}^{K} \log(1 - h(j_{b}, v_b))]`,
    the positive being the bank row of the sample's own index and the K
    negatives noise rows. Computed in log space (lemniscate adds 1e-7 to
    each denominator instead).

    Args:
        v: B x D embeddings, differentiable (normalised here).
        positives: B x D memory-bank rows of the samples' own indices
            (detached: the bank is no parameter).
        negatives: B x K x D memory-bank rows drawn uniformly as noise.
        temperature: :math:`\tau` > 0 (0.07).
        normalizer: Z > 0 (:func:`nce_normalizer`, fixed after the first batch).
        data_size: n, the number of instances.

    Returns:
        A scalar.
    """
    v = F.normalize(_embeddings(v, "v"), dim=1)
    positives = _embeddings(positives, "positives", dim=v.shape[1])
    negatives = _embeddings(negatives, "negatives", rank=3, dim=v.shape[1])
    if positives.shape[0] != v.shape[0]:
        raise ValueError(f"positives must be B x D with B = {v.shape[0]}, got {tuple(positives.shape)}")
    if negatives.shape[0] != v.shape[0] or negatives.shape[1] == 0:
        raise ValueError(f"negatives must be B x K x D with B = {v.shape[0]} and K >= 1, "
                         f"got {tuple(negatives.shape)}")
    temperature = check_real(temperature, "temperature", positive=True)
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1:
            raise ValueError(f"normalizer must be a scalar, got shape {tuple(normalizer.shape)}")
        normalizer = float(normalizer)
    normalizer = check_real(normalizer, "normalizer", positive=True)
    data_size = check_int(data_size, "data_size", minimum=1)
    log_z = math.log(normalizer)
    log_kpn = math.log(negatives.shape[1] / data_size)  # log(K P_n)
    positive = (v * positives.detach().to(v.dtype)).sum(dim=1) / temperature - log_z
    negative = torch.einsum("bd,bkd->bk", v, negatives.detach().to(v.dtype)) / temperature - log_z
    kpn = torch.full_like(positive, log_kpn)
    log_h_data = positive - torch.logaddexp(positive, kpn)
    log_h_noise = log_kpn - torch.logaddexp(negative, kpn[:, None].expand_as(negative))
    return -(log_h_data.sum() + log_h_noise.sum()) / v.shape[0]
