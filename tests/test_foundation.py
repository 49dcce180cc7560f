"""The layers every kernel stands on: array views, C++ argument checks,
the counter-based RNG, build information and the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wsss_ext
from wsss_ext import _C, lowlevel
from wsss_app.cli import main as cli_main


# --- ArrayView: any array that exposes its memory ---------------------------


@pytest.mark.parametrize(
    "dtype, name",
    [(torch.float32, "float32"), (torch.float64, "float64"), (torch.float16, "float16"),
     (torch.bfloat16, "bfloat16"), (torch.int64, "int64"), (torch.uint8, "uint8"), (torch.bool, "bool")],
)
def test_view_of_torch_tensor(dtype, name):
    t = torch.zeros(3, 5, dtype=dtype)
    view = lowlevel.ArrayView(t)
    assert view.dtype == name
    assert view.shape == [3, 5] and view.strides == [5, 1]
    assert view.device == "cpu" and view.device_index == -1
    assert view.data == t.data_ptr() and view.is_contiguous


def test_view_of_non_contiguous_tensor_keeps_element_strides():
    t = torch.zeros(4, 6)[:, ::2]
    view = lowlevel.ArrayView(t.t())
    assert view.shape == [3, 4] and view.strides == [2, 6] and not view.is_contiguous


@pytest.mark.parametrize("np_dtype, name", [(np.float32, "float32"), (np.float64, "float64"),
                                            (np.float16, "float16"), (np.int32, "int32")])
def test_view_of_numpy_array(np_dtype, name):
    a = np.zeros((2, 7), np_dtype)
    view = lowlevel.ArrayView(a)
    assert view.dtype == name and view.shape == [2, 7] and view.strides == [7, 1]
    assert view.data == a.__array_interface__["data"][0] and not view.readonly
    assert lowlevel.ArrayView(a[:, ::3]).strides == [7, 3]
    a.setflags(write=False)
    assert lowlevel.ArrayView(a).readonly


def test_view_rejects_what_is_not_an_array():
    with pytest.raises(TypeError, match="expected a torch tensor, numpy array or cupy array, got list"):
        lowlevel.ArrayView([1.0, 2.0])
    with pytest.raises(TypeError, match="unsupported dtype torch.complex64"):
        lowlevel.ArrayView(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="unsupported array type string"):
        lowlevel.ArrayView(np.zeros(2, dtype=">f4"))  # big-endian


def test_view_of_unusual_tensors_takes_the_general_path():
    # The fast path compares torch's dtype / layout singletons; anything else is named as before.
    param = torch.nn.Parameter(torch.zeros(3, 4))
    assert lowlevel.ArrayView(param).shape == [3, 4]
    assert lowlevel.ArrayView(torch.zeros(2, 3, 4).permute(2, 0, 1)).strides == [1, 12, 4]
    assert lowlevel.ArrayView(torch.zeros(())).shape == []
    with pytest.raises(TypeError, match="expected a dense \\(strided\\) tensor, got layout torch.sparse_coo"):
        lowlevel.ArrayView(torch.zeros(3).to_sparse())
    with pytest.raises(ValueError, match="tensors on 'meta' are not supported"):
        lowlevel.ArrayView(torch.zeros(3, device="meta"))


# --- all_finite: the eager CPU input check -------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided", "scalar"])
def test_all_finite_equals_torch_isfinite(dtype, bad, layout):
    values = torch.rand(5, 7, 3).to(dtype)
    if bad is not None:
        values[3, 4, 1] = bad
    values = {"contiguous": values, "transposed": values.transpose(0, 2), "strided": values[:, 1::2],
              "scalar": values[3, 4, 1]}[layout]
    assert lowlevel.all_finite(values) == bool(torch.isfinite(values).all())


def test_all_finite_of_large_integer_and_empty_arrays():
    big = torch.rand(3, 1 << 19)  # above the threshold where the scan is split across threads
    assert lowlevel.all_finite(big)
    big[2, -1] = float("nan")
    assert not lowlevel.all_finite(big)
    assert lowlevel.all_finite(torch.arange(5)) and lowlevel.all_finite(torch.empty(0))
    assert lowlevel.all_finite(np.array([1.0, 2.0])) and not lowlevel.all_finite(np.array([np.inf]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided", "scalar"])
def test_max_abs_equals_torch_and_is_inf_for_non_finite_values(dtype, bad, layout):
    values = (torch.randn(5, 7, 3) * 3).to(dtype)
    values[1, 2, 0] = -40.0  # the largest magnitude is negative
    if bad is not None:
        values[3, 4, 1] = bad
    values = {"contiguous": values, "transposed": values.transpose(0, 2), "strided": values[:, 1::2],
              "scalar": values[1, 2, 0]}[layout]
    expected = float(values.abs().amax()) if bool(torch.isfinite(values).all()) else float("inf")
    assert lowlevel.max_abs(values) == expected


def test_max_abs_of_large_and_empty_arrays_and_other_dtypes():
    big = torch.rand(3, 1 << 19)  # split across threads
    big[1, 7] = -2.0
    assert lowlevel.max_abs(big) == 2.0
    big[2, -1] = float("nan")
    assert lowlevel.max_abs(big) == float("inf")
    assert lowlevel.max_abs(torch.empty(0, 3)) == 0.0
    assert lowlevel.max_abs(np.array([1.0, -3.5])) == 3.5
    with pytest.raises(ValueError, match="values must have dtype float32, float64"):
        lowlevel.max_abs(torch.ones(3, dtype=torch.float16))
    with pytest.raises(ValueError, match="values must have dtype float32, float64"):
        lowlevel.max_abs(torch.arange(3))


# --- torch's own threads inside an op: no more than the idle CPUs -------------


def test_torch_threads_are_capped_for_the_block_and_restored(monkeypatch):
    from wsss_ext.ops import _checks

    requested = torch.get_num_threads()
    monkeypatch.setattr(_checks, "_idle_cpus", lambda: 1)  # as beside busy processes
    with _checks.torch_threads_capped():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == requested
    with pytest.raises(RuntimeError, match="inside"):
        with _checks.torch_threads_capped():
            raise RuntimeError("inside")
    assert torch.get_num_threads() == requested
    monkeypatch.setattr(_checks, "_idle_cpus", lambda: requested + 4)  # idle machine: never raised
    with _checks.torch_threads_capped():
        assert torch.get_num_threads() == requested


def test_ficklenet_matmuls_run_on_the_capped_thread_count_and_its_kernel_on_all(monkeypatch):
    from wsss_ext.ops import _checks

    requested = torch.get_num_threads()
    seen = []  # (torch's threads, the kernels' threads) at every product
    for name in ("matmul", "bmm"):
        product = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, product=product: seen.append(
            (torch.get_num_threads(), _C.cpu_threads())) or product(*args))
    monkeypatch.setattr(_checks, "_idle_cpus", lambda: 1)
    x, weight = torch.randn(1, 4, 5, 5, requires_grad=True), torch.randn(3, 4, 3, 3)
    wsss_ext.fickle_conv2d(x, weight, seed=0).sum().backward()
    assert len(seen) >= 3 and set(seen) == {(1, requested)}
    assert torch.get_num_threads() == requested


def test_idle_cpus_is_between_one_and_the_cpus_of_the_process():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= _C.idle_cpus() <= cpus


# --- The C++ safety net: checks that hold even when Python is bypassed -------


def _step_buffers(n=8, k=4, dtype=np.float32):
    return dict(
        scores=np.random.default_rng(0).standard_normal((n, k)).astype(dtype),
        f=np.zeros(k, dtype), g=np.zeros(n, dtype),
        partials=np.empty((2, lowlevel.sinkhorn_num_chunks(n, False), k), dtype),
        col_max=np.empty(k, dtype), col_sumexp=np.empty(k, dtype),
    )


def _step(**buffers):
    lowlevel.sinkhorn_step(**buffers, inv_eps=20.0, log_n=float(np.log(8)), update_g=True)


def test_lowlevel_step_on_numpy_matches_torch_reference():
    buffers = _step_buffers()
    _step(**buffers)
    z = torch.from_numpy(buffers["scores"]).double() * 20.0
    g = -np.log(8) - torch.logsumexp(z, dim=1)  # f = 0
    expected = torch.logsumexp(z + g[:, None], dim=0)
    got = torch.from_numpy(buffers["col_max"] + np.log(buffers["col_sumexp"])).double()
    assert torch.allclose(torch.from_numpy(buffers["g"]).double(), g, atol=1e-5)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    "argument, bad, message",
    [
        ("scores", np.zeros((8, 4, 1), np.float32), "scores must be 2-D"),
        ("scores", np.zeros((8, 4), np.int32), "scores must have dtype float16, bfloat16, float32, float64"),
        ("scores", np.zeros((4, 8), np.float32).T, "scores must be contiguous"),
        ("f", np.zeros(5, np.float32), r"f must have shape \[4\]"),
        ("f", np.zeros(4, np.float64), "f must have dtype float32"),
        ("g", np.zeros(7, np.float32), r"g must have shape \[8\]"),
        ("partials", np.zeros((2, 1, 3), np.float32), "partials must have shape"),
        ("col_max", np.zeros(4, np.float32)[None], "col_max must have shape"),
    ],
)
def test_cpp_checks_name_the_argument(argument, bad, message):
    buffers = _step_buffers()
    buffers[argument] = bad
    with pytest.raises(ValueError, match=message):
        _step(**buffers)


def test_cpp_caps_the_steps_of_one_call():
    # The all-steps-in-one-call CPU paths take the Python layer's iteration cap (MAX_ITERATIONS) in C++ too.
    weights, mask = np.full((1, 8, 3, 3), 1 / 8, np.float32), np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"steps must be in \[1, 100000\]"):
        lowlevel.pamr_propagate(weights, mask, np.empty_like(mask), [1], False, 0, 100001)
    offsets = np.array([[0, 0]], np.int32)
    x = np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"steps must be in \[1, 100000\]"):
        lowlevel.random_walk_step(np.ones((1, 1, 3, 3), np.float32), offsets, x, np.empty_like(x), False, 0, 0, 0)


def test_cpp_refuses_to_write_read_only_memory():
    buffers = _step_buffers()
    buffers["g"].setflags(write=False)
    with pytest.raises(ValueError, match="g is written to but its memory is read-only"):
        _step(**buffers)


def test_cpp_refuses_empty_scores():
    buffers = _step_buffers(n=0)
    with pytest.raises(ValueError, match="at least one sample and one prototype"):
        _step(**buffers)


@pytest.mark.skipif(torch.cuda.is_available(), reason="machines without a GPU")
def test_cuda_array_without_a_usable_gpu_is_a_clear_error():
    # A CUDA array interface with a bogus pointer: refused before any memory is touched,
    # by the CPU-only build ("built without CUDA") or by the CUDA runtime ("CUDA error").
    class FakeCudaArray:
        __cuda_array_interface__ = {"shape": (2, 2), "typestr": "<f4", "data": (4096, False), "version": 3}

    with pytest.raises((ValueError, RuntimeError), match="CUDA"):
        lowlevel.ArrayView(FakeCudaArray())


# --- Philox4x32-10 ---------------------------------------------------------


@pytest.mark.parametrize(
    "counter, key, expected",
    [  # Known-answer vectors of Salmon et al.'s Random123 (kat_vectors, philox4x32 10 rounds)
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)
def test_philox_known_answers(counter, key, expected):
    assert tuple(_C.philox4x32_10(counter, key)) == expected


def test_philox_streams_look_uniform():
    words = np.array([_C.philox4x32_10((i, 0, 0, 0), (1234, 0)) for i in range(4096)], dtype=np.uint64).ravel()
    uniform = (words >> 8).astype(np.float64) / 2**24
    assert abs(uniform.mean() - 0.5) < 0.01  # 16384 draws: std of the mean 0.0023
    counts = np.histogram(uniform, bins=16, range=(0, 1))[0]
    chi2 = ((counts - 1024) ** 2 / 1024).sum()
    assert chi2 < 40  # 15 degrees of freedom: p < 0.001 beyond 37.7
    assert len(np.unique(words)) == len(words)


# --- build information and the command line --------------------------------


def test_build_info_reports_the_build():
    info = wsss_ext.build_info()
    assert info["version"] == wsss_ext.__version__
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    assert info["omp_max_threads"] >= 1
    assert (info["cuda_runtime_version"] > 0) == info["cuda"]
    assert (info["cuda_architectures"] != "") == info["cuda"]
    assert isinstance(info["visible_gpus"], list)


def test_cli_info_json(capsys):
    assert cli_main(["info", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == wsss_ext.__version__ and printed["cuda"] == wsss_ext.build_info()["cuda"]


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "wsss-ext"
    out = subprocess.run([str(script), "info"], capture_output=True, text=True, check=True)
    assert "version" in out.stdout and wsss_ext.__version__ in out.stdout
