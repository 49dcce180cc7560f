"""CAM, Grad-CAM and MIL-seg, and the blocks they share: the CAM head,
multi-scale CAMs, tag-restricted dense CRF unaries, IRNet's confident labels,
Grad-CAM for every class, GWRP and LSE pooling."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wsss_ext
from method_support import seeded_batch, traced_ops, train_losses
from python_models import create
from python_models.losses import gwrp, lse_pool
from python_models.pseudo import (
    ABSENT_ENERGY,
    IRNET_CRF,
    cams_to_labels,
    confident_labels,
    crf_labels,
    grad_cam,
    multiscale_cams,
    normalize_cams,
    tag_unary_from_labels,
    tag_unary_from_probs,
    to_uint8,
)


def _model(key="cam", **overrides):
    torch.manual_seed(0)
    return create(key, backbone="tiny", num_classes=4, **overrides).eval()


# --- published defaults ---------------------------------------------------------------------------


def test_cam_defaults_are_irnets():
    # irn run_sample.py: cam_scales (1.0, 0.5, 1.5, 2.0), conf_fg_thres 0.30, conf_bg_thres 0.05;
    # net/resnet50_cam.py: strides (2, 2, 2, 1) = output stride 16; misc/imutils.py crf_inference_label.
    assert create("cam").DEFAULTS == dict(
        num_classes=20, backbone="resnet50", output_stride=16, cam_scales=(1.0, 0.5, 1.5, 2.0), cam_flip=True,
        fg_threshold=0.30, bg_threshold=0.05,
        crf=dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=50.0, bilateral_srgb=5.0,
                 bilateral_weight=10.0))
    assert create("grad_cam").DEFAULTS == create("cam").DEFAULTS
    assert create("mil").DEFAULTS["r"] == 5.0 and create("mil").DEFAULTS["crf"] == IRNET_CRF


# --- CAM ------------------------------------------------------------------------------------------


def test_cam_logits_are_the_mean_of_the_raw_cams_and_cams_match_a_hand_pipeline():
    model = _model()
    batch = seeded_batch(model)
    images, labels = batch["images"], batch["labels"]
    raw = model.raw_cams(model.normalize(images))
    torch.testing.assert_close(model(images), raw.mean((2, 3)))
    # IRNet's make_cam by hand: relu, flip, resize, sum over scales, divide by max + 1e-5, tags only.
    expected = 0
    for scale in (1.0, 0.5):
        x = model.normalize(images)
        if scale != 1:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        maps = F.relu(model.raw_cams(x)) + F.relu(model.raw_cams(x.flip(-1))).flip(-1)
        expected = expected + F.interpolate(maps, size=(32, 32), mode="bilinear", align_corners=False)
    expected = expected / (expected.amax((2, 3), keepdim=True) + 1e-5) * labels[..., None, None]
    with torch.no_grad():
        torch.testing.assert_close(model.cams(images, labels, scales=(1.0, 0.5), flip=True), expected)


def test_cam_loss_is_multilabel_soft_margin_and_falls():
    model = _model().train()
    batch = seeded_batch(model)
    terms = model.losses(batch)
    torch.testing.assert_close(terms["loss"], F.multilabel_soft_margin_loss(model(batch["images"]), batch["labels"]))
    first = train_losses(model, batch, lr=1e-2)[0]
    assert float(model.losses(batch)["loss"].detach()) < 0.5 * first


def test_cam_pseudo_labels_equal_irnets_rule_per_image():
    """IRNet's cam_to_ir_label, image by image over its present labels only, with wsss_ext.dense_crf."""
    model = _model()
    batch = seeded_batch(model, seed=5)
    images, labels = batch["images"], batch["labels"]
    with torch.no_grad():
        cams = model.cams(images, labels)
        got = model.pseudo_labels(images, labels)
    for b in range(2):
        keys = [0] + [c + 1 for c in labels[b].nonzero().flatten().tolist()]
        present = cams[b, [k - 1 for k in keys[1:]]]
        image = to_uint8(images[b : b + 1])

        def refined(threshold):
            seed = torch.cat([torch.full_like(present[:1], threshold), present]).argmax(0)
            unary = wsss_ext.unary_from_labels(seed[None], len(keys), 0.7)
            return torch.tensor(keys)[wsss_ext.dense_crf(unary, image, **IRNET_CRF).argmax(1)[0]]

        fg, bg = refined(0.30), refined(0.05)
        expected = fg.clone()
        expected[fg == 0] = 255
        expected[(fg == 0) & (bg == 0)] = 0
        assert torch.equal(got[b], expected)


