"""SEAM (Wang et al., CVPR 2020; YudeWang/SEAM): published defaults, the PCM
against a loop oracle and its properties, ER / ECR / min pooling on
hand-computed tensors, gradchecks, bad input, the dense CRF wiring of
pseudo_labels, and a training smoke."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from method_support import traced_ops, train_losses
from python_models import create
from python_models.augment import rescale
from python_models.backbones import ResNet38d, resnet_tiny
from python_models.heads.pcm import PCM, pcm_affinity, pcm_input, pcm_refine
from python_models.losses.seam import (
    equivariant_cross_regularization,
    equivariant_regularization,
    max_norm,
    max_onehot,
    min_pooling_loss,
    seam_cross_term,
    seam_losses,
)
from python_models.methods.seam import SEAM
from python_models.pseudo import ABSENT_ENERGY, PSA_CRF, alpha_crf_labels, alpha_crf_unary, psa_confident_labels, to_uint8


def _tiny(**overrides):
    torch.manual_seed(0)
    return create("seam", backbone="tiny", num_classes=3, **overrides)


# ---------------------------------------------------------------- defaults


def test_defaults_are_the_published_values():
    # YudeWang/SEAM train_SEAM.py (scale 0.3, top 20 %, h*w//4, lr, wd, batch, epochs, crop),
    # network/resnet38_SEAM.py (dropout7 0.5), infer_SEAM.py (scales, flip, 0.26, alphas 4 / 24),
    # tool/imutils.py crf_inference (3/3, 80/13/10, 10 iterations).
    assert SEAM.DEFAULTS == dict(
        num_classes=20,
        backbone="resnet38d",
        output_stride=8,
        dropout=0.5,
        scale_factor=0.3,
        ecr_top_fraction=0.2,
        min_pool_fraction=0.25,
        lr=0.01,
        weight_decay=5e-4,
        batch_size=8,
        max_epochs=8,
        crop_size=448,
        cam_scales=(0.5, 1.0, 1.5, 2.0),
        cam_flip=True,
        bg_score=0.26,
        crf_alphas=(4, 24),
        crf=dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
                 bilateral_weight=10.0),
    )
    assert SEAM.KERNELS == ("dense_crf",) and SEAM.TINY_BACKBONE == "resnet38d_tiny"


def test_default_backbone_is_resnet38_with_the_pcm_on_conv4_conv5():
    with torch.device("meta"):  # shapes only: ResNet-38 has 105 M parameters
        model = create("seam")
    assert isinstance(model.backbone, ResNet38d) and model.backbone.output_stride == 8
    # network/resnet38_SEAM.py: f8_3 512 -> 64, f8_4 1024 -> 128, f9 192 + 3 -> 192, fc8 4096 -> classes.
    assert (model.pcm.project4.in_channels, model.pcm.project5.in_channels) == (512, 1024)
    assert (model.pcm.project4.out_channels, model.pcm.project5.out_channels, model.pcm.embed.out_channels) == (
        64, 128, 192)
    assert model.pcm.embed.in_channels == 3 + 64 + 128
    assert model.head.weight.shape == (20, 4096, 1, 1)


def test_tiny_backbone_is_resnet38d_tiny_and_its_pcm_reads_conv4_conv5():
    model = _tiny().eval()
    assert isinstance(model.backbone, ResNet38d) and model.backbone.block_names[-2:] == ("b6", "b7")
    assert (model.pcm.project4.in_channels, model.pcm.project5.in_channels) == model.backbone.stage_channels[1:3]
    seen = {}
    model.pcm.register_forward_hook(lambda m, args, out: seen.update(conv4=args[2], conv5=args[3]))
    images = torch.rand(2, 3, 32, 32)
    model.raw_cams(model.normalize(images))
    maps = model.backbone.forward_as_dict(model.normalize(images))
    torch.testing.assert_close(seen["conv4"], maps["conv4"])
    torch.testing.assert_close(seen["conv5"], maps["conv5"])


def test_a_resnet_module_feeds_the_pcm_its_layer2_and_layer3():
    torch.manual_seed(0)
    backbone = resnet_tiny(output_stride=8)
    model = create("seam", backbone=backbone, num_classes=3).eval()
    assert (model.pcm.project4.in_channels, model.pcm.project5.in_channels) == backbone.stage_channels[1:3]
    assert model.head.weight.shape == (3, backbone.out_channels, 1, 1)
    seen = {}
    model.pcm.register_forward_hook(lambda m, args, out: seen.update(conv4=args[2], conv5=args[3]))
    x = model.normalize(torch.rand(2, 3, 32, 32))
    cams = model.raw_cams(x)
    assert cams.shape == (2, 3, 32, 32)
    layers = backbone.stages(x)
    torch.testing.assert_close(seen["conv4"], layers[1])
    torch.testing.assert_close(seen["conv5"], layers[2])


# ---------------------------------------------------------------- PCM


@pytest.mark.parametrize("seed", range(4))
def test_pcm_affinity_is_non_negative_symmetric_and_normalised(seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    raw = pcm_affinity(features, normalize=False)
    assert raw.shape == (2, 12, 12)
    assert bool((raw >= 0).all())
    torch.testing.assert_close(raw, raw.transpose(1, 2))
    norms = features.flatten(2).norm(dim=1)
    torch.testing.assert_close(raw.diagonal(dim1=1, dim2=2), (norms / (norms + 1e-5)) ** 2)
    some_negative = (features.flatten(2).transpose(1, 2) @ features.flatten(2) < 0).any()
    assert bool(some_negative) and bool((raw == 0).any())  # the ReLU really cut negative cosines
    affinity = pcm_affinity(features)
    # Column j holds the weights pixel j gathers (ŷ°_j = Σ_i ŷ_i Â_ij): they sum to S / (S + 1e-5).
    sums = affinity.sum(1)
    torch.testing.assert_close(sums, raw.sum(1) / (raw.sum(1) + 1e-5))
    assert bool((sums - 1).abs().max() < 1e-5)


def test_pcm_input_hand_computed():
    # 3 classes, 3 pixels. Class maxima 2, 4, 1.
    cams = torch.tensor([[2.0, 1.0, -3.0], [1.0, 4.0, 2.0], [1.0, -1.0, 1.0]]).view(1, 3, 1, 3)
    out = pcm_input(cams).view(4, 3)
    # normalised: class 0 [1, .5, 0], class 1 [.25, 1, .5], class 2 [1, 0, 1] (up to 1e-5)
    expected = torch.tensor([
        [0.0, 0.0, 0.0],          # background 1 - max: every pixel has a class at 1
        [1.0, 0.0, 0.0],          # class 0 wins pixel 0: (2 - eps) / (2 + eps) > (1 - eps) / (1 + eps)
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],          # so class 2 is zeroed there and kept at pixel 2
    ])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert not pcm_input(cams.requires_grad_()).requires_grad


def _resize_align_corners(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with align_corners=True of C x H x W, by loops."""
    channels, height, width = x.shape
    out = np.zeros((channels, *size))
    for i in range(size[0]):
        for j in range(size[1]):
            y = i * (height - 1) / (size[0] - 1) if size[0] > 1 else 0.0
            xx = j * (width - 1) / (size[1] - 1) if size[1] > 1 else 0.0
            y0, x0 = int(math.floor(y)), int(math.floor(xx))
            y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            dy, dx = y - y0, xx - x0
            out[:, i, j] = ((1 - dy) * (1 - dx) * x[:, y0, x0] + (1 - dy) * dx * x[:, y0, x1]
                            + dy * (1 - dx) * x[:, y1, x0] + dy * dx * x[:, y1, x1])
    return out


