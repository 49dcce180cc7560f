"""Context encoders (Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context
Encoders: Feature Learning by Inpainting", CVPR 2016): an encoder-decoder
fills the erased centre of an image, trained with a masked L2 loss and an
adversarial loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models._checks import check_images
from python_models.augment.pretext import centre_box, mask_centre
from python_models.heads.pretext import (
    PRETEXT_OUTPUT_STRIDE,
    frozen_call,
    pooled_features,
)
from python_models.losses.pretext import (
    context_encoder_weights,
    gan_bce_losses,
    masked_l2,
)
from python_models.methods.base import Method, synthetic_tagged_batch
from python_models.methods.registry import register

__all__ = ["ContextEncoder"]


def _up(fan_in: int, fan_out: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(fan_in, fan_out, 4, 2, 1, bias=False), nn.BatchNorm2d(fan_out), nn.ReLU(inplace=True)]


class _Discriminator(nn.Module):
    """Pathak's adversarial discriminator on the centre region: 4 x 4 stride-2
    convolutions (ndf, 2 ndf, 4 ndf, 8 ndf; BatchNorm after all but the first;
    LeakyReLU 0.2), then one logit (the paper's 4 x 4 valid conv on its 4 x 4
    map; here global average pooling and a linear layer, for any size)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = [3, channels, 2 * channels, 4 * channels, 8 * channels]
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(fan_in, fan_out, 4, 2, 1, bias=False))
            if index:
                layers.append(nn.BatchNorm2d(fan_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(widths[-1], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.logit(self.features(x).mean((2, 3))).squeeze(1)


@register
class ContextEncoder(Method):
    """Inpainting the centre: the input is the image with its centre erased
    (:func:`python_models.augment.mask_centre`: the central half of each side,
    less ``overlap`` pixels, filled with the ImageNet mean colour); the
    encoder (backbone at stride 32), a 1 x 1 bottleneck (BatchNorm, LeakyReLU
    0.2) and a decoder of stride-2 transposed convolutions (8, 4, 2, 1 x
    ``decoder_channels``, then RGB through a sigmoid, as many as the backbone's
    stride needs) predict the image; the centre box of the prediction is what
    is trained and shown to the discriminator.

    Loss (context-encoder ``train.lua``): the generator minimises
    ``0.999 · masked_l2 + 0.001 · BCE(D(G), real)`` (``reconstruction``,
    ``adversarial``; ``generator_loss``), the L2 weighted 10 on the overlap
    ring and 1 inside (:func:`python_models.losses.context_encoder_weights`)
    and averaged over the centre box, so pixels outside it never count; the
    discriminator minimises ``BCE(D(x), real) + BCE(D(G), fake)``
    (``discriminator_loss``). ``loss`` = generator_loss + discriminator_loss,
    built so that one backward gives each player the gradient of its own term
    only: D's terms see the prediction detached, G's terms see D's parameters
    detached (:func:`frozen_call`). One optimiser descending ``loss`` thus
    descends each player's objective (D is not pushed to help G nor G to help
    D); the printed value of a GAN total is not expected to fall steadily.
    ``parameter_groups()`` gives Adam's groups with the published learning
    rates (generator 10 x the discriminator's when 0 < weight < 1).

    Images are RGB in [0, 1] and predictions a sigmoid in [0, 1]; the original
    works in [-1, 1] with tanh (an affine change that scales the L2 by 4).

    Defaults (context-encoder ``train.lua`` and the README's centre-inpainting
    command ``overlapPred=4 wtl2=0.999 nBottleneck=4000``; weights **unverified**
    against the paper's λ_rec 0.999 / λ_adv 0.001, which they match):
        num_classes 0: no classifier (the value is unused);
        backbone "resnet50": the paper's feature-learning encoder is AlexNet
            (pool5 and a channel-wise fully-connected layer); here any backbone,
            its stride-32 map into a 1 x 1 conv bottleneck instead;
        reconstruction_weight 0.999 (wtl2), adversarial_weight 0.001 (1 - wtl2),
        overlap 4 (overlapPred), overlap_weight 10 (overlapL2Weight),
        bottleneck 4000 (nBottleneck), decoder_channels 64 (ngf),
        discriminator_channels 64 (ndf), learning_rate 2e-4 (lr, Adam),
        beta1 0.5, generator_lr_factor 10.

    Kernels: none (none of wsss_ext's six kernels applies to context encoders).
    """

    KEY = "context_encoder"
    PAPER = ("Pathak, Krähenbühl, Donahue, Darrell & Efros, Context Encoders: Feature Learning by Inpainting, "
             "CVPR 2016")
    DEFAULTS = dict(num_classes=0, backbone="resnet50", reconstruction_weight=0.999, adversarial_weight=0.001,
                    overlap=4, overlap_weight=10.0, bottleneck=4000, decoder_channels=64,
                    discriminator_channels=64, learning_rate=2e-4, beta1=0.5, generator_lr_factor=10.0)
    KERNELS = ()
    BATCH_KEYS = {"images": "B x 3 x H x W float RGB in [0, 1]; the centre is erased inside losses()"}
    TINY_BACKBONE = "resnet_tiny"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.backbone = self.build_backbone(PRETEXT_OUTPUT_STRIDE)
        stride = int(getattr(self.backbone, "output_stride", PRETEXT_OUTPUT_STRIDE))
        stages = round(math.log2(stride))
        if 2 ** stages != stride or stages < 1:
            raise ValueError(f"the backbone's output stride must be a power of 2, got {stride}")
        width, bottleneck = int(self.config.decoder_channels), int(self.config.bottleneck)
        self.bottleneck = nn.Sequential(nn.Conv2d(self.backbone.out_channels, bottleneck, 1),
                                        nn.BatchNorm2d(bottleneck), nn.LeakyReLU(0.2, inplace=True))
        widths = [bottleneck] + [width * 2 ** max(0, 3 - i) for i in range(stages - 1)]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += _up(fan_in, fan_out)
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)
        self.discriminator = _Discriminator(int(self.config.discriminator_channels))

    def predict(self, images: Tensor) -> Tensor:
        """The network's image B x 3 x H x W in [0, 1] from the masked input
        (only its centre box is trained)."""
        images = check_images(images)
        masked, _ = mask_centre(images, self.config.overlap)
        out = self.decoder(self.bottleneck(self.backbone(self.normalize(masked))))
        if out.shape[-2:] != images.shape[-2:]:
            out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def forward(self, images: Tensor) -> Tensor:
        """The inpainted images: the prediction inside the centre box, the input elsewhere."""
        images = check_images(images)
        y0, y1, x0, x1 = centre_box(*images.shape[-2:])
        out = images.clone()
        out[..., y0:y1, x0:x1] = self.predict(images)[..., y0:y1, x0:x1]
        return out

    def features(self, images: Tensor) -> Tensor:
        """The encoder's pooled features B x D of (unmasked) images in [0, 1]."""
        return pooled_features(self.backbone, self.normalize(check_images(images)))

    def losses(self, batch: Mapping[str, Any], step: int = 0) -> dict[str, Tensor]:
        self.check_batch(batch)
        images = check_images(batch["images"])
        height, width = images.shape[-2:]
        prediction = self.predict(images)
        weights = context_encoder_weights(height, width, self.config.overlap, self.config.overlap_weight,
                                          device=images.device)
        reconstruction = masked_l2(prediction, images, weights)
        y0, y1, x0, x1 = centre_box(height, width)
        real, fake = images[..., y0:y1, x0:x1], prediction[..., y0:y1, x0:x1]
        adversarial, discriminator = gan_bce_losses(self.discriminator(real), self.discriminator(fake.detach()),
                                                    frozen_call(self.discriminator, fake))
        generator = (self.config.reconstruction_weight * reconstruction
                     + self.config.adversarial_weight * adversarial)
        return {"reconstruction": reconstruction, "adversarial": adversarial, "generator_loss": generator,
                "discriminator_loss": discriminator, "loss": generator + discriminator}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Adam parameter groups: ``generator`` (encoder, bottleneck, decoder) at
        ``learning_rate`` x ``generator_lr_factor`` (when 0 < reconstruction_weight
        < 1, as train.lua) and ``discriminator`` at ``learning_rate``; both with
        betas (beta1, 0.999). ``torch.optim.Adam(model.parameter_groups())``."""
        lr = float(self.config.learning_rate)
        factor = self.config.generator_lr_factor if 0 < self.config.reconstruction_weight < 1 else 1.0
        generator = [p for name, p in self.named_parameters() if not name.startswith("discriminator.")]
        betas = (float(self.config.beta1), 0.999)
        return [{"name": "generator", "params": generator, "lr": lr * factor, "betas": betas},
                {"name": "discriminator", "params": list(self.discriminator.parameters()), "lr": lr, "betas": betas}]

    def example_batch(self, batch_size: int = 2, image_size: int = 32,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Synthetic images (:func:`synthetic_tagged_batch`)."""
        return {"images": synthetic_tagged_batch(batch_size, image_size, 3, generator)["images"]}
