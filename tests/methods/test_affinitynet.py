"""AffinityNet / PSA (Ahn & Kwak, CVPR 2018; jiwoon-ahn/psa): defaults, the
affinity head, pair labels against loop oracles (ours and PSA's half-plane
layout), the three-term loss by hand and by gradcheck, the random walk inside
pseudo_labels against the dense reference, and the method's input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_support import traced_ops, train_losses

import wsss_ext
from python_models import create
from python_models.heads import AffinityHead
from python_models.losses.affinity import affinity_loss
from python_models.methods import CAM
from python_models.methods.affinitynet import AffinityNet
from python_models.pseudo import PSA_CRF
from python_models.pseudo.affinity_pairs import (
    affinity_pair_labels,
    psa_affinity_label_map,
    psa_random_walk,
    walked_labels,
)
from python_models.pseudo.cams import synthetic_cams
from wsss_ext.reference import random_walk_dense

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create("affinitynet", backbone="tiny", num_classes=NUM_CLASSES).eval()


@pytest.fixture(scope="module")
def batch(model):
    return model.example_batch(batch_size=2, image_size=32, generator=torch.Generator().manual_seed(0))


def _offsets(radius):
    return [(dy, dx) for dy in range(-radius + 1, radius) for dx in range(-radius + 1, radius)
            if dy * dy + dx * dx < radius * radius]


def test_defaults_are_psa_published_values():
    assert AffinityNet.DEFAULTS == dict(
        num_classes=20,                      # VOC
        backbone="resnet38d",                # network/resnet38_aff.py (on resnet38d.Net)
        output_stride=8,
        feature_stride=8,                    # voc12/data.py: AvgPool2d(8), cropsize // 8
        head_channels=(64, 128, 256),        # resnet38_aff.py f8_3, f8_4, f8_5 (-> f9 448)
        radius=5,                            # train_aff.py VOC12AffDataset(radius=5)
        loss_weights=(0.25, 0.25, 0.5),      # train_aff.py: bg/4 + fg/4 + neg/2
        lr=0.1, weight_decay=5e-4, batch_size=8, max_epochs=8, crop_size=448,   # README train_aff.py
        poly_power=0.9,                      # tool/torchutils.py PolyOptimizer
        color_jitter=(0.3, 0.3, 0.3, 0.1),   # train_aff.py ColorJitter
        beta=8.0, n_steps=256, bg_power=16.0,  # infer_aff.py --beta 8 --logt 8 --alpha 16
        crf_alphas=(4.0, 32.0),              # infer_cls.py --low_alpha 4 --high_alpha 32
        crf=PSA_CRF,                         # tool/imutils.py crf_inference
        cam_network="cam",                   # PSA's first network (resnet38_cls), built alike
    )
    assert PSA_CRF == dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0,
                           bilateral_srgb=13.0, bilateral_weight=10.0)
    assert AffinityNet.KERNELS == ("random_walk",) and AffinityNet.TINY_BACKBONE == "resnet38d_tiny"


def test_head_is_psa_f8_f9_on_the_last_three_stages(model):
    head = AffinityHead((512, 1024, 4096))    # ResNet-38's conv4, conv5, conv6
    assert [tuple(c.weight.shape) for c in head.reduce] == [(64, 512, 1, 1), (128, 1024, 1, 1), (256, 4096, 1, 1)]
    assert tuple(head.mix.weight.shape) == (448, 448, 1, 1) and head.out_channels == 448
    assert all(c.bias is None for c in [*head.reduce, head.mix])
    assert model.head.in_channels == tuple(model.backbone.stage_channels[-3:])
    features = model.features(torch.rand(1, 3, 40, 24))
    assert features.shape == (1, 448, 5, 3) and bool((features > -1).all())   # ELU output


def test_affinities_are_symmetric_in_unit_interval_with_unit_diagonal(model):
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model(images)
        assert torch.equal(a, wsss_ext.feature_affinity(model.features(images), 5))
    taps = _offsets(5)
    assert a.shape == (2, len(taps), 6, 5)
    height, width = a.shape[-2:]
    centre = taps.index((0, 0))
    assert torch.equal(a[:, centre], torch.ones_like(a[:, centre]))
    rows = torch.arange(height).view(-1, 1)
    cols = torch.arange(width).view(1, -1)
    for t, (dy, dx) in enumerate(taps):
        mirror = taps.index((-dy, -dx))
        inside = (rows + dy >= 0) & (rows + dy < height) & (cols + dx >= 0) & (cols + dx < width)
        assert bool((a[:, t][:, ~inside] == 0).all())
        assert bool((a[:, t][:, inside] > 0).all()) and bool((a[:, t][:, inside] <= 1).all())
        # a[p, t] == a[p + o_t, mirror(t)] on the pixels p whose tap lies inside.
        ys, xs = inside.nonzero(as_tuple=True)
        torch.testing.assert_close(a[:, t, ys, xs], a[:, mirror, ys + dy, xs + dx])
    assert float(a[:, [t for t in range(len(taps)) if t != centre]].max()) < 1   # distinct features


def _pairs_oracle(label_map, radius, ignore=255):
    """Every (pixel, tap) pair by plain loops."""
    label_map = label_map.numpy()
    batch, height, width = label_map.shape
    taps = _offsets(radius)
    out = np.zeros((3, batch, len(taps), height, width), bool)
    for b in range(batch):
        for t, (dy, dx) in enumerate(taps):
            for y in range(height):
                for x in range(width):
                    qy, qx = y + dy, x + dx
                    if (dy, dx) == (0, 0) or not (0 <= qy < height and 0 <= qx < width):
                        continue
                    p, q = label_map[b, y, x], label_map[b, qy, qx]
                    if p == ignore or q == ignore:
                        continue
                    out[0 if p == q == 0 else 1 if p == q else 2, b, t, y, x] = True
    return out


@pytest.mark.parametrize("radius", [2, 3, 5])
def test_pair_labels_equal_a_loop_oracle(radius):
    g = torch.Generator().manual_seed(radius)
    label_map = torch.randint(0, 4, (2, 6, 7), generator=g)
    label_map[torch.rand(2, 6, 7, generator=g) < 0.2] = 255
    bg, fg, neg = affinity_pair_labels(label_map, radius)
    expected = _pairs_oracle(label_map, radius)
    for got, want in zip((bg, fg, neg), expected):
        assert got.dtype == torch.bool
        np.testing.assert_array_equal(got.numpy(), want)
    assert not bool((bg & fg).any() or (bg & neg).any() or (fg & neg).any())
    assert bg.any() and fg.any() and neg.any()


def test_pair_labels_contain_psa_half_plane_pairs():
    """PSA's ExtractAffinityLabelInRadius (written again from voc12/data.py):
    lower-half taps from the cropped 'from' region; each of its pairs is ours,
    and ours count each unordered pair twice."""
    radius = 5
    g = torch.Generator().manual_seed(7)
    label_map = torch.randint(0, 3, (1, 12, 13), generator=g)
    label_map[torch.rand(1, 12, 13, generator=g) < 0.15] = 255
    ours = affinity_pair_labels(label_map, radius)
    taps = _offsets(radius)
    half = [(0, x) for x in range(1, radius)] + [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius)
                                                 if x * x + y * y < radius * radius]
    assert len(half) == (len(taps) - 1) // 2
    lab = label_map[0].numpy()
    r = radius - 1
    for dy, dx in half:
        t = taps.index((dy, dx))
        for y in range(12 - r):
            for x in range(r, 13 - r):
                p, q = lab[y, x], lab[y + dy, x + dx]
                valid = p < 255 and q < 255
                assert bool(ours[0][0, t, y, x]) == (p == q == 0)
                assert bool(ours[1][0, t, y, x]) == (p == q != 0 and valid)
                assert bool(ours[2][0, t, y, x]) == (p != q and valid)
    for mask in ours:   # symmetric layout: every unordered pair twice
        upper = sum(int(mask[0, taps.index((dy, dx))].sum()) for dy, dx in half)
        assert int(mask.sum()) == 2 * upper


def test_affinity_loss_by_hand_and_empty_terms():
    a = torch.tensor([0.9, 0.5, 0.2, 0.4]).view(1, 4, 1, 1)
    bg = torch.tensor([True, True, False, False]).view(1, 4, 1, 1)
    fg = torch.tensor([False, False, False, True]).view(1, 4, 1, 1)
    neg = torch.tensor([False, False, True, False]).view(1, 4, 1, 1)
    terms = affinity_loss(a, bg, fg, neg, eps=0.0)
    l_bg = -(np.log(0.9) + np.log(0.5)) / 2
    l_fg = -np.log(0.4)
    l_neg = -np.log(0.8)
    assert float(terms["bg_pos"]) == pytest.approx(l_bg, rel=1e-6)
    assert float(terms["fg_pos"]) == pytest.approx(l_fg, rel=1e-6)
    assert float(terms["neg"]) == pytest.approx(l_neg, rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(l_bg / 4 + l_fg / 4 + l_neg / 2, rel=1e-6)
    # PSA's formula (train_aff.py) with its 1e-5s agrees to that precision.
    psa_bg = float((-bg.float() * torch.log(a + 1e-5)).sum() / (bg.sum() + 1e-5))
    assert float(affinity_loss(a, bg, fg, neg)["bg_pos"]) == pytest.approx(psa_bg, rel=1e-4)
    # No foreground pairs, a = 1 on the negatives' taps elsewhere: 0, finite, and finite gradients.
    a = torch.tensor([1.0, 0.0, 0.3]).view(1, 3, 1, 1).requires_grad_()
    none = torch.zeros(1, 3, 1, 1, dtype=torch.bool)
    terms = affinity_loss(a, torch.tensor([True, False, False]).view(1, 3, 1, 1), none,
                          torch.tensor([False, True, False]).view(1, 3, 1, 1), eps=0.0)
    assert all(float(terms[name].detach()) == 0 for name in ("bg_pos", "fg_pos", "neg"))
    terms["loss"].backward()
    assert torch.isfinite(a.grad).all()
    empty = affinity_loss(a.detach(), none, none, none)
    assert all(float(v) == 0 for v in empty.values())


def test_affinity_loss_gradcheck():
    g = torch.Generator().manual_seed(3)
    a = (torch.rand(2, 5, 3, 3, generator=g, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    labels = torch.randint(0, 4, (3, 2, 5, 3, 3), generator=g)
    bg, fg, neg = labels[0] == 1, labels[1] == 2, labels[2] == 3
    assert torch.autograd.gradcheck(lambda x: affinity_loss(x, bg, fg, neg)["loss"], (a,))


def test_walk_of_a_constant_map_is_constant(model):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([[0.0, 1, 1], [1, 0, 0]])
    cams = torch.full((2, NUM_CLASSES, 32, 32), 0.5) * labels[..., None, None]
    walked = psa_random_walk(cams, labels, model.features(images).detach())
    expected = torch.cat([torch.full((2, 1, 32, 32), 0.5 ** 16), cams], 1)
    torch.testing.assert_close(walked, expected, atol=1e-5, rtol=1e-5)
    walked_cams = model.cams(images, labels, cams=cams)
    torch.testing.assert_close(walked_cams, labels[..., None, None].expand_as(cams), atol=1e-4, rtol=0)
    masks = model.pseudo_labels(images, labels, cams=cams)
    assert bool((masks[0] == 2).all()) and bool((masks[1] == 1).all())   # the first tag wins the tie


def test_walk_in_pseudo_labels_equals_the_dense_reference(model):
    """infer_aff.py written again: background at full size, avg-pool 8, the
    dense T^256 of A^8 (wsss_ext.reference), bilinear upsampling, argmax over the tags."""
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 40, 48, generator=g)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    cams = F.avg_pool2d(torch.rand(2, NUM_CLASSES, 40, 48, generator=g), 9, 1, 4) * labels[..., None, None]
    cams = cams / cams.flatten(2).amax(2).clamp(min=1e-5)[..., None, None]
    with torch.no_grad():
        features = model.features(images)
    affinity = wsss_ext.feature_affinity(features.double(), 5)
    scores = torch.cat([(1 - cams.amax(1, keepdim=True)) ** 16, cams], 1).double()
    dense = random_walk_dense(F.avg_pool2d(scores, 8), affinity, beta=8.0, n_steps=256)
    expected = F.interpolate(dense, (40, 48), mode="bilinear", align_corners=False)
    walked = psa_random_walk(cams, labels, features)
    torch.testing.assert_close(walked.double(), expected, atol=1e-5, rtol=1e-4)
    allowed = torch.cat([torch.ones(2, 1), labels], 1).bool()[..., None, None]
    masked = expected.masked_fill(~allowed, float("-inf"))
    top2 = masked.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4
    masks = model.pseudo_labels(images, labels, cams=cams)
    assert torch.equal(masks[clear], masked.argmax(1)[clear]) and clear.float().mean() > 0.9
    assert set(masks[1].unique().tolist()) <= {0, 2}


def test_walk_runs_in_the_random_walk_kernel(model, batch):
    ran, masks = traced_ops(model.pseudo_labels, batch["images"], batch["labels"], cams=batch["cams"])
    assert "wsss_ext::random_walk" in ran
    assert masks.shape == (2, 32, 32) and masks.dtype == torch.int64


def test_affinity_label_map_follows_psa_rule_on_a_hand_case():
    """With 0 mean-field iterations the CRF is softmax(-unary) = the clipped
    scores renormalised: cam 0.6 stays the class at both alphas, 0.1 is
    background at alpha 4 (0.9^4 = 0.66) but not at 32 (0.034) -> ignored,
    0 is background at both; the 8 x 8 blocks average the probabilities."""
    cams = torch.zeros(1, 2, 16, 24)
    cams[0, 1, :, :8] = 0.6
    cams[0, 1, :, 8:16] = 0.1
    labels = torch.tensor([[0.0, 1.0]])
    images = torch.full((1, 3, 16, 24), 0.5)
    label_map = psa_affinity_label_map(cams, images, labels, 8, (4, 32), dict(PSA_CRF, n_iters=0))
    assert label_map.tolist() == [[[2, 255, 0], [2, 255, 0]]]
    # One block, 5 of 8 columns at 0.6 and 3 at 0: averaged probabilities,
    # low alpha fg = 5/8 * 0.6 / (0.6 + 0.4^4) = 0.60 > bg; high alpha likewise -> the class.
    # 3 of 8 columns: fg = 3/8 * 0.96 = 0.36 < bg at alpha 4 and 0.375 < bg at 32 -> background.
    for columns, expected in ((5, 2), (3, 0)):
        cams = torch.zeros(1, 2, 8, 8)
        cams[0, 1, :, :columns] = 0.6
        label_map = psa_affinity_label_map(cams, images[..., :8, :8], labels, 8, (4, 32), dict(PSA_CRF, n_iters=0))
        assert label_map.tolist() == [[[expected]]]
    # Image size not a multiple of 8: ceil-sized map.
    assert psa_affinity_label_map(torch.zeros(1, 2, 17, 9), torch.zeros(1, 3, 17, 9), labels).shape == (1, 3, 2)


def test_example_batch_labels_are_at_the_feature_stride_and_in_the_tags(model, batch):
    assert batch["affinity_labels"].shape == (2, 4, 4)
    assert torch.equal(batch["cams"], synthetic_cams(batch["masks"], batch["labels"]))
    for label_map, tags in zip(batch["affinity_labels"], batch["labels"]):
        assert set(label_map.unique().tolist()) <= {0, 255} | {c + 1 for c in tags.nonzero().flatten().tolist()}
    assert bool((batch["affinity_labels"] == 0).any()) and bool((batch["affinity_labels"] > 0).any())


def test_cams_default_to_the_cam_network(model, batch):
    images, labels = batch["images"], batch["labels"]
    assert isinstance(model.cam_network, CAM) and not model.cam_network.training
    assert model.cam_network.config.backbone == "tiny" and model.cam_network.config.output_stride == 8
    given = model.cam_network.cams(images, labels)
    assert torch.equal(model.pseudo_labels(images, labels), model.pseudo_labels(images, labels, cams=given))
    model.train()
    assert not model.cam_network.training
    model.eval()
    without = create("affinitynet", backbone="tiny", num_classes=NUM_CLASSES, cam_network=None).eval()
    assert without.cam_network is None
    with pytest.raises(ValueError, match="cams"):
        without.pseudo_labels(images, labels)
    with pytest.raises(ValueError, match="cams"):
        without.cams(images, labels)
    with pytest.raises(TypeError, match="cam_network"):
        create("affinitynet", backbone="tiny", num_classes=NUM_CLASSES, cam_network=3)


def test_bad_inputs_are_named(model, batch):
    images, labels, cams = batch["images"], batch["labels"], batch["cams"]
    with pytest.raises(ValueError, match="cams"):
        model.pseudo_labels(images, labels, cams=cams[:, :2])
    with pytest.raises(ValueError, match="cams"):
        model.pseudo_labels(images, labels, cams=cams[..., :16, :16])
    bad = cams.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="cams"):
        model.pseudo_labels(images, labels, cams=bad)
    with pytest.raises(ValueError, match="labels"):
        model.pseudo_labels(images, labels[:1], cams=cams)
    with pytest.raises(ValueError, match="affinity_labels"):
        model.losses({**batch, "affinity_labels": batch["affinity_labels"][:, :3]})
    with pytest.raises(TypeError, match="affinity_labels"):
        model.losses({**batch, "affinity_labels": batch["affinity_labels"].float()})
    with pytest.raises(ValueError, match="affinity_labels"):
        model.losses({**batch, "affinity_labels": batch["affinity_labels"].clamp(max=5) * 0 + 7})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"images": images, "labels": labels})
    with pytest.raises(TypeError, match="label_map"):
        affinity_pair_labels(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="label_map"):
        affinity_pair_labels(torch.zeros(4, 4, dtype=torch.long))
    a = torch.rand(1, 69, 4, 4)
    masks = affinity_pair_labels(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="neg"):
        affinity_loss(a, masks[0], masks[1], masks[2][..., :3])
    with pytest.raises(ValueError, match="affinity"):
        affinity_loss(a.masked_fill(a > 0.5, float("nan")), *masks)
    with pytest.raises(TypeError, match="affinity"):
        affinity_loss(a.long(), *masks)
    with pytest.raises(ValueError, match="features"):
        psa_random_walk(cams, labels, torch.rand(2, 8, 3, 3))
    with pytest.raises(ValueError, match="labels"):
        walked_labels(torch.rand(2, 4, 5, 5), labels[:, :2])


def test_loss_falls_over_twenty_steps():
    torch.manual_seed(0)
    model = create("affinitynet", backbone="tiny", num_classes=NUM_CLASSES, cam_network=None).train()
    batch = model.example_batch(batch_size=2, image_size=32, generator=torch.Generator().manual_seed(1))
    losses = train_losses(model, batch)
    assert losses[-1] < 0.7 * losses[0], losses
