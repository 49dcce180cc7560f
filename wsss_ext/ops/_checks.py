"""Argument checks shared by the public functions. Each raises TypeError for
the wrong kind of value and ValueError for a wrong value, naming the argument.

Also here: the finite-value checks and their switch (:func:`set_check_finite`),
and :class:`FastCustomOp`, the custom-op wrapper that skips the dispatcher in
plain eager calls."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Collection, Iterator, Sequence

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
    if value.layout != torch.strided:  # sparse, mkldnn: the kernels read dense memory
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}; "
                        f"convert it with .to_dense()")
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


INT32_MAX = 2**31 - 1
# Iteration counts run a host loop: past this they are a mistake that would
# look like a hang (published settings use at most a few thousand).
MAX_ITERATIONS = 100_000


def check_int(value: object, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (bools rejected), optionally within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_iterations(value: object, name: str, *, minimum: int = 0) -> int:
    """An iteration or sample count in [minimum, MAX_ITERATIONS]."""
    return check_int(value, name, minimum=minimum, maximum=MAX_ITERATIONS)


def check_ints(value: object, name: str, *, length: int | None = None, minimum: int | None = None,
               maximum: int | None = INT32_MAX) -> tuple[int, ...]:
    """A sequence of ints (a size, a list of dilations), each checked by check_int."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        what = f"a sequence of {length} ints" if length else "a sequence of ints"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must hold {length} ints, got {len(value)}")
    return tuple(check_int(v, f"{name}[{i}]", minimum=minimum, maximum=maximum) for i, v in enumerate(value))


def _device_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**48


def check_allocation(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str, what: str) -> None:
    """Refuse, before allocating, a buffer that could never fit: ``what`` (the
    argument that asks for it) is named with the size it asks for. Skipped
    under torch.compile / torch.export, where sizes may be symbolic."""
    if torch.compiler.is_compiling():
        return
    numel = 1
    for s in shape:
        numel *= int(s)
    size = numel * torch.empty((), dtype=dtype).element_size()
    available = _device_memory_bytes(torch.device(device))
    if numel >= 2**62 or size > available:
        raise ValueError(f"{what} asks for a {list(shape)} {str(dtype).replace('torch.', '')} buffer of "
                         f"{size / 2**30:.4g} GiB, more than the {available / 2**30:.4g} GiB of {device}")


def runs_on_cuda(tensor: torch.Tensor) -> bool:
    """Whether the kernels run their CUDA launchers on ``tensor``: a CUDA
    tensor, or any tensor under ``wsss_ext.testing.emulate_cuda()`` (the
    emulation build), where buffers sized for the CUDA kernels are needed."""
    return tensor.is_cuda or _C.cuda_emulation_enabled()


def cuda_stream(tensor: torch.Tensor) -> int:
    """The handle of the current stream on the tensor's device (0 on the CPU)."""
    return torch.cuda.current_stream(tensor.device).cuda_stream if tensor.is_cuda else 0


# ---------------------------------------------------------------------------
# Finite-value checks, without a host synchronisation
# ---------------------------------------------------------------------------

CHECK_FINITE_MODES = ("async", "sync", "off")
_check_finite_mode = "async"


def set_check_finite(mode: str) -> None:
    """How wsss_ext's public functions refuse NaN and inf inputs (process-wide).

    - ``"async"`` (the default): CPU tensors are checked on the spot and raise
      the function's ``ValueError`` ("image contains NaN or inf", ...). CUDA
      tensors get an asynchronous device-side assertion
      (``torch._assert_async``): no host synchronisation; a non-finite input
      fails at the next synchronisation as a CUDA device-side assert, after
      which the CUDA context is unusable (as for an out-of-range index in
      ``nll_loss``). Run again under ``"sync"`` to get the message.
    - ``"sync"``: the ``ValueError`` on CUDA too, at one host synchronisation
      per checked tensor (for debugging, like ``torch.autograd.set_detect_anomaly``).
    - ``"off"``: no check (saves one pass over each input); non-finite
      values propagate to the outputs.

    In every mode the checks are left out of ``torch.compile`` and
    ``torch.export`` graphs, which therefore hold no assertion and no
    data-dependent branch: a compiled call with NaN input returns NaN.
    """
    global _check_finite_mode
    if mode not in CHECK_FINITE_MODES:
        raise ValueError(f"mode must be one of {CHECK_FINITE_MODES}, got {mode!r}")
    _check_finite_mode = mode


def get_check_finite() -> str:
    """The current mode of :func:`set_check_finite`."""
    return _check_finite_mode


@contextlib.contextmanager
def check_finite(mode: str) -> Iterator[None]:
    """Context manager form of :func:`set_check_finite`; restores the previous mode on exit.

    Example:
        >>> import torch, wsss_ext
        >>> with wsss_ext.check_finite("off"):
        ...     codes = wsss_ext.sinkhorn_knopp(torch.randn(8, 4))
    """
    previous = _check_finite_mode
    set_check_finite(mode)
    try:
        yield
    finally:
        set_check_finite(previous)