def test_cam_runs_dense_crf_in_pseudo_labels():
    model = _model()
    batch = seeded_batch(model)
    ops, _ = traced_ops(model.pseudo_labels, batch["images"], batch["labels"])
    assert "wsss_ext::dense_crf" in ops


# --- Grad-CAM -------------------------------------------------------------------------------------


def test_grad_cam_of_a_gap_linear_head_is_the_relu_cam_over_hw_for_every_class():
    model = _model()
    images = seeded_batch(model)["images"]
    raw = model.raw_cams(model.normalize(images))
    h, w = raw.shape[-2:]
    maps = grad_cam(model, images)
    torch.testing.assert_close(maps, F.relu(raw).detach() / (h * w), rtol=1e-4, atol=1e-7)
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 1]])
    masked = grad_cam(model, images, labels)
    assert torch.all(masked[labels == 0] == 0)
    torch.testing.assert_close(masked[labels == 1], maps[labels == 1])
    # The method's CAMs then equal CAM's after normalisation (up to the 1e-5 added to the max,
    # relatively larger for maps h * w times smaller).
    cam = create("cam", backbone=model.backbone, num_classes=4).eval()
    cam.head = model.head
    gradcam = create("grad_cam", backbone=model.backbone, num_classes=4).eval()
    gradcam.head = model.head
    with torch.no_grad():
        expected = cam.cams(images, labels, scales=(1.0,))
    torch.testing.assert_close(gradcam.cams(images, labels, scales=(1.0,)), expected, rtol=0, atol=5e-3)


def test_grad_cam_is_differentiable_on_request_and_detached_otherwise():
    model = _model()
    images = seeded_batch(model)["images"]
    assert not grad_cam(model, images).requires_grad
    maps = grad_cam(model, images, create_graph=True)
    maps.sum().backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_grad_cam_removes_its_hook_even_when_the_forward_raises():
    model = _model()

    def broken(images):
        model.backbone(images)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        grad_cam(broken, torch.rand(1, 3, 32, 32), layer=model.backbone)
    assert len(model.backbone._forward_hooks) == 0
    with pytest.raises(ValueError, match="layer"):
        grad_cam(broken, torch.rand(1, 3, 32, 32))


# --- MIL-seg and the poolings ---------------------------------------------------------------------


def test_gwrp_by_hand_and_its_limits():
    s = torch.tensor([1.0, 3.0, 2.0]).view(1, 1, 1, 3)
    torch.testing.assert_close(gwrp(s, 0.5), torch.tensor([[(3 + 0.5 * 2 + 0.25 * 1) / 1.75]]))
    x = torch.rand(2, 3, 5, 4)
    torch.testing.assert_close(gwrp(x, 1.0), x.mean((2, 3)))
    torch.testing.assert_close(gwrp(x, 0.0), x.amax((2, 3)))
    assert torch.all(gwrp(x, 0.996) <= x.amax((2, 3)) + 1e-6) and torch.all(gwrp(x, 0.996) >= x.mean((2, 3)) - 1e-6)
    torch.autograd.gradcheck(lambda t: gwrp(t, 0.7), torch.rand(1, 2, 3, 3, dtype=torch.float64, requires_grad=True))
    with pytest.raises(ValueError, match="decay"):
        gwrp(x, 1.5)
    with pytest.raises(ValueError, match="scores"):
        gwrp(x[0], 0.5)
    with pytest.raises(TypeError, match="scores"):
        gwrp(x.long(), 0.5)


