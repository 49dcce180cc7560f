"""Thin definitions of the methods that use wsss_ext's kernels: backbones and
the CAM model. Layer names follow torchvision's, so its ImageNet state dicts
load from a local file (nothing is downloaded)."""

from python_models.cam import CAMNet, grad_cam
from python_models.resnet import ResNet, resnet50, resnet101, resnet_tiny

__all__ = ["CAMNet", "ResNet", "grad_cam", "resnet101", "resnet50", "resnet_tiny"]
