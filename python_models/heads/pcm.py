"""SEAM's pixel correlation module (Wang et al., "Self-supervised Equivariant
Attention Mechanism for Weakly Supervised Semantic Segmentation", CVPR 2020,
Sec. 3.3; YudeWang/SEAM ``network/resnet38_SEAM.py``).

Each pixel's CAM is replaced by the average of all pixels' CAMs, weighted by
the rectified cosine similarity of their features::

    f   = conv1x1([image resized to the CAM, relu(conv1x1(conv4 -> 64)), relu(conv1x1(conv5 -> 128))])
    Â   = relu(cos(f_i, f_j)),  each column j divided by (sum_i Â_ij + 1e-5)
    ŷ°  = ŷ · Â                      (ŷ: (1 + C) x N, so ŷ°_j = sum_i ŷ_i Â_ij)

The CAM fed to it is built without gradient (:func:`pcm_input`): ReLU, divided
by its max, background 1 - max of the foreground, every foreground class but
the pixel's strongest zeroed. conv4 and conv5 are detached, so the module
trains only its three 1 x 1 convolutions. It is one dense N x N matmul per
image (no wsss_ext kernel): memory grows as (h w)^2 at the CAM's stride.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PCM", "pcm_affinity", "pcm_input", "pcm_refine"]


def _float_maps(value: object, name: str, channels: int | None = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got dtype {value.dtype}")
    if value.dim() != 4 or value.shape[2] * value.shape[3] == 0:
        raise ValueError(f"{name} must be B x C x H x W with H, W >= 1, got shape {tuple(value.shape)}")
    if channels is not None and value.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(value.shape)}")
    return value


def pcm_affinity(features: Tensor, eps: float = 1e-5, normalize: bool = True) -> Tensor:
    r"""The PCM's attention :math:`\hat A`: B x N x N, N = h w (row-major pixels).

    :math:`\hat A_{ij} = \mathrm{relu}(f_i^\top f_j / ((\|f_i\| + \epsilon)(\|f_j\| + \epsilon)))`;
    with ``normalize`` each column j (the weights pixel j gathers in
    :math:`\hat y^\circ_j = \sum_i \hat y_i \hat A_{ij}`) is divided by
    :math:`\sum_i \hat A_{ij} + \epsilon`, so it sums to 1 up to that epsilon.
    Unnormalised, :math:`\hat A` is symmetric and non-negative.

    Args:
        features: B x D x h x w embeddings (the PCM's ``f``), differentiable.
        eps: SEAM's 1e-5 in both divisions.
        normalize: divide the columns by their sums (False: the raw relu(cos)).

    Example:
        >>> import torch
        >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)   # two orthogonal pixels
        >>> pcm_affinity(f).round(decimals=4)
        tensor([[[1., 0.],
                 [0., 1.]]])
    """
    features = _float_maps(features, "features")
    flat = features.flatten(2)
    flat = flat / (flat.norm(dim=1, keepdim=True) + eps)
    affinity = F.relu(flat.transpose(1, 2) @ flat)
    return affinity / (affinity.sum(1, keepdim=True) + eps) if normalize else affinity


def pcm_refine(cams: Tensor, features: Tensor, eps: float = 1e-5) -> Tensor:
    r""":math:`\hat y^\circ = \hat y \cdot \hat A`: every pixel's scores as the
    attention-weighted average of all pixels' scores.

    Args:
        cams: B x L x h' x w' scores (resized bilinearly, ``align_corners=True``,
            to the features' size when it differs, as SEAM does).
        features: B x D x h x w embeddings (see :func:`pcm_affinity`).

    Returns:
        B x L x h x w, differentiable in both inputs.
    """
    cams = _float_maps(cams, "cams")
    features = _float_maps(features, "features")
    if cams.shape[0] != features.shape[0]:
        raise ValueError(f"cams and features must have the same batch size, "
                         f"got {cams.shape[0]} and {features.shape[0]}")
    size = features.shape[2:]
    if cams.shape[2:] != size:
        cams = F.interpolate(cams, size, mode="bilinear", align_corners=True)
    refined = cams.flatten(2) @ pcm_affinity(features, eps)
    return refined.view(*cams.shape[:2], *size)


@torch.no_grad()
def pcm_input(cams: Tensor, eps: float = 1e-5) -> Tensor:
    """The CAM SEAM feeds to its PCM, built without gradient (``resnet38_SEAM.py``).

    ``relu(relu(cams) - eps) / (max + eps)`` per image and class; a background
    channel ``1 - max`` over the classes is put first; at each pixel every
    foreground class below the pixel's maximum is zeroed (ties keep all).
    Like SEAM, it does not look at the image's tags.

    Args:
        cams: B x C x h x w raw foreground CAMs (before ReLU).

    Returns:
        B x (1 + C) x h x w, background first, detached.

    Example:
        >>> import torch
        >>> cams = torch.tensor([[0.5, 1.0], [1.0, 0.0]]).view(1, 2, 1, 2)   # 2 classes, 2 pixels
        >>> pcm_input(cams).squeeze(2).round(decimals=3)
        tensor([[[0., 0.],
                 [0., 1.],
                 [1., 0.]]])
    """
    cams = F.relu(_float_maps(cams, "cams").detach())
    peak = cams.flatten(2).amax(2)[..., None, None] + eps
    cams = F.relu(cams - eps) / peak
    best = cams.amax(1, keepdim=True)
    foreground = torch.where(cams < best, torch.zeros_like(cams), cams)
    return torch.cat([1 - best, foreground], 1)


class PCM(nn.Module):
    """SEAM's pixel correlation module: ``forward(cams, images, conv4, conv5)``.

    Args:
        conv4_channels, conv5_channels: channels of the two backbone stages it
            reads (ResNet-38: 512 and 1024; ResNet-50: layer2 and layer3, also
            512 and 1024).
        image_channels: 3.
        conv4_dim, conv5_dim, out_dim: SEAM's 64, 128 and 192 (``f8_3``, ``f8_4``, ``f9``).

    Initialisation as SEAM: Kaiming normal for the two projections, Xavier
    uniform with gain 4 for the last 1 x 1 convolution; no biases.
    """

    def __init__(self, conv4_channels: int, conv5_channels: int, image_channels: int = 3, conv4_dim: int = 64,
                 conv5_dim: int = 128, out_dim: int = 192) -> None:
        super().__init__()
        self.project4 = nn.Conv2d(conv4_channels, conv4_dim, 1, bias=False)
        self.project5 = nn.Conv2d(conv5_channels, conv5_dim, 1, bias=False)
        self.embed = nn.Conv2d(image_channels + conv4_dim + conv5_dim, out_dim, 1, bias=False)
        nn.init.kaiming_normal_(self.project4.weight)
        nn.init.kaiming_normal_(self.project5.weight)
        nn.init.xavier_uniform_(self.embed.weight, gain=4)

    def embedding(self, images: Tensor, conv4: Tensor, conv5: Tensor) -> Tensor:
        """``f``: B x out_dim x h x w at conv5's size; conv4 and conv5 detached."""
        conv4 = _float_maps(conv4, "conv4", self.project4.in_channels)
        conv5 = _float_maps(conv5, "conv5", self.project5.in_channels)
        size = conv5.shape[2:]
        if conv4.shape[2:] != size:
            conv4 = F.interpolate(conv4, size, mode="bilinear", align_corners=True)
        small = F.interpolate(_float_maps(images, "images"), size, mode="bilinear", align_corners=True)
        parts = [small, F.relu(self.project4(conv4.detach())), F.relu(self.project5(conv5.detach()))]
        return self.embed(torch.cat(parts, 1))

    def forward(self, cams: Tensor, images: Tensor, conv4: Tensor, conv5: Tensor) -> Tensor:
        """Refined scores B x (1 + C) x h x w (background first) at conv5's size.

        Args:
            cams: B x C x h x w raw foreground CAMs (their gradient is not used).
            images: B x 3 x H x W, the network's (normalised) input.
            conv4, conv5: the backbone's intermediate features (detached here).
        """
        return pcm_refine(pcm_input(cams), self.embedding(images, conv4, conv5))
