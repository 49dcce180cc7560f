"""nn.Module forms of the kernels, for use inside models and losses."""

from wsss_ext.nn.correlation import Correlation
from wsss_ext.nn.dense_crf import DenseCRF
from wsss_ext.nn.pamr import PAMR

__all__ = ["Correlation", "DenseCRF", "PAMR"]
