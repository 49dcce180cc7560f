"""A teacher that follows its student by an exponential moving average (MoCo's
key encoder, BYOL's target, DINO's teacher), with the cosine momentum
schedule of BYOL and DINO."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from python_models._checks import check_int
from python_models.backbones.vit import set_drop_path
from python_models.memory._common import check_momentum

__all__ = ["EMATeacher", "cosine_momentum", "ema_teacher"]


def cosine_momentum(step: int, max_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """DINO's / BYOL's momentum at ``step`` of ``max_steps``:
    ``final - (final - base) (cos(pi step / max_steps) + 1) / 2``, so ``base``
    at step 0 and ``final`` at ``max_steps`` (DINO ``utils.cosine_scheduler``
    with ``final = 1``: ``1 - (1 - m0) (cos(pi k / K) + 1) / 2``).

    >>> cosine_momentum(0, 10), cosine_momentum(5, 10), cosine_momentum(10, 10)
    (0.996, 0.998, 1.0)
    """
    base, final = check_momentum(base, "base"), check_momentum(final, "final")
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    step = check_int(step, "step", minimum=0)
    if step > max_steps:
        raise ValueError(f"step must be in [0, max_steps = {max_steps}], got {step}")
    value = final - (final - base) * (math.cos(math.pi * step / max_steps) + 1) / 2
    return round(value, 15)


class EMATeacher(nn.Module):
    """A frozen deep copy of ``student`` that follows it by
    ``t <- m t + (1 - m) s`` in ``update``; no gradient ever reaches it.

    Args:
        student: the module to copy (unwrap DistributedDataParallel first).
        momentum: ``m`` at step 0 (DINO 0.996, MoCo 0.999, Leopart 0.9995).
        final_momentum: ``m`` at ``max_steps`` (1.0 in DINO / BYOL; pass
            ``final_momentum=momentum`` for MoCo's constant momentum).

    ``module`` holds the copy (its parameters are in the owner's state dict,
    with ``requires_grad`` False). ``forward(*args)`` runs it under
    ``no_grad`` and changes nothing: in train mode its BatchNorm layers
    normalise with the batch's statistics (as MoCo's key encoder and DINO's
    teacher do) without updating their running statistics; ``update`` moves
    floating-point buffers (those statistics) by the same average and copies
    the others (timm's ``ModelEmaV2`` does the same).
    """

    def __init__(self, student: nn.Module, momentum: float = 0.996, final_momentum: float = 1.0) -> None:
        super().__init__()
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be an nn.Module, got {type(student).__name__}")
        self.momentum = check_momentum(momentum)
        self.final_momentum = check_momentum(final_momentum, "final_momentum")
        self.module = copy.deepcopy(student)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None

    def momentum_at(self, step: int, max_steps: int) -> float:
        """The momentum of ``update(student, step, max_steps)`` (see :func:`cosine_momentum`)."""
        return cosine_momentum(step, max_steps, self.momentum, self.final_momentum)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            norms = [m for m in self.module.modules()
                     if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
            for norm in norms:
                norm.track_running_stats = False  # batch statistics, running ones untouched
            try:
                return self.module(*args, **kwargs)
            finally:
                for norm in norms:
                    norm.track_running_stats = True

    @torch.no_grad()
    def update(self, student: nn.Module, step: int, max_steps: int) -> float:
        """``t <- m t + (1 - m) s`` for every parameter and floating-point buffer
        (others copied), ``m = momentum_at(step, max_steps)``; returns ``m``.
        Call it in ``after_step``."""
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be an nn.Module, got {type(student).__name__}")
        m = self.momentum_at(step, max_steps)
        mine = dict(self.module.named_parameters())
        theirs = dict(student.named_parameters())
        if mine.keys() != theirs.keys():
            raise ValueError("student does not have the teacher's parameters: "
                             f"{sorted(mine.keys() ^ theirs.keys())[:3]} differ")
        teacher_params = list(mine.values())
        student_params = [theirs[name].detach() for name in mine]
        if teacher_params:
            torch._foreach_mul_(teacher_params, m)
            torch._foreach_add_(teacher_params, student_params, alpha=1 - m)
        student_buffers = dict(student.named_buffers())
        for name, buffer in self.module.named_buffers():
            if name not in student_buffers:
                raise ValueError(f"student lacks the teacher's buffer {name!r}")
            source = student_buffers[name]
            if buffer.is_floating_point():
                buffer.mul_(m).add_(source.to(buffer.dtype), alpha=1 - m)
            else:
                buffer.copy_(source)
        return m

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, final_momentum={self.final_momentum}"


def ema_teacher(student: nn.Module, config: Any) -> EMATeacher:
    """The EMA copy of ``student`` (momentum ``config.momentum_teacher`` →
    ``config.final_momentum_teacher``, without stochastic depth), then the
    student's stochastic depth set to ``config.drop_path_rate`` (DINO and
    Leopart build the teacher without it)."""
    teacher = EMATeacher(student, config.momentum_teacher, config.final_momentum_teacher)
    set_drop_path(student.backbone, config.drop_path_rate)
    return teacher
