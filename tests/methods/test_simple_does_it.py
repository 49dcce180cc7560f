"""Simple Does It (Khoreva et al. CVPR 2017): the box rules against an
independent loop oracle and hand cases, the CRF round against the direct
``dense_crf`` call, bad input, kernel wiring and a training smoke."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import wsss_ext
from method_support import traced_ops, train_losses
from python_models import create
from python_models.methods import SimpleDoesIt
from python_models.pseudo.boxes import (
    DEEPLAB_LARGEFOV_CRF,
    box_pseudo_labels,
    box_rules,
    boxes_to_labels,
    refine_box_labels,
)

IGNORE = 255


# --------------------------------------------------------------------------------------------
# An independent oracle, written from the paper's description with plain loops (numpy).
# --------------------------------------------------------------------------------------------

def _pixels(box, height, width):
    """Pixel (y, x) set of a box by the centre rule."""
    x0, y0, x1, y1 = box
    return {(y, x) for y in range(height) for x in range(width)
            if x0 <= x + 0.5 < x1 and y0 <= y + 0.5 < y1}


def _oracle_initial(boxes, classes, height, width, ratio):
    out = np.zeros((height, width), dtype=np.int64)
    real = [n for n, c in enumerate(classes) if c >= 0]
    areas = {n: (boxes[n][2] - boxes[n][0]) * (boxes[n][3] - boxes[n][1]) for n in real}
    # Largest first, equal areas in row order: smaller (and later) boxes end on top.
    for n in sorted(real, key=lambda n: (-areas[n], n)):
        for y, x in _pixels(boxes[n], height, width):
            out[y, x] = IGNORE
        if ratio is None:
            inner = boxes[n]
        else:
            x0, y0, x1, y1 = boxes[n]
            s = math.sqrt(ratio)
            cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * s / 2, (y1 - y0) * s / 2
            inner = (cx - hw, cy - hh, cx + hw, cy + hh)
        for y, x in _pixels(inner, height, width):
            out[y, x] = classes[n] + 1
    return out


def _oracle_rules(label, boxes, classes, ratio, min_iou):
    height, width = label.shape
    out = label.copy()
    real = [n for n, c in enumerate(classes) if c >= 0]
    pix = {n: _pixels(boxes[n], height, width) for n in real}
    for y in range(height):
        for x in range(width):
            v = out[y, x]
            if v == IGNORE:
                if not any((y, x) in pix[n] for n in real):
                    out[y, x] = 0
            elif v > 0 and not any(classes[n] + 1 == v and (y, x) in pix[n] for n in real):
                out[y, x] = 0
    initial = _oracle_initial(boxes, classes, height, width, ratio)
    reset = set()
    while True:
        new = [n for n in real if n not in reset and pix[n]
               and sum(out[y, x] == classes[n] + 1 for y, x in pix[n]) < min_iou * len(pix[n])]
        if not new:
            return out
        for n in new:
            reset.add(n)
            for y, x in pix[n]:
                out[y, x] = initial[y, x]


def _random_case(generator, batch=2, size=(12, 14), num_classes=4, max_boxes=3):
    height, width = size
    boxes = torch.zeros(batch, max_boxes, 4)
    classes = torch.full((batch, max_boxes), -1, dtype=torch.long)
    for b in range(batch):
        count = int(torch.randint(0, max_boxes + 1, (1,), generator=generator))
        for n in range(count):
            x0 = float(torch.randint(0, width - 2, (1,), generator=generator))
            y0 = float(torch.randint(0, height - 2, (1,), generator=generator))
            x1 = float(torch.randint(int(x0) + 2, width + 1, (1,), generator=generator))
            y1 = float(torch.randint(int(y0) + 2, height + 1, (1,), generator=generator))
            jitter = torch.rand(2, generator=generator) * 0.6  # fractional edges too
            boxes[b, n] = torch.tensor([x0 + jitter[0], y0, x1, y1 - jitter[1]])
            classes[b, n] = int(torch.randint(0, num_classes, (1,), generator=generator))
    labels = torch.randint(0, num_classes + 1, (batch, height, width), generator=generator)
    labels[torch.rand(batch, height, width, generator=generator) < 0.1] = IGNORE
    return labels, boxes, classes


# --------------------------------------------------------------------------------------------
# Published defaults.
# --------------------------------------------------------------------------------------------

def test_defaults_are_the_published_values():
    assert SimpleDoesIt.DEFAULTS == {
        "num_classes": 20,  # PASCAL VOC 2012 (Sec. 4)
        "backbone": "vgg16_largefov",  # DeepLab-v1 VGG-16 (Sec. 4)
        "variant": "box_i",  # Box^i, the better box-only variant (Table 1)
        "inner_ratio": 0.2,  # Box^i: inner 20 % of the box area (Sec. 3.1)
        "min_iou": 0.5,  # outliers reset, "IoU < 50%" (Sec. 3.1)
        # "DenseCRF with the DeepLabv1 parameters": DeepLab-CRF-LargeFOV (deeplab-public run_densecrf.sh)
        "crf": dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=121.0,
                    bilateral_srgb=5.0, bilateral_weight=4.0),
    }
    assert SimpleDoesIt.KERNELS == ("dense_crf",) and SimpleDoesIt.TINY_BACKBONE == "vgg_tiny"
    with pytest.raises(ValueError, match="GrabCut"):
        SimpleDoesIt(backbone="tiny", variant="grabcut")


# --------------------------------------------------------------------------------------------
# Initial labels.
# --------------------------------------------------------------------------------------------

def test_box_fill_and_smaller_box_on_top():
    boxes = torch.tensor([[[1.0, 1.0, 7.0, 5.0], [3.0, 2.0, 5.0, 4.0]]])
    labels = boxes_to_labels(boxes, torch.tensor([[0, 2]]), (6, 8))
    expected = torch.zeros(1, 6, 8, dtype=torch.long)
    expected[0, 1:5, 1:7] = 1
    expected[0, 2:4, 3:5] = 3  # the smaller box is drawn over the larger one
    assert torch.equal(labels, expected)
    # The same boxes listed the other way round give the same map.
    swapped = boxes_to_labels(boxes.flip(1), torch.tensor([[2, 0]]), (6, 8))
    assert torch.equal(swapped, expected)


def test_box_i_inner_region_size():
    # 10 x 10 box, ratio 0.36: the inner box is the centred 6 x 6 square, the ring (64 px) ignored.
    labels = boxes_to_labels(torch.tensor([[[2.0, 3.0, 12.0, 13.0]]]), torch.tensor([[1]]), (16, 16), 0.36)
    expected = torch.zeros(1, 16, 16, dtype=torch.long)
    expected[0, 3:13, 2:12] = IGNORE
    expected[0, 5:11, 4:10] = 2
    assert torch.equal(labels, expected)
    # The paper's 20 %: 20 x 20 box -> sides 20 * sqrt(0.2) = 8.94 around the centre 10 -> pixels 6..13.
    labels = boxes_to_labels(torch.tensor([[[0.0, 0.0, 20.0, 20.0]]]), torch.tensor([[0]]), (20, 20), 0.2)
    assert int((labels == 1).sum()) == 64 and torch.all(labels[0, 6:14, 6:14] == 1)
    assert int((labels == IGNORE).sum()) == 400 - 64
    # On a large box the labelled share is 20 % up to pixel rounding.
    labels = boxes_to_labels(torch.tensor([[[0.0, 0.0, 60.0, 40.0]]]), torch.tensor([[0]]), (40, 60), 0.2)
    assert abs(float((labels == 1).float().mean()) - 0.2) < 0.02


def test_initial_labels_match_the_oracle():
    g = torch.Generator().manual_seed(5)
    for _ in range(6):
        _, boxes, classes = _random_case(g)
        for ratio in (None, 0.2, 0.5):
            ours = boxes_to_labels(boxes, classes, (12, 14), ratio)
            for b in range(2):
                oracle = _oracle_initial(boxes[b].tolist(), classes[b].tolist(), 12, 14, ratio)
                np.testing.assert_array_equal(ours[b].numpy(), oracle)


# --------------------------------------------------------------------------------------------
# The rules.
# --------------------------------------------------------------------------------------------

def test_rules_match_the_oracle_on_random_cases():
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        labels, boxes, classes = _random_case(g)
        for ratio in (None, 0.2):
            ours = box_rules(labels, boxes, classes, ratio, 0.5, num_classes=4)
            for b in range(2):
                oracle = _oracle_rules(labels[b].numpy(), boxes[b].tolist(), classes[b].tolist(), ratio, 0.5)
                np.testing.assert_array_equal(ours[b].numpy(), oracle)


def test_no_foreground_outside_the_boxes_and_only_box_classes():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        labels, boxes, classes = _random_case(g, num_classes=5)
        out = box_rules(labels, boxes, classes, 0.2, 0.5)
        for b in range(2):
            union = torch.zeros(12, 14, dtype=torch.bool)
            for n, c in enumerate(classes[b].tolist()):
                if c < 0:
                    continue
                x0, y0, x1, y1 = boxes[b, n].tolist()
                ys, xs = torch.meshgrid(torch.arange(12) + 0.5, torch.arange(14) + 0.5, indexing="ij")
                own = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
                union |= own
            assert torch.all(out[b][~union] == 0)
            allowed = {0, IGNORE} | {c + 1 for c in classes[b].tolist() if c >= 0}
            assert set(out[b].unique().tolist()) <= allowed


def test_rules_are_idempotent():
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        labels, boxes, classes = _random_case(g)
        for ratio in (None, 0.2):
            once = box_rules(labels, boxes, classes, ratio)
            assert torch.equal(box_rules(once, boxes, classes, ratio), once)


def test_a_mask_that_satisfies_the_rules_is_unchanged():
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [4.0, 2.0, 8.0, 6.0]]])
    classes = torch.tensor([[0, 1]])
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 0:3, 0:3] = 1  # 9 / 16 of box 0
    mask[0, 2:6, 5:8] = 2  # 12 / 16 of box 1
    mask[0, 3, 5] = IGNORE  # an unsure pixel inside a box stays
    assert torch.equal(box_rules(mask, boxes, classes), mask)


def test_outliers_reset_at_fifty_percent():
    boxes, classes = torch.tensor([[[1.0, 1.0, 5.0, 5.0]]]), torch.tensor([[2]])
    mask = torch.zeros(1, 6, 6, dtype=torch.long)
    mask[0, 1:3, 1:5] = 3  # 8 of the box's 16 pixels: IoU exactly 0.5, kept
    assert torch.equal(box_rules(mask, boxes, classes), mask)
    mask[0, 2, 4] = 0  # 7 / 16 < 0.5: the box is reset to its initial label
    box = boxes_to_labels(boxes, classes, (6, 6))
    assert torch.equal(box_rules(mask, boxes, classes), box)
    box_i = boxes_to_labels(boxes, classes, (6, 6), 0.2)
    assert torch.equal(box_rules(mask, boxes, classes, inner_ratio=0.2), box_i)
    assert torch.equal(box_rules(mask, boxes, classes, min_iou=0.0), mask)  # reset disabled


def test_a_reset_that_empties_an_overlapping_box_resets_it_too():
    # Box 0 (class 0) is 4 x 4; box 1 (class 1) is its top half, drawn on top.
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0]]])
    classes = torch.tensor([[0, 1]])
    mask = torch.zeros(1, 4, 5, dtype=torch.long)
    mask[0, 0:2, 0:4] = 1  # class 0 covers 8 + 1 = 9 / 16 of box 0: fine at first
    mask[0, 2, 0] = 1
    # Box 1 has none of its class: reset to its initial label, which takes 8 pixels of box 0,
    # leaving it 1 / 16: box 0 is reset in turn.
    expected = torch.zeros(1, 4, 5, dtype=torch.long)
    expected[0, 0:2, 0:4] = 2
    expected[0, 2:4, 0:4] = 1
    assert torch.equal(box_rules(mask, boxes, classes), expected)


def test_foreign_class_inside_a_box_and_overlaps():
    # A cat box (class 0) overlapping a dog box (class 1); pixels of class 2 have no box.
    boxes = torch.tensor([[[0.0, 0.0, 6.0, 6.0], [3.0, 0.0, 9.0, 6.0]]])
    classes = torch.tensor([[0, 1]])
    mask = torch.zeros(1, 6, 10, dtype=torch.long)
    mask[0, :, 0:4] = 1  # cat, partly in the overlap (column 3): allowed there
    mask[0, :, 4:9] = 2  # dog, partly in the overlap (columns 4, 5): allowed
    mask[0, 0, 8] = 1  # cat pixel in the dog-only part -> background
    mask[0, 1, 7] = 3  # a class without a box -> background
    mask[0, :, 9] = 2  # dog outside every box -> background
    out = box_rules(mask, boxes, classes)
    expected = mask.clone()
    expected[0, 0, 8] = expected[0, 1, 7] = 0
    expected[0, :, 9] = 0
    assert torch.equal(out, expected)


# --------------------------------------------------------------------------------------------
# The CRF round and the method's pseudo-labels, against the direct op.
# --------------------------------------------------------------------------------------------

def _uint8(images):
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def _direct_unary_from_labels(label_map, present, gt_prob=0.7):
    """pydensecrf unary_from_labels over each image's present labels, absent 1e4 (numpy)."""
    batch, height, width = label_map.shape
    n_labels = present.shape[1]
    unary = np.full((batch, n_labels, height, width), 1e4, dtype=np.float32)
    for b in range(batch):
        labels = [k for k in range(n_labels) if present[b, k]]
        n = len(labels)
        for y in range(height):
            for x in range(width):
                v = int(label_map[b, y, x])
                for k in labels:
                    if v == IGNORE:
                        unary[b, k, y, x] = math.log(n)
                    elif k == v:
                        unary[b, k, y, x] = -math.log(gt_prob)
                    else:
                        unary[b, k, y, x] = -math.log((1 - gt_prob) / max(n - 1, 1))
    return torch.from_numpy(unary)


