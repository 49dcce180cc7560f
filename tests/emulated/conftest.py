"""The CUDA emulation tests: every CUDA launcher run on CPU tensors
(wsss_ext.testing.emulate_cuda()) against the CPU backend. Skipped unless
wsss_ext is the emulation build: ``WSSS_EXT_CUDA_EMULATE=1 pip install .``."""

import pytest

import wsss_ext

EMULATED = bool(wsss_ext.build_info()["cuda_emulated"])


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs the CUDA emulation build (WSSS_EXT_CUDA_EMULATE=1 pip install .)")
    for item in items:
        if "tests/emulated/" in str(item.fspath).replace("\\", "/") and not EMULATED:
            item.add_marker(skip)
