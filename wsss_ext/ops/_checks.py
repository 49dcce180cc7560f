"""Argument checks shared by the public functions. Each raises TypeError for
the wrong kind of value and ValueError for a wrong value, naming the argument."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection

import torch

from wsss_ext import _C

_CUDA_COMPILED: bool = bool(_C.build_info()["cuda"])


def check_tensor(
    value: object,
    name: str,
    *,
    ndim: int | None = None,
    layout: str = "",
    dtypes: Collection[torch.dtype] | None = None,
) -> torch.Tensor:
    """A CPU or CUDA tensor of the given rank and dtype; ``layout`` (e.g. "N x K")
    only makes the message clearer."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        hint = f" ({layout})" if layout else ""
        raise ValueError(f"{name} must be {ndim}-D{hint}, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {str(value.dtype).replace('torch.', '')}")
    if value.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {value.device}; wsss_ext runs on cpu and cuda tensors")
    if value.is_cuda and not _CUDA_COMPILED:
        raise ValueError(
            f"{name} is a CUDA tensor but wsss_ext was built without CUDA; "
            "reinstall with a CUDA compiler on the PATH (see wsss_ext.build_info())"
        )
    return value


def check_real(value: object, name: str, *, positive: bool = False, allow_none: bool = False) -> float | None:
    """A finite real number (bools rejected); optionally > 0."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """An integer (bools rejected), optionally >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def cuda_stream(tensor: torch.Tensor) -> int:
    """The handle of the current stream on the tensor's device (0 on the CPU)."""
    return torch.cuda.current_stream(tensor.device).cuda_stream if tensor.is_cuda else 0
