"""Shared pieces of the method tests: which custom ops prove that a public
wsss_ext function ran, and a profiler helper."""

from __future__ import annotations

from torch.profiler import profile

# Public op -> a torch.library op it always dispatches to (what a trace shows).
KERNEL_OPS = {
    "dense_crf": "wsss_ext::dense_crf",
    "fickle_conv2d": "wsss_ext::fickle_conv2d",
    "fickle_gradcam": "wsss_ext::fickle_mask_bits",
    "expanded_dropout": "wsss_ext::fickle_mask_bits",
    "pamr": "wsss_ext::pamr_propagate",
    "pamr_affinity": "wsss_ext::pamr_affinity",
    "random_walk": "wsss_ext::random_walk",
    "irnet_random_walk": "wsss_ext::random_walk",
    "affinitynet_random_walk": "wsss_ext::random_walk",
    "sinkhorn_knopp": "wsss_ext::sinkhorn_codes",
    "correlation": "wsss_ext::correlation",
    "propagate_labels": "wsss_ext::propagate_labels",
    "track_video": "wsss_ext::propagate_labels",
}


def traced_ops(function, *args, **kwargs) -> tuple[set[str], object]:
    """The wsss_ext:: ops that ran during ``function(*args, **kwargs)``, and its result."""
    with profile() as trace:
        result = function(*args, **kwargs)
    return {event.name for event in trace.events() if event.name.startswith("wsss_ext::")}, result