def test_crf_round_equals_dense_crf_then_rules():
    model = SimpleDoesIt(backbone="tiny", num_classes=4, variant="box")
    batch = model.example_batch(2, 16, torch.Generator().manual_seed(3))
    images, boxes, classes = batch["images"], batch["boxes"], batch["box_classes"]
    # Box labels with 30 % of the pixels relabelled at random (classes without a box too).
    g = torch.Generator().manual_seed(3)
    start = boxes_to_labels(boxes, classes, (16, 16))
    flip = torch.rand(start.shape, generator=g) < 0.3
    start[flip] = torch.randint(0, 5, start.shape, generator=g)[flip]
    present = torch.zeros(2, 5, dtype=torch.bool)
    present[:, 0] = True
    for b in range(2):
        present[b, [c + 1 for c in classes[b].tolist() if c >= 0]] = True
    q = wsss_ext.dense_crf(_direct_unary_from_labels(start, present), _uint8(images), **DEEPLAB_LARGEFOV_CRF)
    crf = q.argmax(1)
    expected = np.stack([_oracle_rules(crf[b].numpy(), boxes[b].tolist(), classes[b].tolist(), None, 0.5)
                         for b in range(2)])
    ours = refine_box_labels(images, start, boxes, classes, 4, n_rounds=1)
    np.testing.assert_array_equal(ours.numpy(), expected)
    # Both steps did something here: the CRF relabelled pixels, the rules then changed its output.
    assert int((crf != start).sum()) > 20 and int((ours != crf).sum()) > 5
    # Two rounds are two applications of one round.
    twice = refine_box_labels(images, start, boxes, classes, 4, n_rounds=2)
    assert torch.equal(twice, refine_box_labels(images, ours, boxes, classes, 4))


