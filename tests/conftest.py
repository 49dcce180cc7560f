import pytest
import torch

import wsss_ext

CUDA_AVAILABLE = torch.cuda.is_available() and wsss_ext.build_info()["cuda"]

requires_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA GPU and a CUDA build of wsss_ext")

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
