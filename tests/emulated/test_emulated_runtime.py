"""The CUDA emulation runtime itself (csrc/common/cuda_emulation.*): the
semantics the kernels rely on, checked against CUDA's documented behaviour,
and the negative controls showing that the emulated suite catches a broken
shuffle and a planted off-by-one."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import wsss_ext
from wsss_ext import _C
from wsss_ext.testing import emulate_cuda

from emulation_helpers import requires_emulation

pytestmark = requires_emulation

SANITIZE = wsss_ext.build_info().get("sanitize", "")


def test_build_info_and_switch():
    info = wsss_ext.build_info()
    assert info["cuda_emulated"] is True and info["cuda"] is False and info["cuda_device_count"] == 0
    assert not _C.cuda_emulation_enabled()
    with emulate_cuda():
        assert _C.cuda_emulation_enabled()
    assert not _C.cuda_emulation_enabled()
    with pytest.raises(KeyError), emulate_cuda():
        raise KeyError("restored on an exception too")
    assert not _C.cuda_emulation_enabled()
    with pytest.raises(ValueError, match="fault must be one of"):
        with emulate_cuda(fault="bit_flip"):
            pass


# --- warp shuffles, against the CUDA C++ Programming Guide's definitions ------------------------

def expected_shuffle(op, lane, operand, width):
    """Source lane of __shfl*_sync as the Programming Guide defines it (width a power of two)."""
    start = lane // width * width
    if op == "idx":
        return start + operand % width
    if op == "up":
        return lane - operand if lane - start >= operand else lane
    if op == "down":
        return lane + operand if lane - start + operand < width else lane
    source = lane ^ operand  # xor: later groups return the lane's own value
    return source if source < start + width else lane


def run_warp_op(op, operand, width, threads, exits=()):
    values = torch.arange(threads, dtype=torch.int32) * 7 + 3
    exit_flags = torch.zeros(threads, dtype=torch.int32)
    exit_flags[list(exits)] = 1
    out = torch.full((threads,), -99, dtype=torch.int32)
    _C.emulation_warp_op(values, exit_flags, out, op, operand, width)
    return values, exit_flags, out


@pytest.mark.parametrize("op", ["idx", "up", "down", "xor"])
@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
def test_shuffles_are_exact(op, width):
    operands = range(32) if op == "idx" else range(width if op == "xor" else 32)
    for operand in operands:
        values, _, out = run_warp_op(op, operand, width, 64)
        expected = [int(values[t // 32 * 32 + expected_shuffle(op, t % 32, operand, width)]) for t in range(64)]
        assert out.tolist() == expected, (op, operand, width)


def test_shuffles_with_exited_lanes_and_a_partial_warp():
    # 40 threads: the second warp has 8 lanes; lanes 3 and 36 return before the shuffle.
    values, exits, out = run_warp_op("down", 1, 32, 40, exits=(3, 36))
    for t in range(40):
        source = t + 1 if t % 32 < 31 else t
        if exits[t]:
            assert out[t] == -99  # returned: wrote nothing
        elif source >= 40 or exits[source]:
            assert out[t] == -1  # an inactive source lane: undefined on a GPU, all-one bytes here
        else:
            assert out[t] == values[source]


def test_ballot():
    values = torch.tensor([t % 3 == 0 for t in range(48)], dtype=torch.int32)
    exits = torch.zeros(48, dtype=torch.int32)
    exits[6] = 1
    out = torch.zeros(48, dtype=torch.int32)
    _C.emulation_warp_op(values, exits, out, "ballot", 0, 32)
    for warp in range(2):
        bits = sum(1 << lane for lane in range(32) if warp * 32 + lane < 48 and values[warp * 32 + lane]
                   and not exits[warp * 32 + lane])
        expected = bits - (1 << 32) if bits >= 1 << 31 else bits
        live = [t for t in range(warp * 32, min(48, warp * 32 + 32)) if not exits[t]]
        assert all(int(out[t]) == expected for t in live)


# --- blocks, barriers, atomics, launches ---------------------------------------------------------

@pytest.mark.parametrize("grid, block", [((3, 1, 1), (70, 1, 1)), ((2, 3, 1), (16, 4, 1)), ((2, 2, 2), (4, 3, 5))])
def test_grid_and_block_indices(grid, block):
    threads = grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2]
    out = torch.full((threads, 12), -1, dtype=torch.int32)
    _C.emulation_indices(out, grid, block)
    rows = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            rows.append([bx, by, bz, tx, ty, tz, *block, *grid])
    assert out.tolist() == rows


@pytest.mark.parametrize("threads", [1, 32, 64, 256, 1024])
def test_block_reduction_needs_real_barriers(threads):
    values = torch.randint(-1000, 1000, (threads,), generator=torch.Generator().manual_seed(threads),
                           dtype=torch.int32)
    out = torch.zeros(1, dtype=torch.int32)
    _C.emulation_block_sum(values, out)
    assert int(out) == int(values.sum())


@pytest.mark.parametrize("threads", [2, 64, 100, 1024])
def test_threads_that_returned_leave_the_barrier(threads):
    values = torch.arange(threads, dtype=torch.int32) * 3 + 1
    out = torch.full((threads,), -7, dtype=torch.int32)
    _C.emulation_barrier_after_exits(values, out)
    expected = [int(values[(t + 2) % threads]) if t % 2 == 0 else -7 for t in range(threads)]
    assert out.tolist() == expected


def test_atomics():
    ints = torch.tensor([0, -1, 0, -1], dtype=torch.int32)
    floats = torch.zeros(1)
    u64 = torch.zeros(1, dtype=torch.int64)
    _C.emulation_atomics(ints, floats, u64, 5, 96)
    assert ints.tolist()[:3] == [480, 479, 1] and 0 <= int(ints[3]) < 480
    assert float(floats) == 120.0 and int(u64) == 480


@pytest.mark.parametrize("grid, block, message", [
    ((1, 1, 1), (1025, 1, 1), "block dimension x is 1025"),
    ((1, 1, 1), (32, 32, 2), "= 2048 threads"),
    ((1, 1, 1), (1, 1, 65), "block dimension z is 65"),
    ((0, 1, 1), (32, 1, 1), "grid dimension x is 0"),
    ((1, 65536, 1), (32, 1, 1), "grid dimension y is 65536"),
])
def test_bad_configurations_fail_as_on_a_gpu(grid, block, message):
    with pytest.raises(RuntimeError, match=f"cudaErrorInvalidConfiguration.*{message}"):
        _C.emulation_launch(grid, block)
    _C.emulation_launch((2, 1, 1), (1024, 1, 1))  # the error is not sticky; the largest block runs


def test_shared_memory_limits():
    _C.emulation_launch((2, 1, 1), (64, 1, 1), 48 * 1024)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue.*49153 bytes of dynamic shared memory"):
        _C.emulation_launch((1, 1, 1), (64, 1, 1), 48 * 1024 + 1)
    _C.emulation_launch((1, 1, 1), (64, 1, 1), 40 * 1024, static_shared=True)
    with pytest.raises(RuntimeError, match="8192 bytes of static and 45056 of dynamic shared memory"):
        _C.emulation_launch((1, 1, 1), (64, 1, 1), 44 * 1024, static_shared=True)


def test_a_deadlock_is_reported_not_hung():
    with pytest.raises(RuntimeError, match=r"deadlock_kernel, block \(0, 0, 0\), deadlock.*1 of 32 live threads wait "
                                           r"at __syncthreads\(\); warp 0: lanes 0xfffffffe wait at __shfl_sync"):
        _C.emulation_deadlock()


def test_a_cuda_tensor_is_refused():
    class FakeCudaArray:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (4096, False), "version": 3}

    with pytest.raises(ValueError, match="CUDA emulation build"):
        _C.ArrayView(FakeCudaArray())


def test_emulate_cuda_outside_the_emulation_build_is_a_clear_error(monkeypatch):
    import wsss_ext.testing as testing

    monkeypatch.setattr(testing, "emulation_available", lambda: False)
    with pytest.raises(RuntimeError, match="WSSS_EXT_CUDA_EMULATE=1 pip install"):
        with testing.emulate_cuda():
            pass


# --- negative controls -----------------------------------------------------------------------------

def test_a_wrong_shuffle_lane_is_caught_by_the_kernel_comparisons():
    a = torch.randn(1, 40, 5, 6, dtype=torch.float64)
    b = torch.randn(1, 40, 5, 6, dtype=torch.float64)
    scores = torch.randn(130, 33, dtype=torch.float64).tanh()
    cpu = wsss_ext.correlation(a, b, 1, 3), wsss_ext.sinkhorn_knopp(scores)
    with emulate_cuda():
        good = wsss_ext.correlation(a, b, 1, 3), wsss_ext.sinkhorn_knopp(scores)
    with emulate_cuda(fault="shuffle_wrong_lane"):
        broken = wsss_ext.correlation(a, b, 1, 3), wsss_ext.sinkhorn_knopp(scores)
    for c, g, w in zip(cpu, good, broken):
        torch.testing.assert_close(g, c, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(w, c, rtol=1e-4, atol=1e-4)


PLANTED = textwrap.dedent("""
    import torch
    from wsss_ext import _C
    values = torch.arange(256, dtype=torch.int32)
    out = torch.zeros(1, dtype=torch.int32)
    _C.emulation_block_sum(values, out, planted_off_by_one=PLANTED)
    print("sum", int(out))
""")


def run_planted(planted, folder):
    # From another folder: `python -c` in the repository would import its source tree.
    return subprocess.run([sys.executable, "-c", PLANTED.replace("PLANTED", str(planted))], cwd=folder,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)


@pytest.mark.skipif("address" not in SANITIZE, reason="needs the AddressSanitizer build (WSSS_EXT_SANITIZE=address)")
def test_asan_catches_the_planted_off_by_one_in_shared_memory(tmp_path):
    clean = run_planted(False, tmp_path)
    assert clean.returncode == 0 and "sum 32640" in clean.stdout, clean.stderr[-2000:]
    planted = run_planted(True, tmp_path)
    assert planted.returncode != 0
    # One int32 past the block's 256-element shared array (its own allocation in the emulation).
    assert "heap-buffer-overflow" in planted.stderr, planted.stderr[-3000:]
    assert "0 bytes to the right of 1024-byte region" in planted.stderr, planted.stderr[-3000:]
