"""``wsss-ext train``'s loop: any registered WSSS method on a tagged dataset,
through its contract (``losses(batch, step)``, one optimizer step,
``after_step(step, max_steps)``), checkpointed every epoch, resumable, and
data-parallel under ``torchrun``.

Data: every image is resized to ``image_size`` x ``image_size`` (bilinear,
antialiased) rather than cropped, so its tags stay true of what the network
sees, and flipped horizontally at random. Epoch e's order and flips come from
a generator seeded with (seed, e), and the incomplete last batch is dropped
(as irn and psa's loaders do), so an epoch's batches depend on nothing but
the seed: a run resumed after epoch e continues exactly as an uninterrupted
one (with the model's, optimizer's, schedule's and RNGs' states from the
checkpoint).

Extra batch keys (``train_run``'s ``extras``: a second stage's labels from
a CAM run, :mod:`wsss_app.pipeline.second_stage`) are per-image tensors
indexed like the dataset; a batch takes its images' rows, flipped along the
last dimension with the flipped images, so they follow the same order,
shares and resume.

Processes: under ``torchrun`` each of the W processes takes its share
(every W-th image) of each global batch of ``batch_size`` images, and the
model is wrapped in DistributedDataParallel through :class:`MethodLosses`
(whose ``forward`` returns the method's losses, so DDP's hooks see every
parameter ``losses`` uses). A process's loss is weighted by its share of the
batch before DDP averages the gradients, so the update equals one process's
on the whole batch for losses that are means over the batch, up to the order
of float sums. The logged terms are the global batch's (summed over processes).

BatchNorm (``batch_norm``): ``local`` normalises by each process's own
images (exact with one process; with several it is the usual DDP behaviour
and differs from one process); ``sync`` converts to ``SyncBatchNorm`` (CUDA
only: torch has no CPU implementation), which equals one process; ``frozen``
keeps every BatchNorm in eval mode (running statistics as a fixed affine
map, its scale and shift still trained), as irn and psa train their ResNets,
and equals one process on any device. The default is ``sync`` for several
CUDA processes and ``local`` otherwise.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_app.pipeline.datasets import SYNTHETIC, TaggedDataset
from wsss_app.pipeline.optimizers import build_optimizer, optimizer_settings
from wsss_app.pipeline.runs import (build_method, load_checkpoint, read_log, save_checkpoint, write_config,
                                    write_log)
from wsss_ext.distributed import gather_objects

__all__ = ["BATCH_NORM_MODES", "DATA_KEYS", "MethodLosses", "check_trainable", "new_run_config", "train_run"]

BATCH_NORM_MODES = ("local", "sync", "frozen")

# The batch keys a dataset of tagged images provides.
DATA_KEYS = ("images", "labels")

# Fallbacks when a method's DEFAULTS do not give its recipe (irn's CAM step, run_sample.py: cam_num_epoches 5,
# cam_batch_size 16, cam_crop_size 512).
DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE, DEFAULT_IMAGE_SIZE = 5, 16, 512


class MethodLosses(nn.Module):
    """``forward(batch, step)`` is ``method.losses(batch, step)``: the module
    DistributedDataParallel wraps, so its hooks see the method's parameters
    (DDP only hooks ``forward``)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Mapping[str, Tensor], step: int) -> dict[str, Tensor]:
        return self.method.losses(batch, step)


def check_trainable(key: str, extra_keys: Iterable[str] = (), hint: str = "") -> type:
    """The class of WSSS method ``key``, if a tagged dataset can train it.

    Raises:
        ValueError: an unknown key, a method that is not a WSSS method, or one
            whose batches need keys beyond images, tags and ``extra_keys``
            (naming them, then ``hint``).
    """
    from python_models import METHODS, WSSSMethod

    wsss = sorted(name for name, cls in METHODS.items() if issubclass(cls, WSSSMethod))
    if key not in METHODS:
        raise ValueError(f"unknown method {key!r}; the WSSS methods are {wsss}")
    cls = METHODS[key]
    if not issubclass(cls, WSSSMethod):
        raise ValueError(f"method {key!r} is not a WSSS method (it yields no CAMs); the WSSS methods are {wsss}")
    missing = [name for name in cls.BATCH_KEYS if name not in DATA_KEYS and name not in tuple(extra_keys)]
    if missing:
        described = "; ".join(f"{name!r}: {cls.BATCH_KEYS[name]}" for name in missing)
        raise ValueError(f"method {key!r} trains on batches with {missing} ({described}), which a dataset of "
                         f"images and image-level tags does not provide" + (f"; {hint}" if hint else ""))
    return cls


