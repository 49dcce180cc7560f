"""Helpers of the emulated tests: run a call with its CUDA launchers
(wsss_ext.testing.emulate_cuda()) and with the CPU backend, and compare.
The tests are skipped unless wsss_ext is the emulation build:
``WSSS_EXT_CUDA_EMULATE=1 pip install .``. (No conftest.py here: a second
module named conftest would shadow tests/conftest.py for the other tests.)"""

import contextlib

import pytest
import torch

import wsss_ext
from wsss_ext import _C
from wsss_ext.testing import emulate_cuda

EMULATED = bool(wsss_ext.build_info()["cuda_emulated"])
requires_emulation = pytest.mark.skipif(
    not EMULATED, reason="needs the CUDA emulation build (WSSS_EXT_CUDA_EMULATE=1 pip install .)")


def cuda_and_cpu(fn, *inputs, backward=True, seed=1):
    """``fn(*inputs)`` with its CUDA launchers (emulated) and with the CPU
    backend: [(output, grads), (output, grads)]. With ``backward``, the
    gradients of every floating-point input for a fixed random upstream
    gradient, computed inside the emulation too (the backward launchers).
    Fails unless the emulated call launched CUDA kernels and the CPU call none."""
    results = []
    for emulated in (True, False):
        leaves = [t.detach().clone().requires_grad_(backward and t.is_floating_point()) for t in inputs]
        before = _C.emulation_launch_count()
        with emulate_cuda() if emulated else contextlib.nullcontext():
            out = fn(*leaves)
            grads = ()
            if backward:
                upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
                grads = torch.autograd.grad(out, [t for t in leaves if t.requires_grad], upstream, allow_unused=True)
        launched = _C.emulation_launch_count() - before
        if out.numel() > 0:
            assert (launched > 0) == emulated, f"{launched} emulated launches in the {'CUDA' if emulated else 'CPU'} call"
        results.append((out.detach(), grads))
    return results


def assert_match(fn, *inputs, rtol, atol, backward=True, grad_rtol=None, grad_atol=None):
    """The emulated CUDA path of ``fn`` matches the CPU backend, forward and backward."""
    (cuda, cuda_grads), (cpu, cpu_grads) = cuda_and_cpu(fn, *inputs, backward=backward)
    torch.testing.assert_close(cuda, cpu, rtol=rtol, atol=atol)
    for c, g in zip(cuda_grads, cpu_grads):
        assert (c is None) == (g is None)
        if c is None:  # an input the call does not differentiate
            continue
        torch.testing.assert_close(c, g, rtol=grad_rtol if grad_rtol is not None else rtol,
                                   atol=grad_atol if grad_atol is not None else atol)
    return cuda, cpu
