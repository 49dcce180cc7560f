"""SimMIM (Xie et al., CVPR 2022): the 32-px mask generator at ratio 0.6, the
L1 on masked pixels / (mask sum + 1e-5) / channels against a numpy oracle,
mask tokens in the encoder, defaults, input checks and a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from method_support import one_thread, seeded_batch, train_losses  # noqa: F401  (one_thread: autouse)

import python_models
from python_models.augment.masking import simmim_mask, upsample_mask
from python_models.losses.reconstruction import SIMMIM_EPS, masked_reconstruction
from python_models.methods.simmim import SimMIM


def _small(**overrides) -> SimMIM:
    torch.manual_seed(0)
    return SimMIM(backbone="tiny", mask_patch_size=16, **overrides)


def test_defaults_are_the_published_values():
    # microsoft/SimMIM config.py: DATA.MASK_PATCH_SIZE 32, DATA.MASK_RATIO 0.6
    assert SimMIM.DEFAULTS == dict(num_classes=0, backbone="vit_small", mask_patch_size=32, mask_ratio=0.6)
    assert SimMIM.KERNELS == () and python_models.METHODS["simmim"] is SimMIM


def test_mask_generator_masks_ceil_of_the_published_ratio_of_32px_squares():
    mask = simmim_mask(4, 224, 16, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 14, 14)
    squares = mask.view(4, 7, 2, 7, 2)
    # each 32-px square (2 x 2 model patches) is wholly masked or wholly visible
    assert torch.all(squares.amin((2, 4)) == squares.amax((2, 4)))
    assert squares.amax((2, 4)).sum((1, 2)).tolist() == [math.ceil(49 * 0.6)] * 4  # 30 of 49
    assert torch.equal(mask, simmim_mask(4, 224, 16, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="mask_patch_size"):
        simmim_mask(1, 48, 16)


def _l1_oracle(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    total, count = 0.0, 0.0
    b, c, h, w = pred.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                count += mask[i, y, x]
                for k in range(c):
                    total += abs(pred[i, k, y, x] - target[i, k, y, x]) * mask[i, y, x]
    return total / (count + 1e-5) / c


def test_l1_matches_an_independent_oracle_and_ignores_visible_pixels():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    mask = upsample_mask(simmim_mask(2, 8, 2, 4, 0.6, g), 2)
    assert mask.shape == (2, 8, 8)
    loss = masked_reconstruction(pred, target, mask, distance="l1", eps=SIMMIM_EPS)
    assert float(loss) == pytest.approx(_l1_oracle(pred.numpy(), target.numpy(), mask.numpy()), rel=1e-5)
    changed = pred.clone()
    changed[(mask == 0).unsqueeze(1).expand_as(pred)] = 50.0
    assert torch.equal(masked_reconstruction(changed, target, mask, distance="l1", eps=SIMMIM_EPS), loss)


def test_encoder_replaces_masked_patches_by_the_mask_token():
    model = _small().eval()
    batch = seeded_batch(model)
    images, mask = batch["images"], batch["mask"]
    assert mask.shape == (2, 4, 4) and mask.mean((1, 2)).tolist() == [0.75, 0.75]  # ceil(4 * 0.6) = 3 squares
    x = model.normalize(images)
    noisy = x.clone()
    pixel_mask = upsample_mask(mask, 8).bool().unsqueeze(1).expand_as(x)
    noisy[pixel_mask] = 3.0  # what lies under the masked patches never reaches the encoder
    with torch.no_grad():
        torch.testing.assert_close(model.encode(noisy, mask), model.encode(x, mask))
        assert not torch.allclose(model.encode(noisy), model.encode(x))
        assert model.reconstruct(images, mask).shape == images.shape


def test_method_loss_is_the_masked_l1_of_its_reconstruction():
    model = _small().eval()
    batch = seeded_batch(model)
    with torch.no_grad():
        rec = model.reconstruct(batch["images"], batch["mask"])
        loss = model.losses(batch)["loss"]
    target = model.normalize(batch["images"])
    expected = _l1_oracle(rec.numpy(), target.numpy(), upsample_mask(batch["mask"], 8).numpy())
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_method_rejects_bad_input_by_name():
    model = _small()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="mask_patch_size"):
        model.losses({"images": batch["images"][:, :, :24, :24]})
    with pytest.raises(ValueError, match="mask"):
        model.losses({**batch, "mask": batch["mask"][:, :2]})
    with pytest.raises(TypeError, match="images"):
        model.losses({"images": (batch["images"] * 255).to(torch.uint8)})
    with pytest.raises(ValueError, match="mask_patch_size"):
        SimMIM(backbone="tiny", mask_patch_size=12)


def test_loss_falls_over_20_steps():
    model = _small()
    losses = train_losses(model, seeded_batch(model), steps=20, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0]