def new_run_config(key: str, dataset: TaggedDataset, *, epochs: int | None = None, batch_size: int | None = None,
                   image_size: int | None = None, lr: float | None = None, seed: int = 0,
                   backbone: str | None = None, batch_norm: str | None = None, overrides: Mapping[str, Any] = (),
                   world_size: int = 1, device: str = "cpu", extra_keys: Iterable[str] = (),
                   extra_config: Mapping[str, Any] = ()) -> dict[str, Any]:
    """The config of a new run of method ``key`` on ``dataset``: unset settings
    take the method's published recipe (``max_epochs`` / ``epochs``,
    ``batch_size``, ``crop_size``) or irn's CAM recipe. Builds the method once
    to check the overrides and resolve its optimizer. ``extra_keys``: the
    batch keys the caller provides beyond images and tags (``train_run``'s
    ``extras``); ``extra_config``: more config entries (``cam_run``)."""
    defaults = check_trainable(key, extra_keys).DEFAULTS
    epochs = _positive("--epochs", epochs, defaults.get("max_epochs", defaults.get("epochs", DEFAULT_EPOCHS)))
    batch_size = _positive("--batch-size", batch_size, defaults.get("batch_size", DEFAULT_BATCH_SIZE))
    image_size = _positive("--image-size", image_size, defaults.get("crop_size", DEFAULT_IMAGE_SIZE))
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a positive number, got {lr}")
    if batch_norm is not None and batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"--batch-norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
    if batch_norm is None:
        batch_norm = "sync" if world_size > 1 and str(device).startswith("cuda") else "local"
    method_overrides = {"num_classes": dataset.num_classes, **({"backbone": backbone} if backbone else {}),
                        **dict(overrides)}
    config = {"method": key, "overrides": method_overrides, "classes": list(dataset.classes),
              "data": dataset.root if dataset.root == SYNTHETIC else str(Path(dataset.root).resolve()),
              "split": dataset.split, "images": len(dataset), "image_size": image_size, "epochs": epochs,
              "batch_size": batch_size, "seed": int(seed), "batch_norm": batch_norm, **dict(extra_config)}
    try:
        method = build_method(config)
    except TypeError as error:  # Method.__init__ names the unknown keyword
        raise ValueError(f"--set: {error}") from error
    config["optimizer"] = optimizer_settings(method, lr)
    return config


def _positive(flag: str, value: int | None, default: int) -> int:
    value = default if value is None else value
    if int(value) != value or value < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value}")
    return int(value)


# --- the loop --------------------------------------------------------------------------------------------


class _Resized(torch.utils.data.Dataset):
    """(index, 3 x S x S float image in [0, 1]) of each sample."""

    def __init__(self, dataset: TaggedDataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        try:
            pixels = self.dataset.read_image(index)
        except ValueError as error:  # as a plain ValueError, which a DataLoader worker can send back
            raise ValueError(str(error)) from None
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
        image = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)
        return index, image[0].clamp(0, 1)


def resized_images(dataset: TaggedDataset, size: int) -> torch.utils.data.Dataset:
    """(index, 3 x S x S float image in [0, 1]) of each sample: what the loop trains on, before flips."""
    return _Resized(dataset, size)