def _pcm_oracle(pcm: PCM, cams, images, conv4, conv5, eps=1e-5):
    """SEAM's PCM from the paper and resnet38_SEAM.py, pixel by pixel in numpy."""
    w4 = pcm.project4.weight.detach().double().numpy()[:, :, 0, 0]
    w5 = pcm.project5.weight.detach().double().numpy()[:, :, 0, 0]
    w9 = pcm.embed.weight.detach().double().numpy()[:, :, 0, 0]
    results = []
    for b in range(cams.shape[0]):
        cam = np.maximum(cams[b].double().numpy(), 0)
        classes, height, width = cam.shape
        n = height * width
        cam = cam.reshape(classes, n)
        peak = cam.max(1, keepdims=True) + eps
        cam = np.maximum(cam - eps, 0) / peak
        seed = np.zeros((classes + 1, n))
        for p in range(n):
            best = cam[:, p].max()
            seed[0, p] = 1 - best
            for c in range(classes):
                seed[c + 1, p] = cam[c, p] if cam[c, p] >= best else 0.0
        small = _resize_align_corners(images[b].double().numpy(), (height, width)).reshape(3, n)
        a4 = np.maximum(w4 @ conv4[b].double().numpy().reshape(-1, n), 0)
        a5 = np.maximum(w5 @ conv5[b].double().numpy().reshape(-1, n), 0)
        f = w9 @ np.concatenate([small, a4, a5], 0)
        affinity = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                cos = f[:, i] @ f[:, j] / ((np.linalg.norm(f[:, i]) + eps) * (np.linalg.norm(f[:, j]) + eps))
                affinity[i, j] = max(cos, 0.0)
        for j in range(n):
            affinity[:, j] /= affinity[:, j].sum() + eps
        out = np.zeros((classes + 1, n))
        for j in range(n):
            for i in range(n):
                out[:, j] += seed[:, i] * affinity[i, j]
        results.append(out.reshape(classes + 1, height, width))
    return torch.from_numpy(np.stack(results))


