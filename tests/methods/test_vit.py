"""python_models.backbones.vit: DINO's ViT (names, size, shapes), its last
attention, the MAE encoder of visible patches and position-embedding
interpolation, with a plain-loop oracle of one block."""

import math

import pytest
import torch
import torch.nn.functional as F

from python_models.backbones import (
    BACKBONES,
    VisionTransformer,
    build_backbone,
    interpolate_pos_embed,
    vit_small,
    vit_tiny,
)


def _tiny(**kwargs):
    torch.manual_seed(0)
    return vit_tiny(**kwargs).eval()


def _images(b=2, h=32, w=32, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_vit_small_parameter_count_and_dino_names():
    model = vit_small(patch_size=16)
    d, p, n, depth = 384, 16, (224 // 16) ** 2, 12
    per_block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = (3 * p * p * d + d) + d + (1 + n) * d + depth * per_block + 2 * d
    assert sum(t.numel() for t in model.parameters()) == expected == 21_665_664
    keys = set(model.state_dict())
    block = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"}
    dino = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
            "norm.bias"} | {f"blocks.{i}.{k}" for i in range(12) for k in block}
    assert keys == dino
    assert model.state_dict()["pos_embed"].shape == (1, 197, 384)
    assert model.state_dict()["blocks.0.attn.qkv.weight"].shape == (1152, 384)
    assert model.out_channels == 384 and model.output_stride == 16 and model.num_heads == 6


def test_registered_and_shapes():
    assert {"vit_small", "vit_tiny"} <= set(BACKBONES)
    model = build_backbone("vit_tiny", tiny="resnet_tiny", output_stride=16)  # the stride is ignored
    assert isinstance(model, VisionTransformer) and model.output_stride == 8
    model.eval()
    x = _images(h=32, w=40)
    cls, patches = model.tokens(x)
    assert cls.shape == (2, 48) and patches.shape == (2, 20, 48)
    fmap = model(x)
    assert fmap.shape == (2, model.out_channels, 4, 5)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), patches)  # row-major grid
    stages = model.stages(x)
    assert [s.shape[1] for s in stages] == list(model.stage_channels)
    torch.testing.assert_close(stages[-1], fmap)
    assert model.last_attention(x).shape == (2, 3, 21, 21)


def _layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * weight + bias


def _oracle_one_block(state, images, patch, heads):
    """Plain loops over patches and heads, from the ViT paper's equations."""
    b, _, hh, ww = images.shape
    gh, gw = hh // patch, ww // patch
    w_patch = state["patch_embed.proj.weight"].reshape(state["patch_embed.proj.weight"].shape[0], -1)
    tokens = []
    for i in range(b):
        rows = [state["cls_token"][0, 0] + state["pos_embed"][0, 0]]
        for r in range(gh):
            for c in range(gw):
                piece = images[i, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].reshape(-1)
                rows.append(w_patch @ piece + state["patch_embed.proj.bias"] + state["pos_embed"][0, 1 + r * gw + c])
        tokens.append(torch.stack(rows))
    x = torch.stack(tokens)
    d = x.shape[-1]
    y = _layer_norm(x, state["blocks.0.norm1.weight"], state["blocks.0.norm1.bias"])
    qkv = y @ state["blocks.0.attn.qkv.weight"].T + state["blocks.0.attn.qkv.bias"]
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    hd = d // heads
    attention = torch.zeros(b, heads, x.shape[1], x.shape[1])
    out = torch.zeros_like(x)
    for i in range(b):
        for h in range(heads):
            qh, kh, vh = (t[i, :, h * hd:(h + 1) * hd] for t in (q, k, v))
            scores = qh @ kh.T / math.sqrt(hd)
            a = torch.exp(scores - scores.max(1, keepdim=True).values)
            a = a / a.sum(1, keepdim=True)
            attention[i, h] = a
            out[i, :, h * hd:(h + 1) * hd] = a @ vh
    x = x + out @ state["blocks.0.attn.proj.weight"].T + state["blocks.0.attn.proj.bias"]
    y = _layer_norm(x, state["blocks.0.norm2.weight"], state["blocks.0.norm2.bias"])
    y = F.gelu(y @ state["blocks.0.mlp.fc1.weight"].T + state["blocks.0.mlp.fc1.bias"])
    x = x + y @ state["blocks.0.mlp.fc2.weight"].T + state["blocks.0.mlp.fc2.bias"]
    return _layer_norm(x, state["norm.weight"], state["norm.bias"]), attention


def test_one_block_equals_the_loop_oracle_and_attention_rows_sum_to_one():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=12, depth=1, num_heads=3).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, t in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                t.add_(0.1 * torch.randn_like(t))
    x = _images(h=16, w=16)
    expected, attention = _oracle_one_block(model.state_dict(), x, 8, 3)
    cls, patches = model.tokens(x)
    torch.testing.assert_close(torch.cat([cls[:, None], patches], 1), expected, rtol=1e-4, atol=1e-5)
    got = model.last_attention(x)
    torch.testing.assert_close(got, attention, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 3, 5))
    assert (got >= 0).all()