def test_pseudo_labels_equal_network_probs_then_dense_crf_then_rules():
    torch.manual_seed(0)
    model = SimpleDoesIt(backbone="tiny", num_classes=3).eval()
    batch = model.example_batch(2, 24, torch.Generator().manual_seed(7))
    images, boxes, classes = batch["images"], batch["boxes"], batch["box_classes"]
    ours = model.pseudo_labels(images, batch["labels"], boxes, classes)
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model(images), size=(24, 24), mode="bilinear",
                                                 align_corners=False)
    present = torch.zeros(2, 4, dtype=torch.bool)
    present[:, 0] = True
    for b in range(2):
        present[b, [c + 1 for c in classes[b].tolist() if c >= 0]] = True
    probs = logits.masked_fill(~present[..., None, None], float("-inf")).softmax(1)
    unary = (-torch.log(probs.clamp(1e-5, 1))).masked_fill(~present[..., None, None], 1e4)
    crf = wsss_ext.dense_crf(unary, _uint8(images), **DEEPLAB_LARGEFOV_CRF).argmax(1)
    for b in range(2):
        expected = _oracle_rules(crf[b].numpy(), boxes[b].tolist(), classes[b].tolist(), 0.2, 0.5)
        np.testing.assert_array_equal(ours[b].numpy(), expected)
    # The function form gives the same from the same probabilities.
    assert torch.equal(box_pseudo_labels(images, probs, boxes, classes, inner_ratio=0.2), ours)


