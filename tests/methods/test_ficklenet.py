"""FickleNet (Lee et al., CVPR 2019): the stochastic head against the
expanded-map route, the centre that is never dropped, the stochastic
Grad-CAM seeds against a direct fickle_gradcam call, the kernels in a trace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import python_models
import wsss_ext
from method_support import seeded_batch, traced_ops, train_losses
from python_models.heads.fickle import FickleHead, derive_seed
from python_models.pseudo.fickle import fickle_seeds
from python_models.methods.ficklenet import FickleNet
from wsss_ext.reference import expand_windows

NUM_CLASSES = 3


def _model(**overrides) -> FickleNet:
    torch.manual_seed(0)
    return FickleNet(backbone="tiny", num_classes=NUM_CLASSES, **overrides)


@pytest.fixture(scope="module")
def trained():
    """A tiny FickleNet after 20 steps on one batch (random weights give all-zero Grad-CAMs)."""
    model = _model()
    batch = seeded_batch(model)
    with torch.no_grad():
        before = float(model.losses(batch, step=0)["loss"])
    train_losses(model, batch, lr=1e-2)
    return model, batch, before


def test_defaults_are_the_published_values():
    # Lee et al. 2019: p 0.9, N 200 stochastic maps, threshold 0.35, VOC's 20 classes, ResNet-101 headline
    # model; kernel 3, output stride 8, no rescaling and the 0.05 background rule are this library's choices.
    assert FickleNet.DEFAULTS == dict(num_classes=20, backbone="resnet101", output_stride=8, kernel_size=3, p=0.9,
                                      rescale=False, n_samples=200, threshold=0.35, bg_threshold=0.05, seed=0)
    assert FickleNet.KERNELS == ("fickle_conv2d", "fickle_gradcam")
    assert python_models.METHODS["ficklenet"] is FickleNet
    assert _model().backbone.output_stride == 8


def test_losses_equal_the_expanded_dropout_route_for_the_step_seed():
    model = _model().eval()
    batch = seeded_batch(model)
    step = 7
    terms = model.losses(batch, step=step)
    with torch.no_grad():
        x = model.backbone(model.normalize(batch["images"]))
        expanded = wsss_ext.expanded_dropout(x, 3, 0.9, seed=derive_seed(0, step))
        logits = F.conv2d(expanded, model.head.weight, model.head.bias, stride=3).mean((2, 3))
    expected = F.multilabel_soft_margin_loss(logits, batch["labels"])
    torch.testing.assert_close(terms["classification"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["loss"], terms["classification"])
    # The expanded map is the reference's window expansion with some non-centre units zeroed.
    full = expand_windows(x, 3)
    assert bool(((expanded == full) | (expanded == 0)).all())
    torch.testing.assert_close(expanded[..., 1::3, 1::3], full[..., 1::3, 1::3])
    dropped = ((expanded == 0) & (full != 0)).float().sum() / (full != 0).float().sum()
    assert 0.75 < float(dropped) < 0.85  # 8 of 9 taps dropped with p 0.9: 0.8 of the non-zero units


def test_the_step_fixes_the_selection():
    model = _model().eval()
    batch = seeded_batch(model)
    with torch.no_grad():
        first, again, other = (model.losses(batch, step=s)["loss"] for s in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_the_window_centre_is_never_dropped():
    # p just below 1 drops every non-centre unit: the head is then the 1 x 1 conv of the centre taps.
    model = _model(p=1 - 1e-8).eval()
    images = seeded_batch(model)["images"]
    with torch.no_grad():
        x = model.backbone(model.normalize(images))
        centre = F.conv2d(x, model.head.weight[:, :, 1:2, 1:2], model.head.bias).mean((2, 3))
        for step in (0, 1, 2):
            torch.testing.assert_close(model(images, step=step), centre, rtol=1e-5, atol=1e-6)
        full = F.conv2d(x, model.head.weight, model.head.bias, padding=1).mean((2, 3))
        assert not torch.allclose(centre, full, atol=1e-4)
    # p = 0 keeps everything: the ordinary 3 x 3 conv.
    deterministic = _model(p=0.0).eval()
    with torch.no_grad():
        torch.testing.assert_close(deterministic(images, step=5),
                                   deterministic.raw_cams(deterministic.normalize(images)).mean((2, 3)),
                                   rtol=1e-5, atol=1e-6)


def _seeds_oracle(maps, hits, labels, bg_threshold, size):
    """FickleNet's hits as c + 1, background where no tagged mean map reaches
    bg_threshold, nearest resize: plain loops."""
    batch, classes, height, width = maps.shape
    out = torch.empty(batch, *size, dtype=torch.long)
    for b in range(batch):
        for i in range(size[0]):
            for j in range(size[1]):
                fi, fj = i * height // size[0], j * width // size[1]
                if int(hits[b, fi, fj]) != 255:
                    out[b, i, j] = int(hits[b, fi, fj]) + 1
                elif all(float(maps[b, c, fi, fj]) < bg_threshold for c in range(classes) if labels[b, c] > 0):
                    out[b, i, j] = 0
                else:
                    out[b, i, j] = 255
    return out


def test_pseudo_labels_equal_a_direct_fickle_gradcam_call(trained):
    model, batch, _ = trained
    model.eval()
    images, labels = batch["images"], batch["labels"]
    masks = model.pseudo_labels(images, labels)
    with torch.no_grad():
        x = model.backbone(model.normalize(images))
    maps, hits = wsss_ext.fickle_gradcam(x, model.head.weight, model.head.bias, labels, p=0.9, n_samples=200,
                                         seed=derive_seed(0, -1), threshold=0.35)
    expected = _seeds_oracle(maps, hits, labels, 0.05, (32, 32))
    assert torch.equal(masks, expected)
    assert masks.dtype == torch.int64 and masks.shape == (2, 32, 32)
    assert set(masks.unique().tolist()) - {0, 255}  # trained, the maps localise some foreground
    # The CAMs are the same mean maps, resized; the same seed gives the same labels.
    cams = model.cams(images, labels)
    torch.testing.assert_close(cams, F.interpolate(maps, size=(32, 32), mode="bilinear", align_corners=False)
                               * labels[..., None, None])
    assert torch.equal(model.pseudo_labels(images, labels), masks)


def test_pseudo_labels_never_hold_a_class_outside_the_tags(trained):
    model, _, _ = trained
    model.eval()
    seen = set()
    for seed in range(2):
        batch = seeded_batch(model, seed)
        labels = batch["labels"].clone()
        labels[:, 0] = 1  # a tag the image may not show still may be labelled; untagged ones never
        for tags in (labels, torch.eye(NUM_CLASSES)[[1, 2]]):
            masks = model.pseudo_labels(batch["images"], tags, seed=seed)
            for mask, row in zip(masks, tags):
                allowed = {0, 255} | {c + 1 for c in row.nonzero().flatten().tolist()}
                assert set(mask.unique().tolist()) <= allowed
                seen |= set(mask.unique().tolist())
    assert seen - {0, 255}  # some foreground was labelled at all


def test_pseudo_labels_change_no_state(trained):
    model, batch, _ = trained
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.pseudo_labels(batch["images"], batch["labels"])
    assert model.training
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_fickle_seeds_hand_case():
    # One image, two tags of three classes, 2 x 2 maps; hits from fickle_gradcam (tag column or 255).
    maps = torch.tensor([[[[0.9, 0.02], [0.3, 0.01]],
                          [[0.0, 0.00], [0.0, 0.00]],
                          [[0.1, 0.04], [0.2, 0.90]]]])
    hits = torch.tensor([[[0, 255], [255, 2]]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    seeds = fickle_seeds(maps, hits, labels, bg_threshold=0.05)
    # (0,0) class 0 -> 1; (0,1) both tagged maps < 0.05 -> background; (1,0) 0.3 -> unsure; (1,1) class 2 -> 3.
    assert seeds.tolist() == [[[1, 0], [255, 3]]]
    # An untagged class's map does not block the background.
    maps[0, 1, 0, 1] = 0.9
    assert fickle_seeds(maps, hits, labels).tolist() == [[[1, 0], [255, 3]]]
    resized = fickle_seeds(maps, hits, labels, size=(4, 4))
    assert resized.tolist() == [[[1, 1, 0, 0], [1, 1, 0, 0], [255, 255, 3, 3], [255, 255, 3, 3]]]
    assert fickle_seeds(maps, hits, labels, bg_threshold=0.0).tolist() == [[[1, 255], [255, 3]]]


def test_kernels_run_where_declared():
    model = _model(n_samples=8)
    batch = seeded_batch(model)
    ran, terms = traced_ops(model.losses, batch, 0)
    assert "wsss_ext::fickle_conv2d" in ran and "wsss_ext::fickle_mask_bits" in ran
    model.eval()
    ran, masks = traced_ops(model.pseudo_labels, batch["images"], batch["labels"])
    assert "wsss_ext::fickle_mask_bits" in ran
    assert "wsss_ext::fickle_conv2d" not in ran  # the Grad-CAMs are closed-form, no stochastic forward


def test_head_gradcheck_float64():
    torch.manual_seed(0)
    head = FickleHead(2, 2, kernel_size=3, p=0.5).double()
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = head.classifier.weight.detach().clone().requires_grad_(True)
    bias = head.classifier.bias.detach().clone().requires_grad_(True)

    def logits(x, weight, bias):
        return wsss_ext.fickle_conv2d(x, weight, bias, 0.5, seed=derive_seed(0, 1)).mean((2, 3))

    assert torch.autograd.gradcheck(logits, (x, weight, bias))
    torch.testing.assert_close(head.logits(x, derive_seed(0, 1)), logits(x, weight, bias))


def test_derive_seed_is_a_63_bit_function_of_base_and_stream():
    seeds = {derive_seed(base, stream) for base in range(3) for stream in range(-1, 50)}
    assert len(seeds) == 3 * 51 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(4, 9) == derive_seed(4, 9)
    with pytest.raises(ValueError, match="seed"):
        derive_seed(-1, 0)
    with pytest.raises(TypeError, match="step"):
        derive_seed(0, 1.5)


def test_bad_input_is_refused_by_name():
    model = _model(n_samples=4).eval()
    batch = seeded_batch(model)
    images, labels = batch["images"], batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        model.pseudo_labels(images, labels[:, :2])
    with pytest.raises(ValueError, match="labels"):
        model.pseudo_labels(images, labels[:1])
    with pytest.raises(TypeError, match="images"):
        model.pseudo_labels((images * 255).to(torch.uint8), labels)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images"):
        model.losses({**batch, "images": bad})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"images": images})
    with pytest.raises(ValueError, match="kernel_size"):
        _model(kernel_size=4)
    with pytest.raises(ValueError, match="p"):
        _model(p=1.0)
    with pytest.raises(TypeError, match="unexpected"):
        _model(dropout=0.5)
    with pytest.raises(ValueError, match="fickle_labels"):
        fickle_seeds(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long), torch.ones(1, 2))
    with pytest.raises(ValueError, match="fickle_labels"):
        fickle_seeds(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 5), torch.ones(1, 2))
    with pytest.raises(ValueError, match="labels"):
        fickle_seeds(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 3))


def test_loss_falls_over_20_steps(trained):
    model, batch, before = trained
    model.train()
    with torch.no_grad():
        after = float(model.losses(batch, step=0)["loss"])
    assert after < 0.7 * before


def test_segmentation_stage_is_dsrg():
    model = _model(n_samples=8)
    stage = model.segmentation_stage(backbone="tiny")
    assert stage.KEY == "dsrg" and stage.config.num_classes == NUM_CLASSES
    # FickleNet's seeds, at the stage's output size, are what DSRG trains on.
    batch = seeded_batch(model)
    images, labels = batch["images"], batch["labels"]
    with torch.no_grad():
        size = stage(images).shape[-2:]
    seeds = model.pseudo_labels(images, labels, size=size)
    assert seeds.shape == (2, *size)
    terms = stage.losses({"images": images, "labels": labels, "seeds": seeds})
    assert torch.isfinite(terms["loss"])