def _unwrap_functorch(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor under functorch's wrappers (vmap's batched tensors, grad's wrappers)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
    return tensor


def require_all(
    tensor: torch.Tensor | tuple[torch.Tensor, ...],
    predicate: Callable[..., torch.Tensor],
    message: str | Callable[[], str],
) -> None:
    """Refuse ``tensor`` with ``ValueError(message)`` unless ``predicate(tensor)``
    holds everywhere, as :func:`set_check_finite` says: on the spot for CPU
    tensors, as an asynchronous device-side assertion (no host sync) for
    CUDA tensors in the default mode, never under torch.compile / torch.export.
    ``tensor`` may be a tuple of tensors, passed to ``predicate`` as separate
    arguments (a bound on several inputs together). ``message`` may be a
    callable, called only to raise."""
    mode = _check_finite_mode
    if mode == "off" or torch.compiler.is_compiling():
        return
    tensors = tensor if isinstance(tensor, tuple) else (tensor,)
    tensors = tuple(_unwrap_functorch(t.detach()) for t in tensors)
    if any(type(t) is not torch.Tensor for t in tensors):
        return  # fake or functional tensors of a tracer: no values to read
    if tensors[0].is_cuda and mode == "async":
        torch._assert_async(predicate(*tensors).all(), message if isinstance(message, str) else "wsss_ext input check")
    elif not bool(predicate(*tensors).all()):
        raise ValueError(message if isinstance(message, str) else message())


def _all_finite(tensor: torch.Tensor) -> torch.Tensor:
    """Whether every element is finite, without a temporary of the tensor's
    size (``torch.isfinite`` builds ``abs()`` and two masks: three times an
    N x K input for Sinkhorn): min and max propagate NaN and hold any inf."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=tensor.device)
    low, high = torch.aminmax(tensor)
    return torch.isfinite(low) & torch.isfinite(high)


def require_finite(tensor: torch.Tensor, message: str) -> None:
    """:func:`require_all` for NaN and inf: refuse them. A plain CPU tensor is
    scanned by one C++ call (``_C.all_finite``: one pass, no temporary), which
    costs a small op a few microseconds where the four torch ops of
    :func:`_all_finite` cost tens."""
    if (type(tensor) is torch.Tensor and tensor.is_cpu and _check_finite_mode != "off"
            and not torch.compiler.is_compiling() and _functorch_stack() is None):
        if not _C.all_finite(tensor.detach()):
            raise ValueError(message)
        return
    require_all(tensor, _all_finite, message)


def host_max_abs(tensor: torch.Tensor) -> float | None:
    """max |tensor| (0 if empty, inf if it holds a NaN or inf) read on the spot
    by one C++ pass (``_C.max_abs``), for a plain float32 / float64 CPU tensor
    in an eager call with the checks on; ``None`` where the values cannot be
    read (a tracer's tensor, torch.compile, a functorch transform, a CUDA
    tensor: no host sync) or the checks are off, and the caller falls back to
    :func:`require_finite` / :func:`require_all`. One call is the finite check
    and an op's magnitude bound together."""
    if (type(tensor) is torch.Tensor and tensor.is_cpu and tensor.dtype in (torch.float32, torch.float64)
            and _check_finite_mode != "off" and not torch.compiler.is_compiling() and _functorch_stack() is None):
        return _C.max_abs(tensor.detach())
    return None


def refuse_under_compile(what: str, advice: str) -> None:
    """A clear error for a host-dependent option inside torch.compile / torch.export."""
    if torch.compiler.is_compiling():
        raise RuntimeError(f"{what} needs values on the host and cannot be traced by torch.compile or "
                           f"torch.export; {advice}")


# ---------------------------------------------------------------------------
# Custom ops that skip the dispatcher in plain eager calls
# ---------------------------------------------------------------------------

_FAST_PATH = True  # False: every call goes through the dispatcher (benchmarks/bench_dispatch.py compares)
_is_compiling = torch.compiler.is_compiling
_dispatch_stack_len = torch._C._len_torch_dispatch_stack
_torch_function_mode = torch._C._is_torch_function_mode_enabled
_functorch_stack = torch._C._functorch.peek_interpreter_stack
_profiling = torch.autograd._profiler_enabled
_infra_mode = torch._C._get_dispatch_mode
_INFRA_KEYS = (
    torch._C._TorchDispatchModeKey.FAKE,
    torch._C._TorchDispatchModeKey.PROXY,
    torch._C._TorchDispatchModeKey.FUNCTIONAL,
)
_Tensor = torch.Tensor
_get_num_threads = torch.get_num_threads
_set_cpu_threads = _C.set_cpu_threads


def follow_torch_threads() -> None:
    """Hand torch's thread count (1 in DataLoader workers) to the CPU
    kernels for the calling thread: the extension does not link torch, so
    every eager op passes it before it runs. Not while tracing: a compiled
    graph's kernels keep the count of the last eager call."""
    if not _is_compiling():
        _set_cpu_threads(_get_num_threads())


_idle_cpus = _C.idle_cpus
_set_num_threads = torch.set_num_threads


@contextlib.contextmanager
def torch_threads_capped() -> Iterator[None]:
    """torch's own CPU work inside an op (FickleNet's matmuls) on no more
    threads than other processes leave CPUs idle (common/idle_cpus.h). torch's
    GEMMs split their work in equal static shares: beside a busy process the
    share of the thread it deschedules holds back the product, and 2 threads
    are slower than 1 (the kernels' own loops share their work dynamically
    and need no cap). torch's count is process-wide, so it is lowered only
    for the block, and only in eager calls (a compiled graph's torch ops keep
    it)."""
    requested = _get_num_threads()
    capped = requested if _is_compiling() else min(requested, _idle_cpus())
    if capped >= requested:
        yield
        return
    _set_num_threads(capped)
    try:
        yield
    finally:
        _set_num_threads(requested)


def plain_eager(args: Sequence[object], differentiable: bool = False) -> bool:
    """Whether the op's implementation may run directly: plain tensors, no
    tracer, mode, functorch transform or profiler, and (for an op with a
    backward) nothing to differentiate."""
    if (
        not _FAST_PATH
        or _is_compiling()
        or _dispatch_stack_len()
        or _torch_function_mode()
        or _functorch_stack() is not None
        or _profiling()
    ):
        return False
    for key in _INFRA_KEYS:
        if _infra_mode(key) is not None:
            return False
    grad = differentiable and torch.is_grad_enabled()
    for arg in args:
        if isinstance(arg, _Tensor) and (type(arg) is not _Tensor or (grad and arg.requires_grad)):
            return False
    return True


class FastCustomOp:
    """A ``torch.library.custom_op`` whose plain eager calls skip the dispatcher.

    Calling it runs the implementation directly when nothing needs the
    dispatcher (:func:`plain_eager`), which saves ~10 us per call; anything
    else (torch.compile, torch.export, fake tensors, vmap, autograd, modes,
    the profiler) goes through the registered op, ``.op``.
    """

    def __init__(self, name: str, fn: Callable, *, differentiable: bool = False):
        self.op = torch.library.custom_op(name, fn, mutates_args=())
        self.impl = fn
        self.differentiable = differentiable
        self.__doc__ = fn.__doc__

    def __call__(self, *args):
        follow_torch_threads()
        if plain_eager(args, self.differentiable):
            return self.impl(*args)
        return self.op(*args)

    def register_fake(self, fn: Callable) -> Callable:
        return self.op.register_fake(fn)

    def register_vmap(self, fn: Callable) -> Callable:
        return self.op.register_vmap(fn)


def fast_custom_op(name: str, *, differentiable: bool = False) -> Callable[[Callable], FastCustomOp]:
    """Decorator form of :class:`FastCustomOp` (functional ops: ``mutates_args=()``)."""
    return lambda fn: FastCustomOp(name, fn, differentiable=differentiable)


# ---------------------------------------------------------------------------
# torch.func.vmap rules of the custom ops
# ---------------------------------------------------------------------------


def vmap_by_loop(op: FastCustomOp) -> None:
    """Register a vmap rule that calls the op once per mapped slice and stacks
    the outputs (for ops with no batch dimension of their own: Sinkhorn)."""

    def rule(info, in_dims, *args):
        outputs = []
        for index in range(info.batch_size):
            sliced = [arg.select(dim, index) if dim is not None else arg for arg, dim in zip(args, in_dims)]
            outputs.append(op.op(*sliced))
        if isinstance(outputs[0], tuple):
            stacked = tuple(torch.stack(parts) for parts in zip(*outputs))
            return stacked, (0,) * len(stacked)
        return torch.stack(outputs), 0

    op.register_vmap(rule)


def vmap_into_batch(op: FastCustomOp, shared: Collection[int] = ()) -> None:
    """Register a vmap rule that folds the mapped dimension into the op's own
    leading batch dimension: every tensor argument (but those at the indices
    in ``shared``, which must not be mapped) and every output is B x ..., so
    mapping over V gives one call on V B rows."""

    def rule(info, in_dims, *args):
        size = info.batch_size
        merged = []
        for index, (arg, dim) in enumerate(zip(args, in_dims)):
            if index in shared:
                if dim is not None:
                    raise ValueError(f"{op.op._qualname}: argument {index} cannot be mapped by vmap")
                merged.append(arg)
            elif isinstance(arg, torch.Tensor):
                arg = arg.movedim(dim, 0) if dim is not None else arg.unsqueeze(0).expand(size, *arg.shape)
                merged.append(arg.reshape(size * arg.shape[1], *arg.shape[2:]))
            else:
                merged.append(arg)
        outputs = op.op(*merged)
        if isinstance(outputs, tuple):
            split = tuple(out.view(size, -1, *out.shape[1:]) for out in outputs)
            return split, (0,) * len(split)
        return outputs.view(size, -1, *outputs.shape[1:]), 0

    op.register_vmap(rule)


def vmap_unsupported(op: FastCustomOp, function: str, advice: str) -> None:
    """Register a vmap rule that raises a clear error naming the public function."""

    def rule(info, in_dims, *args):
        raise RuntimeError(f"{function} does not support torch.func.vmap: {advice}")

    op.register_vmap(rule)
