"""The kernels: one module per kernel, each a set of torch.library custom ops
(checks, allocation, fake implementations) and the public function."""

from wsss_ext.ops.sinkhorn import sinkhorn_knopp

__all__ = ["sinkhorn_knopp"]