def test_encode_keeps_the_chosen_patches():
    model = _tiny()
    x = _images()
    cls, patches = model.tokens(x)
    all_kept = torch.arange(16).expand(2, -1)
    c2, p2 = model.encode(x, all_kept)
    torch.testing.assert_close(c2, cls)
    torch.testing.assert_close(p2, patches)
    # a permutation of all patches permutes the tokens (positions travel with the patches)
    perm = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    c3, p3 = model.encode(x, perm)
    torch.testing.assert_close(c3, cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p3, patches.gather(1, perm[..., None].expand(-1, -1, 48)), rtol=1e-5, atol=1e-5)
    # a subset: N' tokens, which depend on the kept patches only
    keep = torch.tensor([[0, 5, 9, 15], [3, 2, 1, 0]])
    c4, p4 = model.encode(x, keep)
    assert c4.shape == (2, 48) and p4.shape == (2, 4, 48)
    assert (p4 - patches.gather(1, keep[..., None].expand(-1, -1, 48))).abs().max() > 1e-3
    y = x.clone()
    y[0, :, 8:16, 8:16] += 1.0  # patch 5 of image 0 is kept, patch (1, 1) = 5
    y[1, :, 24:32, 24:32] += 1.0  # patch 15 of image 1 is dropped
    c5, p5 = model.encode(y, keep)
    assert (p5[0] - p4[0]).abs().max() > 1e-3
    torch.testing.assert_close(p5[1], p4[1])
    torch.testing.assert_close(c5[1], c4[1])


def test_position_embedding_interpolation():
    pos = torch.randn(1, 1 + 4 * 4, 6, generator=torch.Generator().manual_seed(0))
    assert interpolate_pos_embed(pos, (4, 4)) is pos
    out = interpolate_pos_embed(pos, (8, 6))
    assert out.shape == (1, 1 + 48, 6)
    torch.testing.assert_close(out[:, 0], pos[:, 0])  # the class embedding is kept
    flat = torch.ones(1, 17, 6) * torch.arange(6.0)
    torch.testing.assert_close(interpolate_pos_embed(flat, (3, 7)), torch.ones(1, 22, 6) * torch.arange(6.0))
    # a smooth resize: the mean of the field is nearly kept
    assert abs(float(out[0, 1:].mean()) - float(pos[0, 1:].mean())) < 0.1
    model = _tiny()
    x = _images(h=48, w=56)  # 6 x 7 grid from embeddings made for 4 x 4
    assert model(x).shape == (2, 48, 6, 7)
    assert model.last_attention(x).shape == (2, 3, 43, 43)


def test_load_pretrained_from_a_dino_checkpoint(tmp_path):
    source = VisionTransformer(img_size=32, patch_size=8, embed_dim=12, depth=2, num_heads=3)
    state = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    state["module.head.last_layer.weight_g"] = torch.ones(1, 5)
    torch.save({"teacher": state, "student": {}, "epoch": 3}, tmp_path / "checkpoint.pth")
    target = VisionTransformer(img_size=32, patch_size=8, embed_dim=12, depth=2, num_heads=3)
    unused = target.load_pretrained(tmp_path / "checkpoint.pth")
    assert unused == ["head.last_layer.weight_g"]
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    # a bare state dict trained for another grid: pos_embed interpolated
    bigger = VisionTransformer(img_size=48, patch_size=8, embed_dim=12, depth=2, num_heads=3)
    torch.save(bigger.state_dict(), tmp_path / "bare.pth")
    assert target.load_pretrained(tmp_path / "bare.pth") == []
    torch.testing.assert_close(target.pos_embed, interpolate_pos_embed(bigger.pos_embed, (4, 4)))
    torch.save({"cls_token": torch.zeros(1, 1, 12)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="lacks"):
        target.load_pretrained(tmp_path / "partial.pth")


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = vit_tiny(drop_path_rate=0.5)
    x = _images()
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert (a - model(x)).abs().max() > 1e-4


def test_bad_input():
    model = _tiny()
    with pytest.raises(ValueError, match="x"):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="x"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(TypeError, match="x"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="x"):
        model(torch.zeros(2, 3, 4, 32))
    x = _images()
    with pytest.raises(ValueError, match="keep"):
        model.encode(x, torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="keep"):
        model.encode(x, torch.full((2, 4), 16))
    with pytest.raises(TypeError, match="keep"):
        model.encode(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="num_heads"):
        VisionTransformer(embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="drop_path_rate"):
        vit_tiny(drop_path_rate=1.0)
    with pytest.raises(ValueError, match="pos_embed"):
        interpolate_pos_embed(torch.zeros(1, 6, 4), (2, 2))