def test_lse_pool_by_hand_bounds_and_limits():
    s = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    torch.testing.assert_close(lse_pool(s, 1.0), torch.tensor([[math.log((1 + math.e) / 2)]]))
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    pooled = lse_pool(x, 5.0)
    assert torch.all(x.mean((2, 3)) <= pooled + 1e-12) and torch.all(pooled <= x.amax((2, 3)) + 1e-12)
    torch.testing.assert_close(lse_pool(x, 1e-6), x.mean((2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(lse_pool(x, 1e5), x.amax((2, 3)), atol=1e-3, rtol=0)
    assert torch.isfinite(lse_pool(x * 1e4, 5.0)).all()  # stable for large scores
    torch.autograd.gradcheck(lambda t: lse_pool(t, 3.0), x[:1, :2].clone().requires_grad_())
    with pytest.raises(ValueError, match="r"):
        lse_pool(x, 0.0)


def test_mil_scores_posteriors_and_pseudo_labels():
    model = _model("mil")
    batch = seeded_batch(model)
    images, labels = batch["images"], batch["labels"]
    scores = model.pixel_scores(model.normalize(images))
    torch.testing.assert_close(model(images), lse_pool(scores, 5.0))
    with torch.no_grad():
        posterior = model.posteriors(images, labels)
    torch.testing.assert_close(posterior.sum(1), torch.ones(2, 32, 32))
    absent = torch.cat([torch.zeros(2, 1), labels], 1) == 0
    absent[:, 0] = False
    assert torch.all(posterior.permute(0, 2, 3, 1)[absent[:, None, None, :].expand(-1, 32, 32, -1)] == 0)
    # The pseudo-label is the dense CRF of the posterior over the present labels.
    with torch.no_grad():
        expected = wsss_ext.dense_crf(tag_unary_from_probs(posterior, labels), to_uint8(images), **IRNET_CRF).argmax(1)
        assert torch.equal(model.pseudo_labels(images, labels), expected)
    targets = torch.cat([torch.ones(2, 1), labels], 1)
    torch.testing.assert_close(model.losses(batch)["loss"], F.multilabel_soft_margin_loss(model(images), targets))


# --- the shared pseudo-label blocks ---------------------------------------------------------------


def test_tag_unaries_equal_pydensecrf_unaries_over_the_present_labels():
    labels = torch.tensor([[0.0, 1, 0, 1]])
    label_map = torch.tensor([[[0, 2, 4], [255, 4, 0]]])
    energy = tag_unary_from_labels(label_map, labels, 0.7, ignore_index=255)
    keys = [0, 2, 4]
    compact = torch.tensor([[[0, 1, 2], [0, 2, 0]]])
    expected = wsss_ext.unary_from_labels(compact, 3, 0.7)
    torch.testing.assert_close(energy[:, keys][..., [0, 0, 0, 1, 1], [0, 1, 2, 1, 2]],
                               expected[..., [0, 0, 0, 1, 1], [0, 1, 2, 1, 2]])
    torch.testing.assert_close(energy[0, keys, 1, 0], torch.full((3,), math.log(3.0)))  # ignored: uniform
    assert torch.all(energy[:, [1, 3]] == ABSENT_ENERGY)
    probs = torch.rand(1, 5, 2, 3)
    probs_energy = tag_unary_from_probs(probs, labels)
    torch.testing.assert_close(probs_energy[:, keys], -probs[:, keys].clamp(1e-5, 1).log())


def test_absent_energy_makes_the_batched_crf_equal_the_crf_over_present_labels():
    generator = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (1, 3, 12, 12), dtype=torch.uint8, generator=generator)
    probs = torch.rand(1, 3, 12, 12, generator=generator).softmax(1)
    labels = torch.tensor([[1.0, 0, 0, 1]])  # present: background, classes 1 and 4
    full = torch.zeros(1, 5, 12, 12)
    full[:, [0, 1, 4]] = probs
    q_full = wsss_ext.dense_crf(tag_unary_from_probs(full, labels), image, 5)
    q_present = wsss_ext.dense_crf(wsss_ext.unary_from_probs(probs), image, 5)
    torch.testing.assert_close(q_full[:, [0, 1, 4]], q_present, atol=1e-6, rtol=1e-5)
    assert torch.all(q_full[:, [2, 3]] == 0)


def test_cams_to_labels_normalize_and_confident_labels_by_hand():
    cams = torch.tensor([[[[0.9, 0.2, 0.0]], [[0.1, 0.5, 0.04]]]])  # 1 x 2 x 1 x 3
    labels = torch.tensor([[1.0, 1.0]])
    assert cams_to_labels(cams, labels, 0.3).tolist() == [[[1, 2, 0]]]
    assert cams_to_labels(cams, torch.tensor([[1.0, 0.0]]), 0.3).tolist() == [[[1, 0, 0]]]
    raw = torch.tensor([[[[-1.0, 2.0, 4.0]]]])
    torch.testing.assert_close(normalize_cams(raw), torch.tensor([[[[0.0, 2.0, 4.0]]]]) / (4 + 1e-5))
    # Without pairwise terms the CRF keeps the seeds: fg at 0.30, bg at 0.05, 255 between.
    no_pairwise = dict(n_iters=1, gaussian_weight=0.0, bilateral_weight=0.0)
    images = torch.rand(1, 3, 1, 3)
    got = confident_labels(images, cams, labels, 0.30, 0.05, no_pairwise)
    assert got.tolist() == [[[1, 2, 0]]]
    got = confident_labels(images, torch.tensor([[[[0.9, 0.2, 0.1]], [[0.1, 0.1, 0.04]]]]), labels, 0.30, 0.05,
                           no_pairwise)
    assert got.tolist() == [[[1, 255, 255]]]
    with pytest.raises(ValueError, match="bg_threshold"):
        confident_labels(images, cams, labels, 0.05, 0.30)


def test_multiscale_cams_sums_relu_maps_over_scales_and_flips():
    def raw(x):
        return x[:, :2] - 0.5

    images = torch.rand(1, 3, 8, 8)
    got = multiscale_cams(raw, images, scales=(1.0,), flip=True)
    torch.testing.assert_close(got, 2 * F.relu(images[:, :2] - 0.5))
    with pytest.raises(ValueError, match="scales"):
        multiscale_cams(raw, images, scales=())
    with pytest.raises(ValueError, match="scales"):
        multiscale_cams(raw, images, scales=(0.0,))
    assert crf_labels(torch.rand(1, 3, 4, 4), torch.zeros(1, 2, 4, 4), n_iters=0).shape == (1, 4, 4)


def test_synthetic_batch_is_consistent():
    batch = create("cam", backbone="tiny", num_classes=6).example_batch(4, 32, torch.Generator().manual_seed(1))
    for b in range(4):
        present = {c - 1 for c in batch["masks"][b].unique().tolist() if c > 0}
        assert present == set(batch["labels"][b].nonzero().flatten().tolist()) and present
        boxed = {c for c in batch["box_classes"][b].tolist() if c >= 0}
        assert boxed == present
        for box, c in zip(batch["boxes"][b], batch["box_classes"][b]):
            if c >= 0:
                x0, y0, x1, y1 = box.long().tolist()
                assert (batch["masks"][b, y0:y1, x0:x1] == c + 1).any()
    assert float(batch["images"].min()) >= 0 and float(batch["images"].max()) <= 1
    np.testing.assert_array_equal(batch["images"].numpy(), create("cam", backbone="tiny", num_classes=6)
                                  .example_batch(4, 32, torch.Generator().manual_seed(1))["images"].numpy())
