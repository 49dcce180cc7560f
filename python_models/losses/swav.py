"""SwAV's loss (Caron et al., "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020): codes of some crops from a
balanced Sinkhorn-Knopp assignment, predicted from every other crop.

Two plain functions (facebookresearch/swav ``main_swav.py``, ``train`` and
``distributed_sinkhorn``):

- :func:`swav_codes`: the codes of one crop's scores, the queue's scores
  (if any) prepended before the Sinkhorn step and only the batch's rows kept.
- :func:`swapped_prediction`: the swapped-prediction cross-entropy, averaged
  as SwAV averages it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext
from python_models._checks import check_int, check_real
from python_models.pseudo.clustering import check_matrix

__all__ = ["SWAV_EPSILON", "SWAV_SINKHORN_ITERS", "SWAV_TEMPERATURE", "swapped_prediction", "swav_codes"]

SWAV_EPSILON = 0.05  # main_swav.py --epsilon
SWAV_SINKHORN_ITERS = 3  # main_swav.py --sinkhorn_iterations
SWAV_TEMPERATURE = 0.1  # main_swav.py --temperature


@torch.no_grad()
def swav_codes(scores: Tensor, queue_scores: Tensor | None = None, epsilon: float = SWAV_EPSILON,
               n_iters: int = SWAV_SINKHORN_ITERS, process_group=None) -> Tensor:
    """SwAV's codes of one crop: ``sinkhorn_knopp([queue_scores; scores], epsilon,
    n_iters)`` with the last B rows kept (the batch's; SwAV's ``[-bs:]``).

    Args:
        scores: B x K prototype scores ``z^T C`` of the crop (detached; any float dtype,
            float16 under autocast included: the Sinkhorn step runs in the log
            domain in float32 and never overflows).
        queue_scores: Q x K scores of the queued embeddings, computed with the
            *current* prototypes, or None.
        epsilon, n_iters: Sinkhorn's regularisation and iterations (SwAV 0.05, 3).
        process_group: a torch.distributed group; each process passes its own
            rows (batch and queue) and the prototype sums run over all of them.

    Returns:
        B x K codes (float32, float64 for float64 scores), each row summing to 1.

    Example:
        >>> import torch
        >>> codes = swav_codes(torch.randn(8, 5).tanh())
        >>> codes.shape, bool(torch.allclose(codes.sum(1), torch.ones(8)))
        (torch.Size([8, 5]), True)
    """
    scores = check_matrix(scores, "scores")
    rows = scores.shape[0]
    if queue_scores is not None:
        queue_scores = check_matrix(queue_scores, "queue_scores")
        if queue_scores.shape[1] != scores.shape[1]:
            raise ValueError(f"queue_scores must have K = {scores.shape[1]} columns like scores, "
                             f"got shape {tuple(queue_scores.shape)}")
        scores = torch.cat([queue_scores.to(scores.dtype), scores])
    codes = wsss_ext.sinkhorn_knopp(scores.detach(), epsilon, n_iters, process_group=process_group)
    return codes[-rows:]


def swapped_prediction(scores: Sequence[Tensor] | Tensor, codes: Mapping[int, Tensor] | Sequence[Tensor],
                       temperature: float = SWAV_TEMPERATURE) -> Tensor:
    r"""SwAV's swapped-prediction loss.

    For every crop ``s`` with codes ``q_s`` and every other crop ``v``:
    :math:`-\frac{1}{B}\sum_b \sum_k q_{s,bk} \log \mathrm{softmax}_k(z_{v,b}^T C / \tau)`,
    summed over ``v != s`` and divided by ``V - 1``, then averaged over the
    crops that have codes (``main_swav.py``: ``loss / (sum(nmb_crops) - 1) /
    len(crops_for_assign)``).

    Args:
        scores: the V crops' prototype scores, a sequence of V tensors B x K
            (or a V x B x K tensor), V >= 2, all of the same shape.
        codes: the codes (targets, not differentiated) of the crops used for
            assignment: a mapping ``{crop index: B x K}``, or a sequence of
            tensors for crops 0, 1, ... (SwAV's default ``crops_for_assign`` [0, 1]).
        temperature: τ (SwAV 0.1), > 0.

    Returns:
        The scalar loss, in the scores' precision (at least float32).

    Example:
        >>> import torch
        >>> scores = [torch.zeros(4, 3), torch.zeros(4, 3)]   # uniform predictions
        >>> codes = [torch.full((4, 3), 1 / 3)] * 2
        >>> round(float(swapped_prediction(scores, codes)), 4)  # log 3
        1.0986
    """
    if isinstance(scores, Tensor):
        if scores.dim() != 3:
            raise ValueError(f"scores as a tensor must be V x B x K, got shape {tuple(scores.shape)}")
        scores = list(scores.unbind(0))
    if not isinstance(scores, Sequence) or len(scores) < 2:
        raise ValueError("scores must hold the prototype scores of at least 2 crops (one B x K tensor each)")
    scores = [check_matrix(s, f"scores[{v}]") for v, s in enumerate(scores)]
    shape = scores[0].shape
    for v, s in enumerate(scores):
        if s.shape != shape:
            raise ValueError(f"scores[{v}] has shape {tuple(s.shape)} but scores[0] has {tuple(shape)}: "
                             "every crop needs the same batch size and prototype count")
    if isinstance(codes, Mapping):
        pairs = [(check_int(crop, "codes key", minimum=0), q) for crop, q in codes.items()]
    elif isinstance(codes, Sequence) and not isinstance(codes, (str, bytes)):
        pairs = list(enumerate(codes))
    else:
        raise TypeError(f"codes must be a mapping crop -> B x K codes or a sequence of them, got {type(codes).__name__}")
    if not pairs:
        raise ValueError("codes is empty: give the codes of at least one crop")
    temperature = check_real(temperature, "temperature", positive=True)
    dtype = torch.promote_types(scores[0].dtype, torch.float32)
    log_probs = [F.log_softmax(s.to(dtype) / temperature, dim=1) for s in scores]
    total = scores[0].new_zeros((), dtype=dtype)
    for crop, q in pairs:
        if crop >= len(scores):
            raise ValueError(f"codes are given for crop {crop} but scores has only {len(scores)} crops")
        q = check_matrix(q, f"codes[{crop}]")
        if q.shape != shape:
            raise ValueError(f"codes[{crop}] must be B x K = {tuple(shape)} like scores, got {tuple(q.shape)}")
        q = q.detach().to(dtype)
        subloss = sum(-(q * log_probs[v]).sum(1).mean() for v in range(len(scores)) if v != crop)
        total = total + subloss / (len(scores) - 1)
    return total / len(pairs)
