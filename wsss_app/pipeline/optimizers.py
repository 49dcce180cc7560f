"""The optimizer and learning-rate schedule ``wsss-ext train`` gives a method.

A method that states its published optimizer settings in ``DEFAULTS``
(``lr`` or ``base_lr``, with ``weight_decay`` and ``momentum`` where given)
gets them: SGD with momentum (0.9 unless the method says), over the method's
own parameter groups when it defines ``param_groups()`` /
``parameter_groups()`` (IRNet's displacement branch at 10 x lr; parameters
no group names at the base rate), and its
paper's schedule: polynomial decay to zero with power ``poly_power`` (0.9,
PSA / SEAM / IRNet's ``PolyOptimizer``), a step decay by ``lr_gamma`` every
``lr_step`` steps (SEC, DSRG's Caffe solvers), or a constant rate (SSSS,
``voc_resnet38.yaml``). The papers' extra multipliers for newly added layers
(x10 / x20) are not applied: they assume an ImageNet-pretrained backbone.

A method without such settings (CAM, Grad-CAM, Puzzle-CAM, ...) gets this
program's default: AdamW at 1e-3 with weight decay 1e-4 and the same
polynomial decay, which trains the randomly initialised backbones this
library builds. ``--lr`` replaces the base rate in either case (a method's
groups keep their ratios).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_LR", "DEFAULT_WEIGHT_DECAY", "build_optimizer", "optimizer_settings"]

DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 1e-4

# Methods whose paper keeps the rate constant (the rest decay it).
_CONSTANT_RATE = {"ssss"}


def optimizer_settings(method: nn.Module, lr: float | None = None) -> dict[str, Any]:
    """What :func:`build_optimizer` will build for ``method``, as a JSON-ready dict
    (stored in the run's config)."""
    config = vars(method.config)
    published = next((config[key] for key in ("lr", "base_lr") if key in config), None)
    if published is None:
        return {"name": "adamw", "lr": DEFAULT_LR if lr is None else float(lr), "weight_decay": DEFAULT_WEIGHT_DECAY,
                "schedule": "poly", "poly_power": 0.9, "source": "wsss-ext default"}
    settings = {"name": "sgd", "lr": float(published if lr is None else lr), "published_lr": float(published),
                "momentum": float(config.get("momentum", 0.9)), "weight_decay": float(config.get("weight_decay", 0.0)),
                "source": f"{method.KEY}'s DEFAULTS"}
    if method.KEY in _CONSTANT_RATE:
        settings["schedule"] = "constant"
    elif "lr_step" in config and "lr_gamma" in config:
        settings.update(schedule="step", lr_step=int(config["lr_step"]), lr_gamma=float(config["lr_gamma"]))
    else:
        settings.update(schedule="poly", poly_power=float(config.get("poly_power", 0.9)))
    return settings


def _parameter_groups(method: nn.Module, settings: dict[str, Any]) -> list[dict[str, Any]]:
    groups_of = getattr(method, "param_groups", None) or getattr(method, "parameter_groups", None)
    if settings["name"] != "sgd" or not callable(groups_of):
        return [{"params": [p for p in method.parameters() if p.requires_grad]}]
    scale = settings["lr"] / settings["published_lr"]
    groups, grouped = [], set()
    for group in groups_of():
        group = dict(group, params=[p for p in group["params"] if p.requires_grad])
        if "lr" in group:
            group["lr"] = group["lr"] * scale
        groups.append(group)
        grouped.update(id(p) for p in group["params"])
    # Parameters the method's groups leave out (IRNet's backbone when it trains it) at the base rate: a frozen
    # one gets no gradient, and SGD leaves a parameter without one alone (no weight decay either).
    rest = [p for p in method.parameters() if p.requires_grad and id(p) not in grouped]
    return [group for group in groups if group["params"]] + ([{"params": rest}] if rest else [])


def build_optimizer(method: nn.Module, settings: dict[str, Any], total_steps: int):
    """``(optimizer, scheduler)`` for ``settings`` (from :func:`optimizer_settings`)
    over ``total_steps`` optimizer steps; the scheduler steps once per step."""
    groups = _parameter_groups(method, settings)
    if not groups:
        raise ValueError(f"{type(method).__name__} has no trainable parameter")
    if settings["name"] == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=settings["lr"], weight_decay=settings["weight_decay"])
    else:
        optimizer = torch.optim.SGD(groups, lr=settings["lr"], momentum=settings["momentum"],
                                    weight_decay=settings["weight_decay"])
    schedule = settings["schedule"]
    if schedule == "poly":
        power, total = settings["poly_power"], max(total_steps, 1)
        factor = lambda step: (1 - min(step, total) / total) ** power  # noqa: E731
    elif schedule == "step":
        every, gamma = settings["lr_step"], settings["lr_gamma"]
        factor = lambda step: gamma ** (step // every)  # noqa: E731
    else:
        factor = lambda step: 1.0  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
