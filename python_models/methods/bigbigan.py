"""BigBiGAN (Donahue & Simonyan, "Large Scale Adversarial Representation
Learning", NeurIPS 2019): a bidirectional GAN whose discriminator scores
(image, latent) pairs with unary x, unary z and joint terms; the encoder E(x)
is the representation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images
from python_models.heads.pretext import (
    PRETEXT_OUTPUT_STRIDE,
    frozen_call,
    mlp,
    pooled_features,
)
from python_models.losses.pretext import (
    bigbigan_discriminator_loss,
    bigbigan_generator_loss,
)
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["BigBiGAN"]


class _Generator(nn.Module):
    """z -> 4 x 4 map -> stride-2 transposed convolutions (BatchNorm, ReLU)
    up to ``image_size`` -> RGB through a sigmoid. A DCGAN-sized stand-in for
    BigGAN's generator (no class conditioning, no self-attention)."""

    def __init__(self, latent_dim: int, image_size: int, channels: int) -> None:
        super().__init__()
        stages = round(math.log2(image_size / 4))
        if stages < 1 or 4 * 2 ** stages != image_size:
            raise ValueError(f"image_size must be 4 times a power of 2 (>= 8), got {image_size}")
        widths = [channels * 2 ** max(0, 3 - i) for i in range(stages + 1)]
        self.widths = widths
        self.project = nn.Linear(latent_dim, widths[0] * 16)
        layers: list[nn.Module] = [nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(fan_in, fan_out, 4, 2, 1, bias=False), nn.BatchNorm2d(fan_out),
                       nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(widths[-1], 3, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.project(z).view(z.shape[0], self.widths[0], 4, 4))


class _Discriminator(nn.Module):
    """D(x, z) -> B x 3 scores (s_x, s_z, s_xz): F a conv net on x (4 x 4
    stride-2 convolutions, LeakyReLU 0.2, no normalisation, global pooling),
    H an MLP on z, J an MLP on [F(x), H(z)]; each score a linear map of its
    branch (θ_x, θ_z, θ_xz)."""

    def __init__(self, latent_dim: int, channels: int, mlp_dim: int) -> None:
        super().__init__()
        widths = [3, channels, 2 * channels, 4 * channels, 8 * channels]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(fan_in, fan_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        self.image_branch = nn.Sequential(*layers)
        self.latent_branch = nn.Sequential(mlp(latent_dim, mlp_dim, mlp_dim), nn.ReLU(inplace=True))
        self.joint_branch = nn.Sequential(mlp(widths[-1] + mlp_dim, mlp_dim, mlp_dim), nn.ReLU(inplace=True))
        self.score_x, self.score_z = nn.Linear(widths[-1], 1), nn.Linear(mlp_dim, 1)
        self.score_xz = nn.Linear(mlp_dim, 1)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        fx = self.image_branch(x).mean((2, 3))
        hz = self.latent_branch(z)
        joint = self.joint_branch(torch.cat([fx, hz], 1))
        return torch.cat([self.score_x(fx), self.score_z(hz), self.score_xz(joint)], 1)


@register
class BigBiGAN(Method):
    """Bidirectional adversarial learning. E (backbone, pooling, an MLP) maps
    an image to a Gaussian over z (μ and σ = softplus; z = μ + σ ε with ε the
    batch's ``encoder_noise``; ``stochastic_encoder=False`` uses μ); G maps
    z ~ N(0, I) (the batch's ``z``) to an image; D scores pairs
    (x, E(x)) as real and (G(z), z) as fake with three heads (unary x, unary
    z, joint).

    Losses (paper, eq. 3-5; **unverified** against code, the official code is
    not public): ``encoder_generator_loss`` =
    :func:`python_models.losses.bigbigan_generator_loss` (E and G minimise
    E[s_x + s_z + s_xz] on real pairs minus the same on fake pairs) and
    ``discriminator_loss`` = :func:`python_models.losses.bigbigan_discriminator_loss`
    (per-score hinges). ``loss`` is their sum, built so one backward gives each
    player the gradient of its own objective only (D's terms see E(x) and G(z)
    detached; E and G's terms see D's parameters detached, :func:`frozen_call`):
    one optimiser descending ``loss`` runs simultaneous gradient descent of the
    two objectives. Its value is roughly constant by construction (the two
    terms trade off), so watch the two terms, not the total.
    ``parameter_groups()`` splits the players for separate optimisers or
    learning rates. G's images are made at ``image_size`` and resized
    (bilinear, antialiased) to the real images' size when it differs.

    ``forward(images)`` returns E's pooled backbone features B x D (the
    paper's "avepool" representation); ``encode(images, noise)`` E's z.

    Defaults (paper, Sec. 3 and Appendix; **unverified**):
        num_classes 0: unconditional, no classifier (the value is unused);
        backbone "resnet50" (the paper's E; it also reports RevNet-50 x 4);
        latent_dim 120 (BigGAN's z), image_size 128 (G's output resolution),
        encoder_mlp_dim 4096 (E's MLP after pooling), mlp_dim 2048 (H and J),
        stochastic_encoder True (the paper's non-deterministic E);
        generator_channels 64, discriminator_channels 64: DCGAN-sized stand-ins
        for BigGAN's G and D (no spectral normalisation, no self-attention):
        a deliberate deviation, kept small for CPU tests;
        learning_rate 2e-4, betas (0.0, 0.999) (BigGAN-style Adam).

    Kernels: none (none of wsss_ext's six kernels applies to BigBiGAN).
    """

    KEY = "bigbigan"
    PAPER = "Donahue & Simonyan, Large Scale Adversarial Representation Learning, NeurIPS 2019"
    DEFAULTS = dict(num_classes=0, backbone="resnet50", latent_dim=120, image_size=128, encoder_mlp_dim=4096,
                    mlp_dim=2048, stochastic_encoder=True, generator_channels=64, discriminator_channels=64,
                    learning_rate=2e-4, betas=(0.0, 0.999))
    KERNELS = ()
    BATCH_KEYS = {
        "images": "B x 3 x H x W float RGB in [0, 1] (real images, paired with E(x))",
        "z": "B' x latent_dim float, z ~ N(0, I) for the generator",
        "encoder_noise": "B x latent_dim float, ε ~ N(0, I) of the stochastic encoder",
    }
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        latent = int(self.config.latent_dim)
        if latent < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent}")
        self.backbone = self.build_backbone(PRETEXT_OUTPUT_STRIDE)
        self.encoder_head = mlp(self.backbone.out_channels, int(self.config.encoder_mlp_dim), 2 * latent)
        self.generator = _Generator(latent, int(self.config.image_size), int(self.config.generator_channels))
        self.discriminator = _Discriminator(latent, int(self.config.discriminator_channels),
                                            int(self.config.mlp_dim))

    def forward(self, images: Tensor) -> Tensor:
        """E's pooled backbone features B x D of images in [0, 1]."""
        return pooled_features(self.backbone, self.normalize(check_images(images)))

    def encode(self, images: Tensor, noise: Tensor | None = None) -> Tensor:
        """E(x): μ + σ ε (μ alone without ``noise`` or with a deterministic encoder), B x latent_dim."""
        mean, raw = self.encoder_head(self(images)).chunk(2, 1)
        if noise is None or not self.config.stochastic_encoder:
            return mean
        return mean + F.softplus(raw) * noise

    def generate(self, z: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """G(z): B x 3 x image_size x image_size in [0, 1], resized to ``size`` if given."""
        images = self.generator(z)
        if size is not None and tuple(size) != tuple(images.shape[-2:]):
            images = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        return images

    def _latent(self, value: object, name: str, rows: int | None) -> Tensor:
        if not isinstance(value, Tensor) or not value.dtype.is_floating_point:
            raise TypeError(f"{name} must be a float tensor")
        if value.dim() != 2 or value.shape[1] != self.config.latent_dim or (rows is not None and value.shape[0] != rows):
            expected = f"{rows if rows is not None else 'B'} x {self.config.latent_dim}"
            raise ValueError(f"{name} must be {expected}, got shape {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} has NaN or infinite values")
        return value

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images = check_images(batch["images"])
        z = self._latent(batch["z"], "z", None)
        noise = self._latent(batch["encoder_noise"], "encoder_noise", images.shape[0])
        encoded = self.encode(images, noise)
        generated = self.generate(z, images.shape[-2:])
        real_d = self.discriminator(images, encoded.detach())
        fake_d = self.discriminator(generated.detach(), z)
        real_g = frozen_call(self.discriminator, images, encoded)
        fake_g = frozen_call(self.discriminator, generated, z)
        encoder_generator = bigbigan_generator_loss(real_g, fake_g)
        discriminator = bigbigan_discriminator_loss(real_d, fake_d)
        return {"encoder_generator_loss": encoder_generator, "discriminator_loss": discriminator,
                "loss": encoder_generator + discriminator}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """``encoder_generator`` (backbone, encoder head, generator) and
        ``discriminator`` groups at ``learning_rate`` with ``betas``."""
        lr, betas = float(self.config.learning_rate), tuple(self.config.betas)
        players = [p for name, p in self.named_parameters() if not name.startswith("discriminator.")]
        return [{"name": "encoder_generator", "params": players, "lr": lr, "betas": betas},
                {"name": "discriminator", "params": list(self.discriminator.parameters()), "lr": lr, "betas": betas}]

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic images, z ~ N(0, I) and ε ~ N(0, I) (one of each per image)."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        images = synthetic_tagged_batch(batch_size, image_size, 3, g)["images"]
        latent = int(self.config.latent_dim)
        return {"images": images, "z": torch.randn(batch_size, latent, generator=g),
                "encoder_noise": torch.randn(batch_size, latent, generator=g)}
