"""Test helpers for the CUDA emulation build.

``WSSS_EXT_CUDA_EMULATE=1 pip install .`` compiles the CUDA kernels (the very
``csrc/<k>/<k>_cuda.cu`` files) as C++ against wsss_ext's own CPU runtime of
the CUDA features they use (``csrc/common/cuda_emulation.h``). Under
:func:`emulate_cuda` every public op given CPU tensors then runs its CUDA
launchers on them, forward and backward, so that the same call with and
without it compares the CUDA path with the CPU backend on a machine without
a GPU::

    with wsss_ext.testing.emulate_cuda():
        emulated = wsss_ext.pamr(image, mask)   # the CUDA kernels, on the CPU
    reference = wsss_ext.pamr(image, mask)      # the CPU backend
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from wsss_ext import _C

__all__ = ["emulate_cuda", "emulation_available"]

_FAULTS = {None: 0, "shuffle_wrong_lane": 1}
_lock = threading.Lock()


def emulation_available() -> bool:
    """Whether this is the CUDA emulation build (``build_info()["cuda_emulated"]``)."""
    return bool(_C.build_info()["cuda_emulated"])


@contextlib.contextmanager
def emulate_cuda(fault: str | None = None) -> Iterator[None]:
    """Run the CUDA launchers on CPU tensors while inside the block.

    Process-wide (the backward passes autograd runs are covered too) and
    restored on exit, also on an exception; nested uses are serialised by a
    lock held for the block, so concurrent threads do not switch it under
    each other.

    Args:
        fault: ``None``, or ``"shuffle_wrong_lane"``: every warp shuffle of
            the emulated runtime reads the lane after the right one (the
            negative control of the emulated tests: comparisons must fail).

    Raises:
        RuntimeError: this is not the emulation build.
    """
    if fault not in _FAULTS:
        raise ValueError(f"fault must be one of {sorted(k for k in _FAULTS if k)} or None, got {fault!r}")
    if not emulation_available():
        raise RuntimeError(
            "wsss_ext.testing.emulate_cuda() needs the CUDA emulation build of wsss_ext: reinstall with "
            "WSSS_EXT_CUDA_EMULATE=1 pip install . (a test build; no GPU or nvcc needed)"
        )
    with _lock:
        _C.set_cuda_emulation(True, _FAULTS[fault])
        try:
            yield
        finally:
            _C.set_cuda_emulation(False, 0)
