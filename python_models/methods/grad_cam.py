"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization", ICCV 2017) as a WSSS seed: the
CAM classifier, its maps taken from gradients instead of the classifier
weights, for every tagged class of a batch at once."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from python_models.methods.cam import CAM
from python_models.methods.registry import register
from python_models.pseudo.cams import multiscale_cams, normalize_cams
from python_models.pseudo.grad_cam import grad_cam

__all__ = ["GradCAM"]


@register
class GradCAM(CAM):
    """The CAM classifier (same network, loss and defaults as ``cam``) whose
    maps are Grad-CAM's: α_ck the spatial mean of ∂y_c/∂A_k over the
    backbone's output A, map ReLU(Σ_k α_ck A_k). With this GAP-linear head
    that is the ReLU'd CAM divided by h·w, so after the per-class max
    normalisation both methods give the same maps; the method exists for
    other heads and layers (``layer=`` of :func:`python_models.pseudo.grad_cam`).

    Kernels: ``dense_crf`` in ``pseudo_labels`` (IRNet's confident labels).
    """

    KEY = "grad_cam"
    PAPER = "Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization, ICCV 2017"

    def _classifier(self, normalized: Tensor) -> Tensor:
        return self.raw_cams(normalized).mean((2, 3))

    def cams(self, images: Tensor, labels: Tensor, scales: Sequence[float] | None = None, flip: bool | None = None,
             create_graph: bool = False) -> Tensor:
        """Multi-scale, flipped Grad-CAMs of the tagged classes, each divided
        by its max: B x C x H x W in [0, 1]. ``create_graph=True`` keeps them
        differentiable (for a loss on the maps)."""
        images, labels = self.check_inputs(images, labels)
        scales = self.config.cam_scales if scales is None else scales
        flip = self.config.cam_flip if flip is None else flip
        copies = 2 if flip else 1

        def maps(batch: Tensor) -> Tensor:
            return grad_cam(self._classifier, batch, labels.repeat(copies, 1), layer=self.backbone,
                            create_graph=create_graph)

        return normalize_cams(multiscale_cams(maps, self.normalize(images), scales, flip), labels)