def test_pcm_matches_a_loop_oracle_and_detaches_cams_and_features():
    torch.manual_seed(0)
    pcm = PCM(4, 6).double()
    g = torch.Generator().manual_seed(1)
    cams = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    images = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    conv4 = torch.randn(2, 4, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    conv5 = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    out = pcm(cams, images, conv4, conv5)
    assert out.shape == (2, 4, 3, 4)
    torch.testing.assert_close(out, _pcm_oracle(pcm, cams.detach(), images, conv4.detach(), conv5.detach()))
    out.square().sum().backward()
    assert cams.grad is None and conv4.grad is None and conv5.grad is None
    for weight in (pcm.project4.weight, pcm.project5.weight, pcm.embed.weight):
        assert weight.grad is not None and float(weight.grad.abs().sum()) > 0


# ---------------------------------------------------------------- losses


def test_max_norm_and_max_onehot_hand_computed():
    cams = torch.tensor([[-1.0, 1.0, 3.0], [2.0, 2.0, 4.0]]).view(1, 2, 1, 3)
    expected = torch.tensor([[0.0, (1 - 1e-5) / (3 + 1e-5), (3 - 1e-5) / (3 + 1e-5)],
                             [0.0, 0.0, (2 - 1e-5) / (2 + 1e-5)]]).view(1, 2, 1, 3)
    torch.testing.assert_close(max_norm(cams), expected)
    scores = torch.tensor([[0.2, 0.7], [0.6, 0.4], [0.6, 0.1], [0.3, 0.9]]).view(1, 4, 1, 2)
    torch.testing.assert_close(max_onehot(scores), torch.tensor(
        [[0.2, 0.7], [0.6, 0.0], [0.6, 0.0], [0.0, 0.9]]).view(1, 4, 1, 2))


def test_rescale_is_seams_03_view():
    x = torch.rand(2, 3, 32, 32)
    assert rescale(x).shape == (2, 3, 9, 9)   # floor(32 * 0.3)
    torch.testing.assert_close(rescale(x), F.interpolate(x, scale_factor=0.3, mode="bilinear", align_corners=True))
    grid = torch.rand(1, 2, 11, 11)
    torch.testing.assert_close(rescale(grid), grid[..., ::5, ::5])   # 11 -> 3: pixels 0, 5, 10


def _equivariant_case(pointwise: bool):
    """An 11 x 11 image whose channel extremes (0 and 1) lie on the pixels the 0.3 view samples,
    and a 'network' that is a positive per-channel scaling (pointwise) or a 3 x 3 blur of it."""
    g = torch.Generator().manual_seed(5)
    image = 0.2 + 0.6 * torch.rand(1, 3, 11, 11, generator=g)
    image[0, :, 0, 5], image[0, :, 10, 10] = 0.0, 1.0
    weight = torch.tensor([1.5, 0.7, 2.0]).view(3, 1, 1, 1)

    def network(x):
        out = F.conv2d(x, weight, groups=3)
        return out if pointwise else F.avg_pool2d(out, 3, stride=1, padding=1, count_include_pad=False)

    view = rescale(image)
    cams1, cams2 = network(image), network(view)
    refined1 = torch.rand(1, 4, 11, 11, generator=g)
    refined2 = torch.rand(1, 4, 3, 3, generator=g)
    return seam_losses(cams1, refined1, cams2, refined2, torch.ones(1, 3))


def test_er_is_zero_for_an_equivariant_network_and_positive_otherwise():
    assert float(_equivariant_case(pointwise=True)["er"]) < 1e-6
    assert float(_equivariant_case(pointwise=False)["er"]) > 1e-3


def test_er_hand_computed_over_the_foreground_with_absent_classes_as_zeros():
    cams1 = torch.zeros(1, 2, 11, 11)
    cams1[0, 0, 0, 0], cams1[0, 1, 5, 5] = 2.0, 1.0
    cams2 = torch.zeros(1, 2, 3, 3)
    cams2[0, 0, 0, 0], cams2[0, 0, 1, 1] = 1.0, 1.0   # class 0: one extra pixel at 1 (normalised)
    cams2[0, 1, 2, 2] = 1.0                            # class 1 is absent: masked out
    terms = seam_losses(cams1, torch.rand(1, 3, 11, 11), cams2, torch.rand(1, 3, 3, 3), torch.tensor([[1.0, 0.0]]))
    full = (1 - 1e-5) / (1 + 1e-5)
    torch.testing.assert_close(terms["er"], torch.tensor(full / 18))   # one pixel differs in 2 x 3 x 3
    assert float(equivariant_regularization(cams2, cams2)) == 0.0


def test_ecr_term_is_the_top_20_percent_mean_hand_computed():
    # 3 labels (background, 2 classes) x 5 pixels: k = int(3 * 5 * 0.2) = 3.
    target = torch.tensor([[0.2, 0.7, 0.1, 0.0, 0.5],
                           [0.8, 0.3, 0.2, 1.0, 0.5],
                           [0.1, 0.1, 0.9, 0.0, 0.5]]).view(1, 3, 1, 5)
    # max_onehot(target): class 1 keeps pixels 0, 1, 3, 4; class 2 keeps 2 and 4 (tie).
    refined = torch.tensor([[0.2, 0.7, 0.1, 0.0, 0.5],
                            [0.8, 0.0, 0.0, 0.4, 0.5],
                            [0.75, 0.0, 0.9, 0.0, 0.0]]).view(1, 3, 1, 5)
    # gaps: class 1 pixel 1: 0.3, pixel 3: 0.6; class 2 pixel 0: 0.75 (target zeroed), pixel 4: 0.5 (tie kept)
    torch.testing.assert_close(seam_cross_term(target, refined), torch.tensor((0.75 + 0.6 + 0.5) / 3))
    both = equivariant_cross_regularization(target, refined, refined, target)
    torch.testing.assert_close(both, seam_cross_term(refined, refined) + seam_cross_term(target, target))
    # The other view's CAM is a target: no gradient reaches it.
    target.requires_grad_()
    refined.requires_grad_()
    seam_cross_term(target, refined).backward()
    assert target.grad is None and float(refined.grad.abs().sum()) > 0


def test_min_pooling_hand_computed():
    scores = torch.tensor([[[-1.0, 0.2], [0.4, 3.0]], [[0.5, 0.0], [0.0, 0.0]]]).unsqueeze(0)
    # max over classes: [[0.5, 0.2], [0.4, 3.0]]; k = 4 // 4 = 1 lowest: 0.2
    torch.testing.assert_close(min_pooling_loss(scores), torch.tensor(0.2))
    torch.testing.assert_close(min_pooling_loss(scores, 0.5), torch.tensor(0.3))
    torch.testing.assert_close(min_pooling_loss(-scores.abs() - 1), torch.tensor(0.0))   # ReLU


def test_seam_losses_total_and_terms():
    g = torch.Generator().manual_seed(2)
    cams1, refined1 = torch.randn(2, 3, 10, 10, generator=g), torch.rand(2, 4, 10, 10, generator=g)
    cams2, refined2 = torch.randn(2, 3, 3, 3, generator=g), torch.rand(2, 4, 3, 3, generator=g)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    terms = seam_losses(cams1, refined1, cams2, refined2, labels)
    assert set(terms) == {"classification", "min_pooling", "er", "ecr", "loss"}
    torch.testing.assert_close(terms["loss"], terms["classification"] + terms["min_pooling"] + terms["er"]
                               + terms["ecr"])
    cls = (F.multilabel_soft_margin_loss(cams1.mean((2, 3)), labels)
           + F.multilabel_soft_margin_loss(cams2.mean((2, 3)), labels)) / 2
    torch.testing.assert_close(terms["classification"], cls)
    tags = labels[..., None, None]
    torch.testing.assert_close(terms["min_pooling"], (min_pooling_loss(refined1[:, 1:] * tags)
                                                      + min_pooling_loss(refined2[:, 1:] * tags)) / 2)


def test_losses_gradcheck_float64():
    g = torch.Generator().manual_seed(3)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    assert torch.autograd.gradcheck(lambda x: max_norm(x), (leaf(2, 2, 3, 3),))
    assert torch.autograd.gradcheck(lambda c, f: pcm_refine(c, f), (leaf(1, 3, 2, 3), leaf(1, 4, 2, 3)))
    target = torch.rand(2, 3, 3, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda r: seam_cross_term(target, r), (leaf(2, 3, 3, 3),))
    assert torch.autograd.gradcheck(lambda s: min_pooling_loss(s), (leaf(2, 2, 4, 4),))
    assert torch.autograd.gradcheck(lambda a, b: equivariant_regularization(a, b), (leaf(2, 2, 3, 3), leaf(2, 2, 3, 3)))
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    cams1, refined1, cams2, refined2 = leaf(2, 2, 4, 4), leaf(2, 3, 4, 4), leaf(2, 2, 2, 2), leaf(2, 3, 2, 2)
    # The PCM outputs get the whole objective's gradient ...
    assert torch.autograd.gradcheck(lambda r1, r2: seam_losses(cams1, r1, cams2, r2, labels)["loss"],
                                    (refined1, refined2), fast_mode=True)
    # ... the CAMs every term but ECR's, where they are detached targets (so finite differences differ there).
    assert torch.autograd.gradcheck(
        lambda c1, c2: sum(seam_losses(c1, refined1, c2, refined2, labels)[key]
                           for key in ("classification", "min_pooling", "er")), (cams1, cams2), fast_mode=True)


def test_bad_input_names_the_argument():
    cams1, refined1 = torch.rand(2, 3, 10, 10), torch.rand(2, 4, 10, 10)
    cams2, refined2 = torch.rand(2, 3, 3, 3), torch.rand(2, 4, 3, 3)
    labels = torch.ones(2, 3)
    with pytest.raises(ValueError, match="cams2"):
        seam_losses(cams1, refined1, cams2[:1], refined2, labels)
    with pytest.raises(ValueError, match="refined2"):
        seam_losses(cams1, refined1, cams2, refined2[:1], labels)
    with pytest.raises(ValueError, match="refined1"):
        seam_losses(cams1, refined1[:, :3], cams2, refined2, labels)
    with pytest.raises(ValueError, match="labels"):
        seam_losses(cams1, refined1, cams2, refined2, torch.ones(2, 4))
    with pytest.raises(ValueError, match="labels"):
        seam_losses(cams1, refined1, cams2, refined2, torch.ones(2))
    with pytest.raises(TypeError, match="cams1"):
        seam_losses(cams1.long(), refined1, cams2, refined2, labels)
    with pytest.raises(ValueError, match="cams1"):
        seam_losses(cams1[0], refined1, cams2, refined2, labels)
    with pytest.raises(ValueError, match="cams_of_transformed"):
        equivariant_regularization(cams2, cams2[:1])
    with pytest.raises(ValueError, match="top_fraction"):
        seam_cross_term(refined2, refined2, top_fraction=1.5)
    with pytest.raises(ValueError, match="batch"):
        pcm_refine(cams2, torch.rand(1, 5, 3, 3))
    with pytest.raises(ValueError, match="conv4"):
        PCM(4, 6)(cams2, torch.rand(2, 3, 9, 9), torch.rand(2, 5, 3, 3), torch.rand(2, 6, 3, 3))
    with pytest.raises(TypeError, match="features"):
        pcm_affinity(torch.ones(1, 2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        alpha_crf_unary(torch.rand(2, 3, 4, 4), torch.ones(3, 3), 4)
    with pytest.raises(TypeError, match="integer"):
        psa_confident_labels(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    model = _tiny()
    batch = model.example_batch()
    with pytest.raises(ValueError, match="labels"):
        model.losses({**batch, "labels": batch["labels"][:, :2]})
    with pytest.raises(TypeError, match="images"):
        model.losses({**batch, "images": (batch["images"] * 255).to(torch.uint8)})


# ---------------------------------------------------------------- the method


def test_only_cls_and_er_train_the_backbone_and_ecr_trains_only_the_pcm():
    model = _tiny(dropout=0.0).train()
    terms = model.losses(model.example_batch())
    terms["ecr"].backward(retain_graph=True)
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.backbone.parameters())
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.head.parameters())
    assert float(model.pcm.embed.weight.grad.abs().sum()) > 0
    model.zero_grad()
    terms["er"].backward()
    assert float(model.head.weight.grad.abs().sum()) > 0
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.backbone.parameters())
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.pcm.parameters())


