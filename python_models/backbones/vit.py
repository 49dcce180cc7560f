"""The Vision Transformer (Dosovitskiy et al., ICLR 2021) as DINO trains it
(Caron et al., ICCV 2021, ``vision_transformer.py``): a 16 x 16 patch
embedding, a class token, learnt position embeddings interpolated for other
image sizes, pre-norm blocks (LayerNorm eps 1e-6, multi-head attention with a
qkv bias, a GELU MLP of ratio 4, optional stochastic depth) and a final
LayerNorm.

Parameter names are DINO's and timm's (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.norm1`` / ``attn.qkv`` / ``attn.proj`` /
``norm2`` / ``mlp.fc1`` / ``mlp.fc2``, ``norm``), so DINO's ViT-S/16 weights
load from a local file with :meth:`VisionTransformer.load_pretrained`.

As a backbone, ``forward`` returns the normalised patch tokens as a
B x D x H/p x W/p map (output stride = patch size); ``tokens``,
``last_attention`` and ``encode`` (MAE's visible-patch encoder) give the
token views self-supervised methods need.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_int, check_real

__all__ = ["VisionTransformer", "interpolate_pos_embed", "set_drop_path", "vit_backbone", "vit_small", "vit_tiny"]


def interpolate_pos_embed(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """Position embeddings 1 x (1 + g*g) x D (class token first, a square
    g x g grid) resized to ``grid`` = (h, w): the class embedding kept, the
    patch embeddings resized bicubically (align_corners False, as timm's
    ``resample_abs_pos_embed``; DINO passes a scale factor to the same
    interpolation). Returned as is when the grid already matches.

    >>> interpolate_pos_embed(torch.zeros(1, 1 + 4 * 4, 8), (2, 3)).shape
    torch.Size([1, 7, 8])
    """
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1 or side * side != n:
        raise ValueError(f"pos_embed must be 1 x (1 + g*g) x D, got shape {tuple(pos_embed.shape)}")
    h, w = grid
    if (h, w) == (side, side):
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(h, w), mode="bicubic", align_corners=False)
    patches = patches.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, -1)
    return torch.cat([cls, patches], dim=1)


class PatchEmbed(nn.Module):
    """A p x p convolution of stride p: B x 3 x H x W to B x (H/p * W/p) x D
    (rows and columns beyond the last whole patch are dropped, as a strided
    convolution does)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention, one qkv projection (with bias), softmax(q kᵀ / sqrt(d)) v."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if return_attention:
            attention = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = attention @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return (out, attention) if return_attention else out


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: each sample's residual branch dropped with probability
    p (the kept ones scaled by 1 / (1 - p)) in training."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)), each branch with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if return_attention:
            y, attention = self.attn(self.norm1(x), return_attention=True)
        else:
            y = self.attn(self.norm1(x))
        x = x + _drop_path(y, self.drop_path, self.training)
        x = x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)
        return (x, attention) if return_attention else x


