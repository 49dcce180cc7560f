"""A training run on disk: what ``wsss-ext train`` writes and ``cams``,
``pseudo-labels`` and ``refine`` read back.

A run folder holds

- ``config.json``: the method key and its overrides (``num_classes``,
  ``backbone``, any ``--set``), the class names, the data it was trained on
  and every training setting (epochs, batch size, image size, optimizer,
  seed, BatchNorm mode), enough to rebuild the method and to resume;
- ``checkpoint.pt``: after every epoch, the method's state dict, the
  optimizer's and the schedule's, the epochs and steps done, and each
  process's RNG states;
- ``log.csv`` (one row per optimizer step: epoch, step, learning rate, every
  loss term) and ``log.json`` (the same steps, and each epoch's mean terms).

Every file is written through :func:`wsss_ext.io.atomic_write` (a temporary
file beside it, renamed over it), so an interrupted run leaves the previous
epoch's files whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wsss_ext.io import atomic_write

__all__ = ["CHECKPOINT", "CONFIG", "LOG_CSV", "LOG_JSON", "build_method", "load_checkpoint", "load_run",
           "read_config", "read_log", "save_checkpoint", "write_config", "write_log"]

CONFIG, CHECKPOINT, LOG_CSV, LOG_JSON = "config.json", "checkpoint.pt", "log.csv", "log.json"

# The config keys a run cannot do without (cams / pseudo-labels / refine rebuild the method from them).
_REQUIRED = ("method", "overrides", "classes")


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


# --- config ----------------------------------------------------------------------------------------------


def write_config(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> None:
    _write_text(Path(run_dir) / CONFIG, json.dumps(config, indent=2) + "\n")


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``config.json``.

    Raises:
        FileNotFoundError: no such run folder, or no config in it.
        ValueError: the config is not JSON or lacks a key a run needs.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist (wsss-ext train --out makes one)")
    path = run_dir / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run: it has no {CONFIG}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a valid run config ({error})") from error
    missing = [key for key in _REQUIRED if not isinstance(config, dict) or key not in config]
    if missing:
        raise ValueError(f"{path}: not a valid run config (lacks {missing})")
    return config


def build_method(config: Mapping[str, Any]):
    """The run's method, freshly initialised (``python_models.create(method, **overrides)``)."""
    import python_models

    return python_models.create(config["method"], **config["overrides"])


# --- checkpoint ------------------------------------------------------------------------------------------


def save_checkpoint(run_dir: str | os.PathLike, state: Mapping[str, Any]) -> None:
    with atomic_write(Path(run_dir) / CHECKPOINT) as temporary:
        torch.save(dict(state), temporary)


def load_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``checkpoint.pt`` on the CPU (tensors and plain values only: ``weights_only``).

    Raises:
        FileNotFoundError: no checkpoint (the run has not finished an epoch).
        ValueError: a file that is not a checkpoint of this program.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT}: no epoch of it has finished")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises anything from pickle, zip and its own checks
        raise ValueError(f"{path}: cannot read the checkpoint, the file is damaged "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(state, dict) or not {"model", "epoch", "step"} <= set(state):
        raise ValueError(f"{path}: not a wsss-ext training checkpoint (needs model, epoch, step)")
    return state


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """The trained method of a run, in eval mode on ``device``, and its config.

    Returns:
        ``(method, config)``: ``config`` is ``config.json`` as a dict (with
        ``classes``, ``image_size``, ``method`` ...), plus ``epochs_done``.

    Raises:
        FileNotFoundError: no run, no config or no checkpoint.
        ValueError: a damaged config or checkpoint, or one whose weights do not
            fit the method the config describes.
    """
    config = read_config(run_dir)
    try:
        method = build_method(config)
    except TypeError as error:  # an override the method does not have
        raise ValueError(f"{Path(run_dir) / CONFIG}: {error}") from error
    state = load_checkpoint(run_dir)
    try:
        method.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as error:
        raise ValueError(f"{Path(run_dir) / CHECKPOINT} does not fit the method of {CONFIG} "
                         f"({str(error).splitlines()[0]})") from error
    config = dict(config, epochs_done=int(state["epoch"]))
    return method.to(device).eval(), config


# --- log -------------------------------------------------------------------------------------------------


def write_log(run_dir: str | os.PathLike, steps: list[dict[str, float]], epochs: list[dict[str, float]]) -> None:
    """Rewrite ``log.csv`` (the step rows) and ``log.json`` (steps and epochs)."""
    run_dir = Path(run_dir)
    columns = list(dict.fromkeys(key for row in steps for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(steps)
    _write_text(run_dir / LOG_CSV, text.getvalue())
    _write_text(run_dir / LOG_JSON, json.dumps({"steps": steps, "epochs": epochs}, indent=1) + "\n")


def read_log(run_dir: str | os.PathLike) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(steps, epochs) of ``log.json``; empty lists when there is none yet."""
    path = Path(run_dir) / LOG_JSON
    if not path.is_file():
        return [], []
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
        return list(log["steps"]), list(log["epochs"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: damaged training log ({error})") from error