def test_cams_are_the_min_max_normalised_pcm_maps():
    model = _tiny().eval()
    batch = model.example_batch()
    images, labels = batch["images"], batch["labels"]
    with torch.no_grad():
        cams = model.cams(images, labels, scales=(1.0,), flip=False)
        raw = model.raw_cams(model.normalize(images))
    flat = raw.flatten(2)
    low, high = flat.amin(2)[..., None, None], flat.amax(2)[..., None, None]
    expected = torch.clamp(raw - low - 1e-5, min=0) / (high - low + 1e-5) * labels[..., None, None]
    torch.testing.assert_close(cams, expected)
    assert cams.shape == (2, 3, 32, 32)


def _expected_pseudo_labels(images, cams, labels, alphas):
    """SEAM's infer_SEAM.py _crf_with_alpha + PSA's label rule, one alpha per direct dense_crf call."""
    maps = []
    for alpha in alphas:
        tagged = cams * labels[..., None, None]
        probs = torch.cat([(1 - tagged.amax(1, keepdim=True)) ** alpha, tagged], 1)
        energy = -torch.log(probs.clamp(1e-5, 1.0))
        energy[~torch.cat([torch.ones(len(labels), 1, dtype=torch.bool), labels > 0], 1)] = ABSENT_ENERGY
        maps.append(wsss_ext.dense_crf(energy, to_uint8(images), **PSA_CRF).argmax(1))
    low, high = maps
    expected = low.clone()
    for index in np.ndindex(*low.shape):
        if low[index] == 0:
            expected[index] = 255
        if high[index] == 0:
            expected[index] = 0
    return expected, low, high