def epoch_plan(seed: int, epoch: int, n_images: int, batch_size: int) -> tuple[list[Tensor], Tensor]:
    """Epoch ``epoch``'s global batches (index tensors, the incomplete last one
    dropped) and every image's flip, from a generator seeded with (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_images, generator=generator)
    flips = torch.rand(n_images, generator=generator) < 0.5
    steps = n_images // batch_size
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)], flips


def _set_train_mode(method: nn.Module, batch_norm: str) -> None:
    method.train()
    if batch_norm == "frozen":
        for module in method.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _batches(loader: Iterable) -> Iterable:
    """The loader's batches; a worker's error comes back as the one-line
    ValueError it raised (torch wraps it in a traceback)."""
    try:
        yield from loader
    except ValueError as error:
        last = str(error).strip().splitlines()[-1]
        raise ValueError(last.removeprefix("ValueError: ")) from error


def train_run(run_dir: str | os.PathLike, config: dict[str, Any], dataset: TaggedDataset, *, resume: bool = False,
              device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1, workers: int = 0,
              progress: bool = False, extras: Mapping[str, Tensor] | None = None,
              init: Any = None, flippers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the run ``config`` describes on
    ``dataset``, writing ``run_dir``'s files on rank 0; see the module docstring.

    Args:
        extras: more per-image batch keys (N x ... tensors indexed like the
            dataset, unflipped): each batch takes its images' rows, and the
            rows of flipped images flipped along their last dimension.
        flippers: ``name -> fn(rows)``, the mirror image of extras that are
            not maps (boxes); default ``rows.flip(-1)``.
        init: ``init(method)`` on a fresh (not resumed) run's method after
            it is built (a second stage's backbone copy).

    Returns:
        ``{"epochs": epochs done, "steps": steps done, "loss": the last epoch's mean loss}``.
    """
    run_dir, device = Path(run_dir), torch.device(device)
    epochs, batch_size, seed = config["epochs"], config["batch_size"], config["seed"]
    if batch_size < world_size:
        raise ValueError(f"--batch-size {batch_size} is smaller than the {world_size} processes: each needs an image")
    if len(dataset) < batch_size:
        raise ValueError(f"--batch-size {batch_size} is larger than the {len(dataset)} training images")
    if config["batch_norm"] == "sync" and world_size > 1 and device.type != "cuda":
        raise ValueError("--batch-norm sync needs CUDA (torch has no CPU SyncBatchNorm); use frozen or local")
    steps_per_epoch = len(dataset) // batch_size
    total_steps = epochs * steps_per_epoch

    torch.manual_seed(seed)  # the same initial weights in every process and every fresh run
    method = build_method(config)
    if init is not None and not resume:
        init(method)
    if config["batch_norm"] == "sync" and world_size > 1:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # same state-dict keys as BatchNorm
    method.to(device)
    optimizer, schedule = build_optimizer(method, config["optimizer"], total_steps)
    first_epoch, step, steps_log, epochs_log = 0, 0, [], []
    if resume:
        state = load_checkpoint(run_dir)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        first_epoch, step = int(state["epoch"]), int(state["step"])
        rngs = state["rng"]
        _set_rng_state(rngs[rank] if len(rngs) == world_size else rngs[0], device)
        steps_log, epochs_log = read_log(run_dir)
        # An epoch interrupted after its last checkpoint left rows the resumed run writes again.
        steps_log = [row for row in steps_log if row["step"] < step]
        epochs_log = [row for row in epochs_log if row["epoch"] <= first_epoch]
    elif rank == 0:
        write_config(run_dir, config)

    module: nn.Module = MethodLosses(method)
    if world_size > 1:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            # a method may leave parameters out of a step's loss (IRNet's frozen backbone, SSSS before its mask loss)
            find_unused_parameters=True)
    images = _Resized(dataset, config["image_size"])
    tags = dataset.tags()
    extras = dict(extras or {})
    for name, value in extras.items():
        if len(value) != len(dataset):
            raise ValueError(f"extras[{name!r}] holds {len(value)} items for {len(dataset)} images")
    for epoch in range(first_epoch, epochs):
        batches, flips = epoch_plan(seed, epoch, len(dataset), batch_size)
        shards = [batch[rank::world_size].tolist() for batch in batches]
        loader = torch.utils.data.DataLoader(images, batch_sampler=shards, num_workers=workers)
        bar = _progress(loader, progress and rank == 0, epoch, epochs)
        _set_train_mode(method, config["batch_norm"])
        started, sums = time.perf_counter(), {}
        for indices, pixels in _batches(bar):
            pixels = torch.where(flips[indices].view(-1, 1, 1, 1), pixels.flip(-1), pixels)
            batch = {"images": pixels.to(device), "labels": tags[indices].to(device)}
            for name, value in extras.items():
                rows, flipped = value[indices], flips[indices]
                mirrored = (flippers or {}).get(name, lambda r: r.flip(-1))(rows)
                rows = torch.where(flipped.view(-1, *[1] * (rows.dim() - 1)), mirrored, rows)
                batch[name] = rows.to(device)
            terms = module(batch, step)
            share = len(indices) / batch_size
            loss = terms["loss"] * (share * world_size)  # DDP averages over processes: this makes it the batch mean
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                   **_global_terms(terms, share, world_size)}
            schedule.step()
            method.after_step(step, total_steps)
            step += 1
            if not math.isfinite(row["loss"]):
                raise ValueError(f"the loss became {row['loss']} at step {row['step']} (epoch {epoch + 1}); "
                                 f"lower --lr (it was {config['optimizer']['lr']})")
            steps_log.append(row)
            for name, value in row.items():
                if name not in ("epoch", "step", "lr"):
                    sums[name] = sums.get(name, 0.0) + value
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{row['loss']:.4f}")
        epochs_log.append({"epoch": epoch + 1, "steps": step, "seconds": time.perf_counter() - started,
                           **{name: total / len(batches) for name, total in sums.items()}})
        rngs = gather_objects(_rng_state(device), world_size)
        if rank == 0:
            # The log first: a checkpoint never claims an epoch its log lacks.
            write_log(run_dir, steps_log, epochs_log)
            save_checkpoint(run_dir, {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                                      "schedule": schedule.state_dict(), "epoch": epoch + 1, "step": step,
                                      "rng": rngs, "world_size": world_size})
    method.eval()
    return {"epochs": epochs, "steps": step, "loss": epochs_log[-1]["loss"] if epochs_log else float("nan"),
            "method": method}


def _global_terms(terms: Mapping[str, Tensor], share: float, world_size: int) -> dict[str, float]:
    """Each scalar loss term of the whole global batch: the processes' terms
    weighted by their share of it and summed (one all-reduce per step)."""
    names = [name for name, value in terms.items() if torch.is_tensor(value) and value.numel() == 1]
    values = torch.stack([terms[name].detach().float().reshape(()) for name in names]) * share
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
    return dict(zip(names, values.tolist()))


def _progress(loader, enabled: bool, epoch: int, epochs: int):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="step", file=sys.stderr, leave=True)