def test_pseudo_labels_run_dense_crf():
    model = create("simple_does_it", backbone="tiny", num_classes=3).eval()
    batch = model.example_batch()
    ran, masks = traced_ops(model.pseudo_labels, batch["images"], batch["labels"],
                            boxes=batch["boxes"], box_classes=batch["box_classes"])
    assert "wsss_ext::dense_crf" in ran
    assert masks.dtype == torch.int64 and masks.shape == (2, 32, 32)


def test_cams_are_foreground_probabilities_over_the_tags():
    model = SimpleDoesIt(backbone="tiny", num_classes=3).eval()
    batch = model.example_batch()
    cams = model.cams(batch["images"], batch["labels"])
    probs = model.segment_probs(batch["images"], batch["labels"])
    assert torch.all(cams[batch["labels"] == 0] == 0)
    torch.testing.assert_close(cams, probs[:, 1:])
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 32))


# --------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    boxes, classes = torch.tensor([[[0.0, 0.0, 4.0, 4.0]]]), torch.tensor([[0]])
    mask = torch.zeros(1, 6, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="boxes"):
        box_rules(mask, torch.tensor([[[0.0, 0.0, 7.0, 4.0]]]), classes)  # beyond W
    with pytest.raises(ValueError, match="boxes"):
        box_rules(mask, torch.tensor([[[-1.0, 0.0, 3.0, 4.0]]]), classes)
    with pytest.raises(ValueError, match="boxes"):
        box_rules(mask, torch.tensor([[[3.0, 0.0, 3.0, 4.0]]]), classes)  # empty
    with pytest.raises(ValueError, match="boxes"):
        box_rules(mask, torch.tensor([[[0.0, float("nan"), 3.0, 4.0]]]), classes)
    with pytest.raises(TypeError, match="boxes"):
        box_rules(mask, boxes.long(), classes)
    with pytest.raises(TypeError, match="box_classes"):
        box_rules(mask, boxes, classes.float())
    with pytest.raises(TypeError, match="label_map"):
        box_rules(mask.float(), boxes, classes)
    with pytest.raises(ValueError, match="batch"):
        box_rules(mask.expand(2, 6, 6), boxes, classes)
    with pytest.raises(ValueError, match="box_classes"):
        box_rules(mask, boxes, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="box_classes"):
        box_rules(mask, boxes, torch.tensor([[5]]), num_classes=4)
    with pytest.raises(ValueError, match="box_classes"):
        box_rules(mask, boxes, torch.tensor([[-2]]))
    with pytest.raises(ValueError, match="boxes"):
        box_rules(mask, boxes[0], classes)
    with pytest.raises(ValueError, match="label_map"):
        box_rules(mask + 7, boxes, classes, num_classes=4)
    with pytest.raises(ValueError, match="inner_ratio"):
        boxes_to_labels(boxes, classes, (6, 6), 1.5)

    model = SimpleDoesIt(backbone="tiny", num_classes=3)
    batch = model.example_batch()
    images, labels = batch["images"], batch["labels"]
    with pytest.raises(ValueError, match="boxes"):
        model.pseudo_labels(images, labels)
    with pytest.raises(ValueError, match="boxes"):
        model.pseudo_labels(images, labels, batch["boxes"][:1], batch["box_classes"][:1])
    with pytest.raises(ValueError, match="box_classes"):
        model.pseudo_labels(images, labels, batch["boxes"], batch["box_classes"].clamp(min=0) + 3)
    with pytest.raises(ValueError, match="labels"):
        model.pseudo_labels(images, torch.zeros_like(labels), batch["boxes"], batch["box_classes"])
    with pytest.raises(ValueError, match="targets"):
        model.losses({**batch, "targets": batch["targets"][:, :8]})
    with pytest.raises(TypeError, match="targets"):
        model.losses({**batch, "targets": batch["targets"].float()})
    with pytest.raises(ValueError, match="boxes"):
        model.losses({**batch, "boxes": batch["boxes"] + 40})


# --------------------------------------------------------------------------------------------
# Training smoke.
# --------------------------------------------------------------------------------------------

def test_example_batch_targets_are_the_initial_labels():
    model = SimpleDoesIt(backbone="tiny", num_classes=4)
    batch = model.example_batch(2, 32, torch.Generator().manual_seed(2))
    assert torch.equal(batch["targets"], boxes_to_labels(batch["boxes"], batch["box_classes"], (32, 32), 0.2))
    box = SimpleDoesIt(backbone="tiny", num_classes=4, variant="box").example_batch(2, 32,
                                                                                    torch.Generator().manual_seed(2))
    assert torch.equal(box["targets"], boxes_to_labels(box["boxes"], box["box_classes"], (32, 32)))


def test_loss_falls_over_twenty_steps():
    torch.manual_seed(0)
    model = SimpleDoesIt(backbone="tiny", num_classes=4, variant="box").train()
    batch = model.example_batch(2, 32, torch.Generator().manual_seed(1))
    values = train_losses(model, batch)
    assert values[-1] < 0.8 * values[0]
