"""Host workspaces that outlive a call, and :func:`empty_cache` to free them.

The dense CRF's CPU path needs one large scratch buffer a call (the rows of
an image and its two lattices, hundreds of MiB of address space for a VOC
image, of which the pages the image touches are used). A fresh buffer each
call is returned to the operating system when the call ends, and the next
call faults every page in again: about a tenth of one VOC image's CRF on
the 2-core CI machine. The cache keeps the last buffer instead, as torch's
CUDA caching allocator keeps device memory, until :func:`empty_cache`.

Results never depend on the cache: the kernels initialise whatever they
read (a reused buffer holds the previous call's bytes; the tests fill it
with garbage).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

__all__ = ["empty_cache"]


class WorkspaceCache:
    """At most one cached uint8 CPU buffer. :meth:`take` hands it out (or a
    fresh one) to one caller at a time, so concurrent calls from several
    Python threads never share a buffer; :meth:`give` returns it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer: Tensor | None = None

    def take(self, nbytes: int) -> Tensor:
        """A buffer of at least ``nbytes`` bytes, owned by the caller until :meth:`give`."""
        with self._lock:
            buffer, self._buffer = self._buffer, None
        if buffer is not None and buffer.numel() >= nbytes:
            return buffer
        del buffer  # too small: freed before the larger one is allocated
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, buffer: Tensor) -> None:
        """Keeps ``buffer`` for the next :meth:`take` unless a larger one is already kept."""
        with self._lock:
            if self._buffer is None or self._buffer.numel() < buffer.numel():
                self._buffer = buffer

    def clear(self) -> None:
        with self._lock:
            self._buffer = None

    def cached_bytes(self) -> int:
        """Bytes of address space held (the resident part is what calls touched)."""
        with self._lock:
            return 0 if self._buffer is None else self._buffer.numel()


#: The dense CRF's CPU workspace (``wsss_ext/ops/dense_crf.py``).
dense_crf_workspaces = WorkspaceCache()


def empty_cache() -> None:
    """Frees the CPU workspaces that ops keep between calls (the dense CRF's).

    The next call allocates afresh, so this only trades speed for memory: call
    it after a burst of :func:`wsss_ext.dense_crf` calls when the process goes
    on to other work. The equivalent of ``torch.cuda.empty_cache()`` for
    wsss_ext's host scratch; CUDA calls use torch's allocator.

        >>> import torch, wsss_ext
        >>> unary = wsss_ext.unary_from_probs(torch.rand(1, 3, 8, 8).softmax(1))
        >>> image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
        >>> q = wsss_ext.dense_crf(unary, image, 2)
        >>> wsss_ext.empty_cache()
    """
    dense_crf_workspaces.clear()
