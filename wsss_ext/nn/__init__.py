"""nn.Module forms of the kernels, for use inside models and losses."""

from wsss_ext.nn.dense_crf import DenseCRF

__all__ = ["DenseCRF"]
