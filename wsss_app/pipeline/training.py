"""A plain training loop for any registered method, through its contract:
``losses(batch, step)``, one optimizer step, ``after_step(step, max_steps)``.
Used by the demo and the method benchmarks; ``wsss-ext train`` builds on it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["bar", "fit", "to_unit"]


def to_unit(images: Tensor) -> Tensor:
    """uint8 images to the methods' input: float RGB in [0, 1]."""
    return images.float() / 255


def bar(iterable, enabled: bool, **kwargs):
    """``tqdm(iterable)`` when ``enabled``, else the iterable itself."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def fit(model: nn.Module, images: Tensor, tags: Tensor, *, epochs: int, batch_size: int, learning_rate: float,
        seed: int = 0, device: str | torch.device = "cpu", extras: Mapping[str, Tensor] | None = None,
        progress: bool = False, desc: str = "training") -> list[float]:
    """Train ``model`` on N uint8 images (N x 3 x H x W) with their tags (N x C):
    AdamW (weight decay 1e-4) with a one-cycle schedule, shuffled batches,
    random horizontal flips.

    Args:
        extras: more per-image inputs of the method's batch (first dimension
            N, e.g. ``{"affinity_labels": ...}``); maps (rank >= 3) are
            flipped with their images.

    Returns:
        The mean loss of every epoch. The model is left in eval mode.
    """
    device = torch.device(device)
    extras = dict(extras or {})
    for name, value in extras.items():
        if value.shape[0] != len(images):
            raise ValueError(f"extras[{name!r}] holds {value.shape[0]} items for {len(images)} images")
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = epochs * -(-len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    losses, step = [], 0
    model.train()
    for _ in bar(range(epochs), progress, desc=desc, unit="epoch"):
        order = torch.randperm(len(images), generator=generator)
        epoch_loss = 0.0
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            flip = (torch.rand(len(index), generator=generator) < 0.5).to(device)
            batch = {"images": to_unit(images[index].to(device)), "labels": tags[index].to(device)}
            batch.update({name: value[index].to(device) for name, value in extras.items()})
            for name, value in batch.items():
                if name == "images" or value.dim() >= 3:
                    value[flip] = value[flip].flip(-1)
            loss = model.losses(batch, step)["loss"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            model.after_step(step, steps)
            step += 1
            epoch_loss += float(loss.detach()) * len(index)
        losses.append(epoch_loss / len(images))
    model.eval()
    return losses
