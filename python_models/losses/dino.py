"""DINO's self-distillation loss (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021; facebookresearch/dino
``main_dino.py``, ``DINOLoss``).

The teacher's outputs of the global views are centred and sharpened,
``P_t = softmax((g_t - c) / τ_t)``, the student's outputs of every view
softened, ``P_s = softmax(g_s / τ_s)``, and the loss is the cross-entropy
``H(P_t, P_s) = -Σ_k P_t log P_s`` averaged over the batch and over every
(teacher view, student view) pair whose views differ: a view is never
compared with itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_real
from python_models.losses.swav import swapped_prediction

__all__ = ["dino_loss", "dino_teacher_targets"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _views(value: object, name: str) -> list[Tensor]:
    """A sequence of B x K tensors (or one V x B x K tensor) as a list of B x K tensors."""
    if isinstance(value, Tensor):
        if value.dim() != 3:
            raise ValueError(f"{name} must be V x B x K or a sequence of B x K tensors, got shape "
                             f"{tuple(value.shape)}")
        value = list(value.unbind(0))
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise TypeError(f"{name} must be a non-empty sequence of B x K tensors, got {type(value).__name__}")
    views = list(value)
    for index, view in enumerate(views):
        if not isinstance(view, Tensor):
            raise TypeError(f"{name}[{index}] must be a torch.Tensor, got {type(view).__name__}")
        if view.dtype not in _FLOATS:
            raise TypeError(f"{name}[{index}] must be a float tensor, got dtype {view.dtype}")
        if view.dim() != 2 or view.shape[0] == 0 or view.shape[1] == 0:
            raise ValueError(f"{name}[{index}] must be B x K with B, K >= 1, got shape {tuple(view.shape)}")
        if view.shape != views[0].shape:
            raise ValueError(f"{name} views must share one shape B x K; {name}[{index}] is "
                             f"{tuple(view.shape)}, {name}[0] is {tuple(views[0].shape)}")
        if not torch.isfinite(view).all():
            raise ValueError(f"{name}[{index}] has NaN or infinite values")
    return views


def dino_teacher_targets(teacher: Sequence[Tensor] | Tensor, centre: Tensor | None,
                         teacher_temperature: float) -> list[Tensor]:
    """The teacher's centred, sharpened probabilities ``softmax((g_t - c) / τ_t)``
    per view (detached: the teacher gets no gradient).

    Args:
        teacher: G teacher outputs, each B x K (or one G x B x K tensor).
        centre: K or 1 x K centre ``c``; None for no centring.
        teacher_temperature: τ_t > 0 (0.04 in DINO).

    Returns:
        a list of G tensors B x K, rows summing to 1.

    >>> import torch
    >>> targets = dino_teacher_targets([torch.tensor([[1.0, 0.0]])], torch.tensor([1.0, 0.0]), 1.0)
    >>> targets[0].tolist()   # centred to [0, 0]: uniform
    [[0.5, 0.5]]
    """
    views = _views(teacher, "teacher")
    teacher_temperature = check_real(teacher_temperature, "teacher_temperature", positive=True)
    k = views[0].shape[1]
    if centre is not None:
        if not isinstance(centre, Tensor):
            raise TypeError(f"centre must be a torch.Tensor or None, got {type(centre).__name__}")
        if centre.numel() != k or centre.dim() not in (1, 2):
            raise ValueError(f"centre must be K or 1 x K with K = {k}, got shape {tuple(centre.shape)}")
        centre = centre.detach().reshape(1, k)
    targets = []
    for view in views:
        logits = view.detach() if centre is None else view.detach() - centre.to(view.dtype)
        targets.append(F.softmax(logits / teacher_temperature, dim=-1))
    return targets


def dino_loss(student: Sequence[Tensor] | Tensor, teacher: Sequence[Tensor] | Tensor, centre: Tensor | None,
              student_temperature: float = 0.1, teacher_temperature: float = 0.04) -> Tensor:
    """DINO's loss: ``H(softmax((g_t - c) / τ_t), softmax(g_s / τ_s))`` averaged
    over the batch and the pairs of different views.

    Args:
        student: V student outputs, each B x K (logits of DINO's head), the G
            global views first, in the teacher's order, then the local views
            (or one V x B x K tensor).
        teacher: G teacher outputs of the global views, each B x K
            (detached: no gradient reaches the teacher).
        centre: K or 1 x K centre ``c`` (DINO's ``center`` buffer), or None.
        student_temperature: τ_s (0.1).
        teacher_temperature: τ_t (0.04; DINO can warm it up, see
            :class:`python_models.methods.DINO`).

    Returns:
        a scalar: the sum of the G (V - 1) pair terms divided by their count
        (:func:`python_models.losses.swapped_prediction` of the student's
        outputs and the teacher's targets: SwAV averages the same way).

    Shape:
        - student: V x (B x K); teacher: G x (B x K), G <= V; centre: (K,) or (1, K)
        - output: ()

    Example:
        >>> import torch
        >>> s = [torch.zeros(1, 2), torch.zeros(1, 2)]
        >>> t = [torch.zeros(1, 2), torch.zeros(1, 2)]
        >>> round(float(dino_loss(s, t, torch.zeros(2))), 4)   # uniform vs uniform: log 2
        0.6931
    """
    student_views = _views(student, "student")
    targets = dino_teacher_targets(teacher, centre, teacher_temperature)
    student_temperature = check_real(student_temperature, "student_temperature", positive=True)
    if targets[0].shape != student_views[0].shape:
        raise ValueError(f"teacher views are {tuple(targets[0].shape)} but student views are "
                         f"{tuple(student_views[0].shape)}; both must be B x K")
    if len(targets) > len(student_views) or len(student_views) < 2:
        raise ValueError(f"student must hold at least 2 views and at least as many as teacher; got "
                         f"{len(student_views)} student and {len(targets)} teacher views")
    # SwAV's averaging, sum over (i, v != i) / (G (V - 1)), is DINO's mean over its n_loss_terms pairs.
    return swapped_prediction(student_views, targets, student_temperature)
