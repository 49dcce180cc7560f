"""What this installation of wsss_ext contains."""

from __future__ import annotations

from typing import Any

from wsss_ext import _C

__version__: str = _C.build_info()["version"]


def build_info() -> dict[str, Any]:
    """Report what was compiled and what this process can use.

    Returns a dict with ``version``, ``cuda`` (CUDA kernels compiled in),
    ``cuda_runtime_version``, ``cuda_architectures``, ``openmp``,
    ``omp_max_threads``, ``compiler``, ``cuda_device_count`` (devices the
    extension's runtime sees), and ``visible_gpus`` (names, via torch).

    Example:
        >>> info = build_info()
        >>> sorted(k for k in ("cuda", "openmp", "version") if k in info)
        ['cuda', 'openmp', 'version']
    """
    import torch

    info = dict(_C.build_info())
    info["torch_version"] = torch.__version__
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["visible_gpus"] = gpus
    return info