def test_pseudo_labels_run_dense_crf_and_equal_the_direct_call():
    model = _tiny().eval()
    batch = model.example_batch(generator=torch.Generator().manual_seed(4))
    images, labels = batch["images"], batch["labels"]
    ran, result = traced_ops(model.pseudo_labels, images, labels)
    assert "wsss_ext::dense_crf" in ran
    with torch.no_grad():
        cams = model.cams(images, labels)
    expected, low, high = _expected_pseudo_labels(images, cams, labels, (4, 24))
    assert torch.equal(result, expected)
    assert result.dtype == torch.int64 and result.shape == (2, 32, 32)
    # A larger alpha lowers the background score: never more background at 24 than at 4.
    assert int((high == 0).sum()) <= int((low == 0).sum())
    # Discriminating: alphas reversed give another answer unless the CRFs agree everywhere.
    if not torch.equal(low, high):
        assert not torch.equal(result, psa_confident_labels(high, low))


def test_pseudo_label_rule_on_confident_cams():
    # Hand-made CAMs: class 0 sure on the left third, weak in the middle, nothing on the right.
    images = torch.full((1, 3, 12, 12), 0.5)
    cams = torch.zeros(1, 2, 12, 12)
    cams[..., :4] = 1.0
    cams[..., 4:8] = 0.2   # (1 - 0.2)^4 = 0.41 > 0.2 > (0.8)^24 = 0.005: ignored
    labels = torch.tensor([[1.0, 0.0]])
    low, high = alpha_crf_labels(images, cams, labels, (4, 24), dict(PSA_CRF, n_iters=0))
    result = psa_confident_labels(low, high)
    assert bool((result[..., :4] == 1).all()) and bool((result[..., 4:8] == 255).all())
    assert bool((result[..., 8:] == 0).all())


def test_loss_falls_over_20_steps():
    model = _tiny(dropout=0.0).train()
    batch = model.example_batch(batch_size=2, image_size=32)
    history = train_losses(model, batch, lr=3e-3)
    assert np.mean(history[-3:]) < 0.8 * np.mean(history[:3]), history
