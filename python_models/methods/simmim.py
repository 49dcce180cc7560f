"""SimMIM (Xie et al., "SimMIM: A Simple Framework for Masked Image
Modeling", CVPR 2022): the masked patches' embeddings replaced by a learnt
mask token, the full token sequence encoded, a 1 x 1 convolution +
PixelShuffle predicting the pixels, and the L1 error on the masked pixels
(microsoft/SimMIM ``models/simmim.py``, ``data/data_simmim.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from python_models._checks import check_images
from python_models.augment.masking import simmim_mask, upsample_mask
from python_models.backbones.vit import interpolate_pos_embed
from python_models.losses.reconstruction import SIMMIM_EPS, masked_reconstruction
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["SimMIM"]


@register
class SimMIM(Method):
    """Masked image modelling with mask tokens and a one-layer decoder.

    Encoder (``VisionTransformerForSimMIM``): patch embedding, masked
    positions blended to the mask token (x (1 - w) + t w), the class token
    prepended, position embeddings added, the backbone's blocks and final
    norm; the patch tokens as a B x D x h x w map. Decoder: a 1 x 1 conv to
    p * p * 3 channels and PixelShuffle(p) (``encoder_stride`` = the ViT's
    patch size p, 16 as SimMIM's ViT). Loss: L1 between the reconstruction
    and the normalised input on the masked pixels,
    ``sum(|x - x̂| mask) / (sum(mask) + 1e-5) / 3``
    (:func:`python_models.losses.masked_reconstruction` with ``distance="l1"``).

    Masks: :func:`python_models.augment.simmim_mask` (``mask_patch_size``
    squares, ``ceil(count * mask_ratio)`` masked) from torch's global
    generator in ``losses`` unless the batch holds ``"mask"`` (B x h x w on
    the patch grid, 1 = masked; ``example_batch`` provides one). Images must
    have H, W divisible by ``mask_patch_size``. ``forward(images)`` is the
    encoder's map of the unmasked image.

    Defaults (microsoft/SimMIM ``config.py``, ``configs/vit_base__800ep/
    simmim_pretrain__vit_base__img224__800ep.yaml``): mask_patch_size 32
    (``DATA.MASK_PATCH_SIZE``), mask_ratio 0.6 (``DATA.MASK_RATIO``); the
    mask token N(0, 0.02) truncated at +-0.02 (``_trunc_normal_``).
    backbone "vit_small" (the library's ViT-S/16; SimMIM's ViT config is ViT-B/16).
    num_classes 0: pre-training has no classes (kept for the contract).

    Kernels: none.
    """

    KEY = "simmim"
    PAPER = "Xie et al., SimMIM: A Simple Framework for Masked Image Modeling, CVPR 2022"
    DEFAULTS = dict(
        num_classes=0,
        backbone="vit_small",
        mask_patch_size=32,
        mask_ratio=0.6,
    )
    KERNELS = ()
    BATCH_KEYS = {"images": "B x 3 x H x W float RGB in [0, 1], H and W multiples of mask_patch_size"}
    TINY_BACKBONE = "vit_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.backbone = self.build_backbone()
        for name in ("patch_embed", "cls_token", "pos_embed", "blocks", "norm", "patch_size"):
            if not hasattr(self.backbone, name):
                raise TypeError(f"SimMIM needs a ViT backbone (it lacks {name})")
        self.patch_size = int(self.backbone.patch_size)
        ratio = float(self.config.mask_ratio)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
        if int(self.config.mask_patch_size) % self.patch_size:
            raise ValueError(f"mask_patch_size {self.config.mask_patch_size} must be a multiple of the patch "
                             f"size {self.patch_size}")
        dim = int(self.backbone.out_channels)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.decoder = nn.Sequential(nn.Conv2d(dim, self.patch_size ** 2 * 3, kernel_size=1),
                                     nn.PixelShuffle(self.patch_size))

    def _check_images(self, images: object) -> Tensor:
        images = check_images(images)
        size = int(self.config.mask_patch_size)
        if images.shape[-2] % size or images.shape[-1] % size:
            raise ValueError(f"images must have H and W divisible by mask_patch_size {size}, got "
                             f"{images.shape[-2]} x {images.shape[-1]}")
        return images

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """SimMIM's encoder on normalised images x: B x D x h x w; ``mask``
        B x h x w (1 = replace the patch by the mask token) or None."""
        vit = self.backbone
        b, h, w = x.shape[0], x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = vit.patch_embed(x)
        if mask is not None:
            weight = mask.reshape(b, h * w, 1).to(patches.dtype)
            patches = patches * (1 - weight) + self.mask_token.to(patches.dtype) * weight
        pos = interpolate_pos_embed(vit.pos_embed, (h, w))
        tokens = torch.cat([vit.cls_token.expand(b, -1, -1), patches], dim=1) + pos
        for block in vit.blocks:
            tokens = block(tokens)
        tokens = vit.norm(tokens)[:, 1:]
        return tokens.transpose(1, 2).reshape(b, -1, h, w)

    def forward(self, images: Tensor) -> Tensor:
        """The encoder's map B x D x h x w of the unmasked images."""
        return self.encode(self.normalize(self._check_images(images)))

    def draw_mask(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A SimMIM mask for ``images``: B x h x w float on the patch grid, 1 = masked."""
        return simmim_mask(images.shape[0], tuple(images.shape[-2:]), self.patch_size,
                           int(self.config.mask_patch_size), float(self.config.mask_ratio),
                           generator).to(images.device)

    def reconstruct(self, images: Tensor, mask: Tensor) -> Tensor:
        """The reconstruction B x 3 x H x W (normalised pixels) of images in [0, 1] under ``mask``."""
        images = self._check_images(images)
        grid = (images.shape[0], images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        if not isinstance(mask, Tensor) or tuple(mask.shape) != grid:
            raise ValueError(f"mask must be B x h x w = {' x '.join(map(str, grid))} on the patch grid, got "
                             f"{tuple(getattr(mask, 'shape', ()))}")
        return self.decoder(self.encode(self.normalize(images), mask))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images = self._check_images(batch["images"])
        mask = batch.get("mask")
        mask = self.draw_mask(images) if mask is None else mask
        reconstruction = self.reconstruct(images, mask)
        pixel_mask = upsample_mask(mask.to(images.dtype), self.patch_size)
        loss = masked_reconstruction(reconstruction, self.normalize(images), pixel_mask, distance="l1",
                                     eps=SIMMIM_EPS)
        return {"reconstruction": loss, "loss": loss}

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic ``images`` and a SimMIM ``mask`` drawn from ``generator``."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 3, g)["images"]
        return {"images": images, "mask": self.draw_mask(images, g)}