class VisionTransformer(nn.Module):
    """DINO's ViT without a classification head.

    Args:
        img_size: the training image size the position embeddings are made for
            (224: a 14 x 14 grid at patch 16); other sizes are interpolated.
        patch_size: p (16 or 8 in DINO).
        embed_dim, depth, num_heads, mlp_ratio: D, blocks, heads, MLP width / D.
        drop_path_rate: stochastic depth of the last block, rising linearly
            from 0 at the first (DINO trains ViT-S with 0.1; 0 by default).

    Attributes: ``out_channels`` = D, ``output_stride`` = p, ``num_heads``,
    ``stage_channels`` (D for each map of ``stages``).

    Images are B x 3 x H x W, normalised by the caller (ImageNet mean and
    std, as DINO); the grid is H // p x W // p (a partial last patch is
    dropped).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 6, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        patch_size = check_int(patch_size, "patch_size", minimum=1)
        img_size = check_int(img_size, "img_size", minimum=patch_size)
        embed_dim = check_int(embed_dim, "embed_dim", minimum=1)
        depth = check_int(depth, "depth", minimum=1)
        num_heads = check_int(num_heads, "num_heads", minimum=1)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        mlp_ratio = check_real(mlp_ratio, "mlp_ratio", positive=True)
        drop_path_rate = check_real(drop_path_rate, "drop_path_rate")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.patch_size = self.output_stride = patch_size
        self.out_channels = self.embed_dim = embed_dim
        self.num_heads = num_heads
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # stages: the maps after four evenly spaced blocks (DPT's taps), the last one normalised
        self._taps = sorted({max(0, round(depth * k / 4) - 1) for k in range(1, 5)})
        self.stage_channels = (embed_dim,) * len(self._taps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    # -- embedding -----------------------------------------------------------------------------

    def _check(self, x: object) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a float image batch B x 3 x H x W, got dtype {x.dtype}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be B x 3 x H x W, got shape {tuple(x.shape)}")
        if x.shape[2] < self.patch_size or x.shape[3] < self.patch_size:
            raise ValueError(f"x must be at least {self.patch_size} x {self.patch_size} (one patch), "
                             f"got {x.shape[2]} x {x.shape[3]}")
        return x

    def grid(self, x: Tensor) -> tuple[int, int]:
        """The patch grid (h, w) of images ``x``."""
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(class token + its position, patch tokens + theirs) for images x: B x D, B x N x D."""
        x = self._check(x)
        pos = interpolate_pos_embed(self.pos_embed, self.grid(x))
        patches = self.patch_embed(x) + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return cls, patches

    def _run(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    # -- views ---------------------------------------------------------------------------------

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(class token B x D, patch tokens B x N x D), after the final norm; N = h w in row-major order."""
        return self.encode(x)

    def encode(self, x: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode only the patches ``keep`` (B x N' int64 indices into the
        row-major grid, MAE's visible patches; None: all of them), each with its
        own position embedding, together with the class token. Returns (class
        token B x D, kept patch tokens B x N' x D in the order of ``keep``)."""
        cls, patches = self._embed(x)
        if keep is not None:
            if not isinstance(keep, Tensor):
                raise TypeError(f"keep must be a torch.Tensor of patch indices, got {type(keep).__name__}")
            if keep.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"keep must hold int64 patch indices, got dtype {keep.dtype}")
            if keep.dim() != 2 or keep.shape[0] != x.shape[0]:
                raise ValueError(f"keep must be B x N' = {x.shape[0]} x N', got shape {tuple(keep.shape)}")
            n = patches.shape[1]
            if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
                raise ValueError(f"keep must index the {n} patches (0 .. {n - 1}), got values in "
                                 f"[{int(keep.min())}, {int(keep.max())}]")
            index = keep.to(torch.int64)[..., None].expand(-1, -1, patches.shape[2])
            patches = patches.gather(1, index)
        out = self._run(torch.cat([cls, patches], dim=1))
        return out[:, 0], out[:, 1:]

    def forward(self, x: Tensor) -> Tensor:
        """The patch-token map B x D x h x w (normalised by the final norm)."""
        h, w = self.grid(self._check(x))
        _, patches = self.tokens(x)
        return patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def stages(self, x: Tensor) -> list[Tensor]:
        """Patch-token maps B x D x h x w after four evenly spaced blocks (blocks
        3, 6, 9, 12 of 12), the last after the final norm (equal to ``forward``)."""
        h, w = self.grid(self._check(x))
        cls, patches = self._embed(x)
        tokens = torch.cat([cls, patches], dim=1)
        maps = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self._taps:
                out = self.norm(tokens) if i == len(self.blocks) - 1 else tokens
                maps.append(out[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w))
        return maps

    def last_attention(self, x: Tensor) -> Tensor:
        """The last block's attention, B x heads x (1 + N) x (1 + N) (rows sum to
        1; row 0 is the class token's attention, DINO's
        ``get_last_selfattention``)."""
        cls, patches = self._embed(x)
        tokens = torch.cat([cls, patches], dim=1)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        _, attention = self.blocks[-1](tokens, return_attention=True)
        return attention

    # -- weights -------------------------------------------------------------------------------

    def load_pretrained(self, path: str | Path, checkpoint_key: str = "teacher") -> list[str]:
        """Load DINO (or timm) ViT weights from a local file; returns the keys
        not used (a classification ``head``, DINO's projection head).

        Accepts a bare backbone state dict (``dino_deitsmall16_pretrain.pth``)
        or a training checkpoint holding ``checkpoint_key`` ("teacher", as
        DINO's evaluation, or "student"); ``module.`` and ``backbone.``
        prefixes are stripped, and ``pos_embed`` is interpolated when it was
        trained for another grid."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and checkpoint_key in state and isinstance(state[checkpoint_key], dict):
            state = state[checkpoint_key]
        if not isinstance(state, dict):
            raise TypeError(f"{path} does not hold a state dict, got {type(state).__name__}")
        cleaned = {}
        for key, value in state.items():
            for prefix in ("module.", "backbone."):
                key = key.removeprefix(prefix)
            cleaned[key] = value
        own = self.state_dict()
        missing = [key for key in own if key not in cleaned]
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} ViT keys, e.g. {missing[:3]}")
        side = math.isqrt(own["pos_embed"].shape[1] - 1)
        if cleaned["pos_embed"].shape != own["pos_embed"].shape:
            cleaned["pos_embed"] = interpolate_pos_embed(cleaned["pos_embed"], (side, side))
        self.load_state_dict({key: cleaned[key] for key in own})
        return [key for key in cleaned if key not in own]


def _init_weights(module: nn.Module) -> None:
    """DINO's initialisation: linear weights truncated normal (std 0.02), biases 0, LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def vit_small(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-S/p (DINO's ``vit_small``): D 384, 12 blocks, 6 heads, MLP ratio 4;
    21,665,664 parameters at p = 16 and 224 px."""
    return VisionTransformer(patch_size=patch_size, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, **kwargs)


def vit_tiny(patch_size: int = 8, **kwargs) -> VisionTransformer:
    """The same layout at a CPU size for tests and the demo (D 48, 2 blocks,
    3 heads, patch 8, position embeddings for 32 px) — not timm's ViT-Ti/16
    (D 192, 12 blocks, 3 heads)."""
    options = {"img_size": 32, "embed_dim": 48, "depth": 2, "num_heads": 3, "mlp_ratio": 4}
    options.update(kwargs)
    return VisionTransformer(patch_size=patch_size, **options)


def set_drop_path(backbone: nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly from 0 (first block) to ``rate`` (last)
    on a :class:`VisionTransformer` (DINO's student: 0.1; its teacher: 0)."""
    if isinstance(backbone, VisionTransformer):
        depth = len(backbone.blocks)
        for i, block in enumerate(backbone.blocks):
            block.drop_path = float(rate) * i / max(depth - 1, 1)


def vit_backbone(method: Any, *needs: str) -> nn.Module:
    """``method``'s (a :class:`python_models.methods.Method`) backbone, checked to have the ViT views ``needs``
    (``"tokens"``, ``"last_attention"``)."""
    if int(method.config.global_crops) < 1:
        raise ValueError(f"global_crops must be >= 1, got {method.config.global_crops}")
    backbone = method.build_backbone()
    missing = [name for name in needs if not hasattr(backbone, name)]
    if missing:
        raise TypeError(f"{type(method).__name__} needs a ViT backbone with {', '.join(needs)}; "
                        f"{type(backbone).__name__} lacks {missing}")
    return backbone
