"""wsss_ext: fast, batched CPU and CUDA kernels for weakly- and self-supervised
semantic segmentation, behind a PyTorch API.

    >>> import torch, wsss_ext
    >>> codes = wsss_ext.sinkhorn_knopp(torch.randn(256, 30))
    >>> codes.shape, bool(torch.allclose(codes.sum(1), torch.ones(256)))
    (torch.Size([256, 30]), True)

Layers: ``wsss_ext.ops`` (the kernels), ``wsss_ext.reference`` (plain-PyTorch
oracles of each kernel), ``wsss_ext.nn`` (module forms), ``wsss_ext.lowlevel`` (the raw kernels, for torch,
numpy or cupy arrays).
"""

try:
    from wsss_ext import _C  # noqa: F401
except ImportError as error:  # the usual cause: importing the repository's source folder
    raise ImportError(
        "wsss_ext's compiled extension (wsss_ext._C) was not found. If the current directory is the "
        "wsss_ext repository, Python is importing its source folder instead of the installed package: "
        "run from another directory, or install in place with `pip install -e .`."
    ) from error

from wsss_ext._info import __version__, build_info
from wsss_ext import metrics, nn
from wsss_ext.ops import (
    affinitynet_random_walk,
    boundary_affinity,
    cam_background,
    check_finite,
    correlation,
    dense_crf,
    empty_cache,
    expanded_dropout,
    feature_affinity,
    fickle_conv2d,
    fickle_gradcam,
    get_check_finite,
    irnet_random_walk,
    neighbour_offsets,
    pamr,
    pamr_affinity,
    propagate_labels,
    random_walk,
    resize_image_to_mask,
    set_check_finite,
    sinkhorn_knopp,
    track_video,
    unary_from_labels,
    unary_from_probs,
    walk_to_labels,
)

__all__ = [
    "__version__",
    "affinitynet_random_walk",
    "boundary_affinity",
    "build_info",
    "cam_background",
    "check_finite",
    "correlation",
    "dense_crf",
    "empty_cache",
    "expanded_dropout",
    "feature_affinity",
    "fickle_conv2d",
    "fickle_gradcam",
    "get_check_finite",
    "irnet_random_walk",
    "metrics",
    "neighbour_offsets",
    "nn",
    "pamr",
    "pamr_affinity",
    "propagate_labels",
    "random_walk",
    "resize_image_to_mask",
    "set_check_finite",
    "sinkhorn_knopp",
    "track_video",
    "unary_from_labels",
    "unary_from_probs",
    "walk_to_labels",
]
