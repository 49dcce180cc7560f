"""MAE (He et al., CVPR 2022): random masking and its restore indices, the
masked MSE and its per-patch normalised target against hand computations, the
method's defaults, input checks and a short training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_support import one_thread, seeded_batch, train_losses  # noqa: F401  (one_thread: autouse)

import python_models
from python_models.augment.masking import gather_tokens, random_masking, restore_tokens
from python_models.losses.reconstruction import (
    masked_reconstruction,
    normalized_patch_target,
    patchify,
    unpatchify,
)
from python_models.methods.mae import MAE, masking_from_mask, sincos_pos_embed_2d


def _small(**overrides) -> MAE:
    torch.manual_seed(0)
    return MAE(backbone="tiny", decoder_dim=32, decoder_depth=1, decoder_heads=2, **overrides)


def test_defaults_are_the_published_values():
    # facebookresearch/mae: main_pretrain.py --mask_ratio 0.75; models_mae.py *_dec512d8b (512, 8 blocks,
    # 16 heads, mlp ratio 4); PRETRAIN.md's recommended command uses --norm_pix_loss.
    assert MAE.DEFAULTS == dict(num_classes=0, backbone="vit_small", mask_ratio=0.75, decoder_dim=512,
                                decoder_depth=8, decoder_heads=16, mlp_ratio=4.0, norm_pix_loss=True)
    assert MAE.KERNELS == () and python_models.METHODS["mae"] is MAE


def test_random_masking_masks_the_published_ratio_and_restore_inverts_the_shuffle():
    m = random_masking(3, 196, 0.75, torch.Generator().manual_seed(1))
    assert m.keep.shape == (3, 49) and m.mask.sum(1).tolist() == [147.0] * 3  # int(196 * 0.25) kept
    arange = torch.arange(196).expand(3, -1)
    assert torch.equal(m.shuffle.gather(1, m.restore), arange)
    assert torch.equal(m.restore.gather(1, m.shuffle), arange)
    for b in range(3):  # the kept patches are exactly the zeros of the mask
        assert set(m.keep[b].tolist()) == set((m.mask[b] == 0).nonzero().flatten().tolist())
    again = random_masking(3, 196, 0.75, torch.Generator().manual_seed(1))
    assert torch.equal(again.keep, m.keep)
    assert not torch.equal(random_masking(3, 196, 0.75, torch.Generator().manual_seed(2)).keep, m.keep)


def test_restore_tokens_puts_kept_tokens_back_and_fills_the_rest():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, generator=g)
    m = random_masking(2, 8, 0.5, g)
    fill = torch.full((5,), 7.0)
    out = restore_tokens(gather_tokens(x, m.keep), fill, m.restore)
    visible = m.mask == 0
    assert torch.equal(out[visible], x[visible])
    assert torch.all(out[~visible] == 7.0)


def test_masking_from_mask_keeps_the_visible_patches():
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    m = masking_from_mask(mask)
    assert m.keep.tolist() == [[1, 3], [0, 1]]
    assert torch.equal(m.shuffle.gather(1, m.restore), torch.arange(4).expand(2, -1))
    with pytest.raises(ValueError, match="mask"):
        masking_from_mask(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))


def test_patchify_round_trips_in_mae_order():
    x = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    # patch (row 1, col 2) holds pixels (4 + i, 8 + j), ordered (i, j, channel)
    expected = x[0, :, 4:8, 8:12].permute(1, 2, 0).reshape(-1)
    assert torch.equal(p[0, 1 * 3 + 2], expected)
    assert torch.equal(unpatchify(p, 4, (8, 12)), x)


def test_masked_mse_and_norm_pix_target_by_hand():
    pred = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    target = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 6.0]]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    # patch 1: (1 + 4 + 9) / 3; patch 2: (16 + 9 + 1) / 3; mean over the two masked patches
    expected = ((14 / 3) + (26 / 3)) / 2
    assert float(masked_reconstruction(pred, target, mask)) == pytest.approx(expected)
    # normalised target: (x - mean) / sqrt(unbiased var + 1e-6), by hand for [1, 2, 3] (mean 2, var 1)
    row = np.array([1.0, 2.0, 3.0])
    by_hand = (row - row.mean()) / np.sqrt(row.var(ddof=1) + 1e-6)
    norm = normalized_patch_target(target)
    np.testing.assert_allclose(norm[0, 0].numpy(), by_hand, rtol=1e-6)
    zeros = torch.zeros_like(pred)
    expected_norm = float((norm[0, 1:] ** 2).mean(-1).mean())
    assert float(masked_reconstruction(zeros, target, mask, normalize_target=True)) == pytest.approx(expected_norm)


def test_loss_ignores_predictions_at_visible_patches():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 16, 12, generator=g), torch.randn(2, 16, 12, generator=g)
    m = random_masking(2, 16, 0.75, g)
    base = masked_reconstruction(pred, target, m.mask, normalize_target=True)
    changed = pred.clone()
    changed[m.mask == 0] += 100.0
    assert torch.equal(masked_reconstruction(changed, target, m.mask, normalize_target=True), base)
    leaf = pred.clone().requires_grad_()
    masked_reconstruction(leaf, target, m.mask).backward()
    assert torch.all(leaf.grad[m.mask == 0] == 0) and bool(leaf.grad[m.mask == 1].abs().sum() > 0)


def test_masked_reconstruction_gradcheck():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(1, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(1, 4, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: masked_reconstruction(p, target, mask, normalize_target=True), (pred,))


def test_masked_reconstruction_rejects_bad_input_by_name():
    pred, target, mask = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), torch.ones(2, 4)
    with pytest.raises(ValueError, match="mask"):
        masked_reconstruction(pred, target, mask[:, :3])
    with pytest.raises(ValueError, match="target"):
        masked_reconstruction(pred, target[:1], mask)
    with pytest.raises(TypeError, match="pred"):
        masked_reconstruction(pred.long(), target, mask)
    bad = pred.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pred"):
        masked_reconstruction(bad, target, mask)
    with pytest.raises(ValueError, match="mask"):
        masked_reconstruction(pred, target, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="distance"):
        masked_reconstruction(pred, target, mask, distance="l3")


def test_sincos_embedding_matches_the_formula():
    e = sincos_pos_embed_2d(8, (2, 3))
    assert e.shape == (7, 8) and torch.all(e[0] == 0)
    # token (row 1, col 2): columns first, omega = [1, 1/100]
    col, row = 2.0, 1.0
    expected = [np.sin(col), np.sin(col / 100), np.cos(col), np.cos(col / 100),
                np.sin(row), np.sin(row / 100), np.cos(row), np.cos(row / 100)]
    np.testing.assert_allclose(e[1 + 1 * 3 + 2].numpy(), expected, rtol=1e-6)


def test_method_encodes_only_visible_patches_and_its_loss_ignores_them():
    model = _small().eval()
    batch = seeded_batch(model)
    images, mask = batch["images"], batch["mask"]
    assert mask.shape == (2, 16) and mask.sum(1).tolist() == [12.0, 12.0]  # vit_tiny: patch 8 -> 4 x 4 grid
    seen = {}
    original = model.backbone.encode

    def spy(x, keep=None):
        seen["keep"] = keep
        return original(x, keep)

    model.backbone.encode = spy
    pred, _ = model.reconstruct(images, mask)
    assert seen["keep"].shape == (2, 4) and pred.shape == (2, 16, 8 * 8 * 3)
    # the loss is the masked MSE of that very prediction against the normalised-patch target
    loss = model.losses(batch)["loss"]
    target = patchify(model.normalize(images), 8)
    assert torch.allclose(loss, masked_reconstruction(pred, target, mask, normalize_target=True))


def test_method_rejects_bad_input_by_name():
    model = _small()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="images"):
        model.losses({"images": batch["images"][:, :, :30, :30]})
    with pytest.raises(ValueError, match="mask"):
        model.losses({**batch, "mask": batch["mask"][:, :8]})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"mask": batch["mask"]})
    with pytest.raises(ValueError, match="mask_ratio"):
        MAE(backbone="tiny", mask_ratio=1.0)


def test_loss_falls_over_20_steps():
    model = _small()
    losses = train_losses(model, seeded_batch(model), steps=20, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0]
