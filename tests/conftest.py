import pytest
import torch

import wsss_ext

CUDA_AVAILABLE = torch.cuda.is_available() and wsss_ext.build_info()["cuda"]

requires_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA GPU and a CUDA build of wsss_ext")

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


def with_nan(tensor):
    """A copy of a 4-D tensor with one NaN, for the bad-input tests."""
    tensor = tensor.clone()
    tensor[0, 0, 1, 1] = float("nan")
    return tensor
