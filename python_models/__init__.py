"""Thin PyTorch definitions of the published WSSS and self-supervised methods,
each on the wsss_ext kernel it needs, usable one piece at a time.

- ``METHODS`` / ``create(key, **overrides)``: the methods, with their published defaults.
- ``backbones``, ``heads``, ``losses``, ``pseudo``, ``augment``, ``memory``
  (queues, banks, EMA teachers, centres), ``data`` (single-image crops): the
  shared blocks, each also usable alone.

>>> import python_models
>>> model = python_models.create("cam", backbone="tiny", num_classes=4)
>>> batch = model.example_batch(batch_size=2, image_size=32)
>>> sorted(model.losses(batch))
['classification', 'loss']
"""

from python_models import augment, backbones, data, heads, losses, memory, pseudo
from python_models.backbones import ResNet, resnet50, resnet101, resnet_tiny
from python_models.methods import METHODS, Method, WSSSMethod, create
from python_models.methods import VideoMethod

__all__ = [
    "METHODS",
    "Method",
    "ResNet",
    "VideoMethod",
    "WSSSMethod",
    "augment",
    "backbones",
    "create",
    "data",
    "heads",
    "losses",
    "memory",
    "pseudo",
    "resnet101",
    "resnet50",
    "resnet_tiny",
]
