"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR
2022): a ViT encoder that sees only a random 25 % of the patches, a light
Transformer decoder that fills in mask tokens, and the mean squared error on
the masked patches (facebookresearch/mae ``models_mae.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from python_models._checks import check_images
from python_models.augment.masking import PatchMasking, random_masking, restore_tokens
from python_models.backbones.vit import Block
from python_models.losses.reconstruction import masked_reconstruction, patchify
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["MAE", "MAEDecoder", "masking_from_mask", "sincos_pos_embed_2d"]


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> Tensor:
    """MAE's fixed 2-D sine-cosine position embeddings (``util/pos_embed.py``):
    (1 + h w) x dim (a zero row first for the class token when ``cls_token``).

    The first dim / 2 channels encode the column, the last dim / 2 the row;
    each half is [sin(pos omega), cos(pos omega)] with omega_i = 10000^(-i / (dim / 4)).
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for 2-D sin-cos embeddings, got {dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    embed = torch.cat([encode(cols), encode(rows)], dim=1).float()
    return torch.cat([torch.zeros(1, dim), embed]) if cls_token else embed


def masking_from_mask(mask: Tensor) -> PatchMasking:
    """A :class:`~python_models.augment.masking.PatchMasking` for a given
    B x N 0/1 mask (1 = masked) with the same number of visible patches in
    every row: the visible patches kept in index order."""
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise ValueError(f"mask must be B x N (1 = masked), got {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.is_complex():
        raise TypeError(f"mask must be bool, integer or float, got {mask.dtype}")
    mask = mask.float()
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must hold only 0 (visible) and 1 (masked)")
    visible = (mask == 0).sum(1)
    if int(visible.min()) != int(visible.max()) or int(visible.min()) == 0:
        raise ValueError(f"mask must leave the same (non-zero) number of visible patches in every row, got "
                         f"{visible.tolist()}")
    shuffle = mask.argsort(dim=1, stable=True)
    return PatchMasking(shuffle[:, :int(visible[0])], mask, shuffle.argsort(dim=1), shuffle)


class MAEDecoder(nn.Module):
    """MAE's decoder: a linear embedding of the encoder tokens to
    ``decoder_dim``, mask tokens for the removed patches, the fixed sin-cos
    position embeddings, ``depth`` pre-norm Transformer blocks (qkv bias, MLP
    ratio 4, LayerNorm eps 1e-6), a LayerNorm and a linear map to the p * p * 3
    pixels of each patch.

    ``forward(cls, kept, restore, grid)``: cls B x D, kept B x N_keep x D
    (shuffled order), restore B x N, grid (h, w) -> B x N x p * p * 3 (no class token).
    """

    def __init__(self, encoder_dim: int, patch_size: int, decoder_dim: int = 512, depth: int = 8,
                 num_heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.decoder_dim = decoder_dim
        self.embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.blocks = nn.ModuleList(Block(decoder_dim, num_heads, mlp_ratio, 0.0) for _ in range(depth))
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.pred = nn.Linear(decoder_dim, patch_size * patch_size * 3)
        # models_mae.py initialize_weights: mask token N(0, 0.02), linear layers xavier-uniform, biases 0
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, cls: Tensor, kept: Tensor, restore: Tensor, grid: tuple[int, int]) -> Tensor:
        cls, kept = self.embed(cls), self.embed(kept)
        tokens = torch.cat([cls.unsqueeze(1), restore_tokens(kept, self.mask_token, restore)], dim=1)
        tokens = tokens + sincos_pos_embed_2d(self.decoder_dim, grid).to(tokens)
        for block in self.blocks:
            tokens = block(tokens)
        return self.pred(self.norm(tokens))[:, 1:]


@register
class MAE(Method):
    """Masked autoencoder pre-training of a ViT.

    Encoder: the backbone's ``encode(x, keep)`` on the visible patches only
    (MAE's ``forward_encoder``: position embeddings added before the
    masking, the class token kept). Masking: :func:`python_models.augment.random_masking`
    (per-sample argsort of uniform noise, ``int(N (1 - mask_ratio))`` kept).
    Decoder: :class:`MAEDecoder`. Loss: :func:`python_models.losses.masked_reconstruction`
    on the masked patches against the patches of the normalised image (MAE's
    ``imgs`` are ImageNet-normalised by its transform), per-patch normalised
    with ``norm_pix_loss``.

    Masks: drawn from torch's global generator in ``losses`` unless the batch
    holds ``"mask"`` (B x N, 1 = masked, as ``example_batch`` provides it).
    ``forward(images)`` is the encoder's patch-token map of the whole image
    (the representation; deterministic). ``reconstruct(images, mask=None,
    generator=None)`` returns (predicted patches, mask).

    Defaults (facebookresearch/mae): mask_ratio 0.75 (``main_pretrain.py
    --mask_ratio``); decoder_dim 512, decoder_depth 8, decoder_heads 16,
    mlp ratio 4 (``mae_vit_*_dec512d8b`` in ``models_mae.py``);
    norm_pix_loss True (the recommended command of ``PRETRAIN.md`` passes
    ``--norm_pix_loss``; the argparse and class default is False).
    backbone "vit_small" (ViT-S/16, the library's ViT; the paper trains
    ViT-B/16, ViT-L/16 (the script default) and ViT-H/14, which differ only in
    width and depth). num_classes 0: pre-training has no classes (the setting
    exists for the contract; MAE fine-tunes on ImageNet-1k with 1000).
    Fixed sin-cos position embeddings are used in the decoder, as MAE; the
    encoder keeps the backbone's learnt (interpolated) ones (MAE freezes
    sin-cos ones there too).

    Kernels: none.
    """

    KEY = "mae"
    PAPER = "He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022"
    DEFAULTS = dict(
        num_classes=0,
        backbone="vit_small",
        mask_ratio=0.75,
        decoder_dim=512,
        decoder_depth=8,
        decoder_heads=16,
        mlp_ratio=4.0,
        norm_pix_loss=True,
    )
    KERNELS = ()
    BATCH_KEYS = {"images": "B x 3 x H x W float RGB in [0, 1], H and W multiples of the patch size"}
    TINY_BACKBONE = "vit_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        ratio = float(self.config.mask_ratio)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
        self.backbone = self.build_backbone()
        if not hasattr(self.backbone, "encode") or not hasattr(self.backbone, "patch_size"):
            raise TypeError("MAE needs a ViT backbone with encode(x, keep) and patch_size")
        self.patch_size = int(self.backbone.patch_size)
        self.decoder = MAEDecoder(self.backbone.out_channels, self.patch_size, int(self.config.decoder_dim),
                                  int(self.config.decoder_depth), int(self.config.decoder_heads),
                                  float(self.config.mlp_ratio))

    def _check_images(self, images: object) -> Tensor:
        images = check_images(images)
        p = self.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"images must have H and W divisible by the patch size {p}, got "
                             f"{images.shape[-2]} x {images.shape[-1]}")
        return images

    def forward(self, images: Tensor) -> Tensor:
        """The encoder's patch-token map B x D x h x w of the whole image."""
        return self.backbone(self.normalize(self._check_images(images)))

    def reconstruct(self, images: Tensor, mask: Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[Tensor, PatchMasking]:
        """(predicted patches B x N x p * p * 3, the masking used) of images in [0, 1]."""
        images = self._check_images(images)
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        n = grid[0] * grid[1]
        if mask is None:
            masking = random_masking(images.shape[0], n, float(self.config.mask_ratio), generator, images.device)
        else:
            if tuple(mask.shape) != (images.shape[0], n):
                raise ValueError(f"mask must be B x N = {images.shape[0]} x {n} (1 = masked), got shape "
                                 f"{tuple(mask.shape)}")
            masking = masking_from_mask(mask.to(images.device))
        cls, kept = self.backbone.encode(self.normalize(images), masking.keep)
        return self.decoder(cls, kept, masking.restore, grid), masking

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images = self._check_images(batch["images"])
        pred, masking = self.reconstruct(images, batch.get("mask"))
        target = patchify(self.normalize(images), self.patch_size)
        loss = masked_reconstruction(pred, target, masking.mask, normalize_target=bool(self.config.norm_pix_loss))
        return {"reconstruction": loss, "loss": loss}

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic ``images`` and a ``mask`` (B x N, MAE's ratio) drawn from ``generator``."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 3, g)["images"]
        n = (image_size // self.patch_size) ** 2
        return {"images": images, "mask": random_masking(batch_size, n, float(self.config.mask_ratio), g).mask}
