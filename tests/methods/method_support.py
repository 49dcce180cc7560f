"""Shared pieces of the method tests: which custom ops prove that a public
wsss_ext function ran, a profiler helper, a one-thread fixture, small
builders and the short training loop of the "loss falls" smoke tests."""

from __future__ import annotations

import pytest
import torch
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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Torch on one thread for the importing module: tiny convolutions on a shared
    2-core machine run many times faster than with two threads contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded_batch(model, seed: int = 0, size: int = 32) -> dict:
    """``model.example_batch`` of two ``size`` x ``size`` images from a generator seeded ``seed``."""
    return model.example_batch(batch_size=2, image_size=size, generator=torch.Generator().manual_seed(seed))


def random_probs(shape, seed=0, scale=1.0, dtype=torch.float32) -> torch.Tensor:
    """A softmax over dim 1 of ``scale`` times seeded normal noise (drawn in float64)."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(shape, generator=g, dtype=torch.float64), 1).to(dtype)


def train_losses(model, batch, steps=20, lr=1e-3, optimizer=torch.optim.Adam, *, after_step=True) -> list[float]:
    """Train ``model`` in train mode for ``steps`` optimizer steps on ``batch`` and return each
    step's ``losses(batch, step)["loss"]`` as a float (taken before that step's update).

    ``optimizer`` is an optimizer class, built on ``model.parameters()`` with ``lr``, or an
    optimizer already built (then ``lr`` is unused). ``after_step=False`` skips
    ``model.after_step(step, steps)``, for a test whose model must keep its schedule state.
    """
    model.train()
    if not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer(model.parameters(), lr=lr)
    totals = []
    for step in range(steps):
        loss = model.losses(batch, step)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if after_step:
            model.after_step(step, steps)
        totals.append(float(loss.detach()))
    return totals
