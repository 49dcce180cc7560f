"""IRNet (Ahn, Cho & Kwak, CVPR 2019; jiwoon-ahn/irn): defaults, the two
branches' layout, the boundary affinities through the method's loss, the
displacement loss by hand, against a loop oracle and by gradcheck, the walk
inside pseudo_labels against irn's dense propagate_to_edge (an independent
numpy oracle) and wsss_ext's dense reference, and the input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_support import traced_ops, train_losses

import wsss_ext
from python_models import create
from python_models.heads.irnet import (
    DisplacementBranch,
    EdgeBranch,
    resnet_stage_features,
)
from python_models.losses.irnet import displacement_loss, irnet_losses, reduce_label_map
from python_models.pseudo import IRNET_CRF
from python_models.pseudo.affinity_pairs import affinity_pair_labels
from wsss_ext.reference import random_walk_dense

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def model():
    """No inference padding and no CAM network of its own: cheap, and ``cams=`` is required."""
    torch.manual_seed(0)
    return create("irnet", backbone="tiny", num_classes=NUM_CLASSES, crop_size=0, cam_network=None).eval()


@pytest.fixture(scope="module")
def batch(model):
    return model.example_batch(batch_size=2, image_size=32, generator=torch.Generator().manual_seed(0))


def test_defaults_are_irns():
    from python_models.methods.irnet import IRNet

    assert IRNet.DEFAULTS == dict(
        num_classes=20,                 # VOC
        backbone="resnet50",            # net/resnet50_irn.py
        output_stride=16,               # resnet50(strides=[2, 2, 2, 1])
        radius=10,                      # step/train_irn.py PathIndex(radius=10, ...)
        crop_size=512,                  # run_sample.py --irn_crop_size; EdgeDisplacement(crop_size=512)
        batch_size=32,                  # --irn_batch_size
        epochs=3,                       # --irn_num_epoches
        lr=0.1,                         # --irn_learning_rate
        weight_decay=1e-4,              # --irn_weight_decay
        displacement_lr_mult=10.0,      # train_irn.py: dp_layers at 10 * lr
        rescale=(0.5, 1.5),             # train_irn.py VOC12AffinityDataset(rescale=(0.5, 1.5))
        hor_flip=True,                  # hor_flip=True
        fg_threshold=0.30,              # --conf_fg_thres
        bg_threshold=0.05,              # --conf_bg_thres
        crf=IRNET_CRF,                  # misc/imutils.py crf_inference_label
        walk_radius=5,                  # make_sem_seg_labels.py propagate_to_edge(radius=5)
        beta=10.0,                      # --beta
        exp_times=8,                    # --exp_times: 2^8 steps
        sem_seg_bg_threshold=0.25,      # --sem_seg_bg_thres
        boundary_flip=True,             # EdgeDisplacement: edge of image and flip averaged
        freeze_backbone=True,           # train_irn.py: only the edge / displacement branches train
        cam_network="cam",              # stage 1 of run_sample.py (net.resnet50_cam)
    )
    assert IRNET_CRF == dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=50.0,
                             bilateral_srgb=5.0, bilateral_weight=10.0)
    assert IRNet.KERNELS == ("irnet_random_walk",)


def test_branches_have_irns_layout():
    channels = (64, 256, 512, 1024, 2048)   # ResNet-50's stem and layer1..4
    edge, field = EdgeBranch(channels), DisplacementBranch(channels)
    # fc_edge1..5: 1x1 conv to 32 + GroupNorm(4, 32) (weight, bias); fc_edge6: 160 -> 1 with bias.
    expected_edge = sum(c * 32 + 64 for c in channels) + 160 + 1
    assert sum(p.numel() for p in edge.parameters()) == expected_edge
    # fc_dp1..7 (convs without bias, GroupNorm affine) and the final 256 -> 2.
    convs = [(64, 64), (256, 128), (512, 256), (1024, 256), (2048, 256), (768, 256), (448, 256)]
    expected_field = sum(i * o + 2 * o for i, o in convs) + 256 * 2
    assert sum(p.numel() for p in field.parameters()) == expected_field
    # Stride-4 outputs from the five stages of an odd-sized image; the mean shift only in eval mode.
    features = [torch.randn(1, c, *size) for c, size in
                zip(channels, [(10, 12), (10, 12), (5, 6), (3, 3), (3, 3)])]
    assert edge(features).shape == (1, 1, 10, 12)
    field.running_mean.copy_(torch.tensor([1.0, -2.0]))
    raw = field.train()(features)
    assert raw.shape == (1, 2, 10, 12)
    torch.testing.assert_close(field.eval()(features), raw - torch.tensor([1.0, -2.0]).view(1, 2, 1, 1))
    with pytest.raises(ValueError, match=r"features\[2\]"):
        edge([features[0], features[1], features[1], features[3], features[4]])


def test_forward_gives_stride_4_boundary_and_field_and_the_backbone_gets_no_gradient(model, batch):
    model.train()
    boundary, field = model(batch["images"])
    model.eval()
    assert boundary.shape == (2, 1, 8, 8) and field.shape == (2, 2, 8, 8)
    assert float(boundary.detach().min()) > 0 and float(boundary.detach().max()) < 1
    (boundary.sum() + field.sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.edge.parameters())
    assert not model.backbone.training            # irn keeps the backbone in eval mode
    model.zero_grad(set_to_none=True)


def test_zero_boundary_gives_unit_affinities_through_the_loss(batch):
    torch.manual_seed(0)
    model = create("irnet", backbone="tiny", num_classes=NUM_CLASSES, cam_network=None)
    with torch.no_grad():
        model.edge.classifier.weight.zero_()
        model.edge.classifier.bias.fill_(-1e4)     # sigmoid underflows to exactly 0
    boundary, _ = model(batch["images"])
    assert torch.equal(boundary, torch.zeros_like(boundary))
    affinity = wsss_ext.boundary_affinity(boundary, model.config.radius)
    offsets = wsss_ext.neighbour_offsets(10)
    rows = torch.arange(8).view(1, 8, 1) + offsets[:, 0].view(-1, 1, 1)
    cols = torch.arange(8).view(1, 1, 8) + offsets[:, 1].view(-1, 1, 1)
    inside = ((rows >= 0) & (rows < 8) & (cols >= 0) & (cols < 8)).float()
    assert torch.equal(affinity, inside.expand_as(affinity))
    terms = model.losses(batch)
    # a = 1 on every pair: -log(1 + 1e-5) for the positives, -log(1 + 1e-5 - 1) (in float32) for the negatives.
    one = torch.tensor(1.0)
    torch.testing.assert_close(terms["bg_pos"], -torch.log(one + 1e-5))
    torch.testing.assert_close(terms["fg_pos"], -torch.log(one + 1e-5))
    torch.testing.assert_close(terms["neg"], -torch.log(one + 1e-5 - one))
    assert float(terms["neg"].detach()) == pytest.approx(-math.log(1e-5), rel=1e-3)
    torch.testing.assert_close(terms["affinity"], 0.25 * terms["bg_pos"] + 0.25 * terms["fg_pos"] + 0.5 * terms["neg"])
    torch.testing.assert_close(terms["loss"], terms["affinity"]
                               + (terms["displacement_fg"] + terms["displacement_bg"]) / 2)


def test_a_full_boundary_line_cuts_the_walk(model, batch):
    images, labels = batch["images"][:1], torch.tensor([[1.0, 0.0, 0.0]])
    wall = torch.zeros(1, 1, 8, 8)
    wall[..., 4] = 1.0
    seeds = torch.zeros(1, NUM_CLASSES, 8, 8)
    seeds[0, 0, 2:6, 0:3] = 1.0                    # class 0 left of the wall only
    walked = model.walk(images, labels, cams=seeds, boundary=wall)
    assert torch.equal(walked[0, 0, :, 4:], torch.zeros(8, 4))   # the wall and everything right of it
    assert bool((walked[0, 0, :, :4] > 0).all())                # the left side is filled
    masks = model.pseudo_labels(images, labels, cams=seeds, boundary=wall)
    assert bool((masks[0, :, 20:] == 0).all()) and bool((masks[0, 8:24, :8] == 1).all())


def test_the_walk_of_a_constant_map_is_constant(model, batch):
    images, labels = batch["images"], torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    seeds = torch.full((2, NUM_CLASSES, 8, 8), 0.5)
    walked = model.walk(images, labels, cams=seeds, boundary=torch.zeros(2, 1, 8, 8))
    expected = 0.5 / (0.5 + 1e-5) * labels[..., None, None].expand(2, NUM_CLASSES, 8, 8)
    torch.testing.assert_close(walked, expected, rtol=0, atol=1e-5)


def _irn_propagate_to_edge(x: np.ndarray, edge: np.ndarray, radius: int, beta: float, exp_times: int) -> np.ndarray:
    """irn misc/indexing.py propagate_to_edge, written from its description with loops:
    a_pq = 1 - max edge over the cells within distance 1 of the segment p -> q
    (in its bounding box, the edge padded with 1 outside the image), a_pp = 1,
    T = A^beta / column sums, squared exp_times times, x (1 - edge) @ T."""
    height, width = edge.shape
    n = height * width

    def value(y, x_):
        return edge[y, x_] if 0 <= y < height and 0 <= x_ < width else 1.0

    matrix = np.zeros((n, n))
    for py in range(height):
        for px in range(width):
            for dy in range(-radius + 1, radius):
                for dx in range(-radius + 1, radius):
                    qy, qx = py + dy, px + dx
                    if dy * dy + dx * dx >= radius * radius or not (0 <= qy < height and 0 <= qx < width):
                        continue
                    if dy == 0 and dx == 0:
                        a = 1.0
                    else:
                        cells = [value(py + cy, px + cx)
                                 for cy in range(min(0, dy), max(0, dy) + 1)
                                 for cx in range(min(0, dx), max(0, dx) + 1)
                                 if (dy * cx - dx * cy) ** 2 / (dy * dy + dx * dx) < 1]
                        a = 1.0 - max(cells)
                    matrix[py * width + px, qy * width + qx] = a
    transition = matrix ** beta
    transition = transition / transition.sum(0, keepdims=True)
    for _ in range(exp_times):
        transition = transition @ transition
    seeds = x.reshape(x.shape[0], n) * (1 - edge.reshape(1, n))
    return (seeds @ transition).reshape(x.shape)


def test_pseudo_labels_walk_equals_irns_dense_walk_and_the_reference(model, batch):
    images, labels = batch["images"][:1], torch.tensor([[1.0, 0.0, 1.0]])
    generator = torch.Generator().manual_seed(5)
    boundary = torch.rand(1, 1, 8, 8, generator=generator, dtype=torch.float64) * 0.8
    raw = torch.rand(1, NUM_CLASSES, 8, 8, generator=generator, dtype=torch.float64)
    walked = model.walk(images.double(), labels, cams=raw, boundary=boundary)
    seeds = raw / (raw.flatten(2).amax(2)[..., None, None] + 1e-5) * labels[..., None, None]
    oracle = _irn_propagate_to_edge(seeds[0].numpy(), boundary[0, 0].numpy(), radius=5, beta=10.0, exp_times=8)
    np.testing.assert_allclose(walked[0].numpy(), oracle, rtol=1e-6, atol=1e-9)
    reference = random_walk_dense(seeds * (1 - boundary), wsss_ext.boundary_affinity(boundary, 5), 10.0, 256)
    torch.testing.assert_close(walked, reference)
    # make_sem_seg_labels.py: x4 bilinear, divided by the max, background 0.25, argmax, over the tags.
    up = F.interpolate(torch.from_numpy(oracle)[None], size=(32, 32), mode="bilinear", align_corners=False)[0]
    up = up / up.max()
    scores = torch.cat([torch.full((1, 32, 32), 0.25, dtype=up.dtype), up[[0, 2]]])
    expected = torch.tensor([0, 1, 3])[scores.argmax(0)]
    masks = model.pseudo_labels(images, labels, cams=raw.float(), boundary=boundary.float())
    assert torch.equal(masks[0], expected)
    cams = model.cams(images, labels, cams=raw.float(), boundary=boundary.float())
    torch.testing.assert_close(cams[0], (up * labels[0, :, None, None]).float(), atol=1e-4, rtol=1e-4)


def test_pseudo_labels_run_the_walk_kernel_on_the_inference_boundary(model, batch):
    images, labels, cams = batch["images"], batch["labels"], batch["cams"]
    ran, masks = traced_ops(model.pseudo_labels, images, labels, cams=cams)
    assert "wsss_ext::random_walk" in ran
    boundary = model.boundary(images)
    seeds = F.interpolate(cams, size=(8, 8), mode="bilinear", align_corners=False)
    seeds = seeds / (seeds.flatten(2).amax(2)[..., None, None] + 1e-5) * labels[..., None, None]
    walked = wsss_ext.irnet_random_walk(seeds, boundary, 10.0, 256, 5)
    scores = torch.where(labels[..., None, None] > 0, walked, torch.full_like(walked, -1.0))
    assert torch.equal(masks, wsss_ext.walk_to_labels(scores, (32, 32), 0.25))
    for mask, tags in zip(masks, labels):
        assert set(mask.unique().tolist()) <= {0} | {c + 1 for c in tags.nonzero().flatten().tolist()}


def test_inference_boundary_pads_to_the_crop_and_averages_the_flip(batch):
    torch.manual_seed(1)
    model = create("irnet", backbone="tiny", num_classes=NUM_CLASSES, crop_size=48, cam_network=None).eval()
    images = batch["images"]
    x = model.normalize(images)

    def logits(t):
        return model.edge(resnet_stage_features(model.backbone, F.pad(t, (0, 16, 0, 16))))[..., :8, :8]

    with torch.no_grad():
        expected = torch.sigmoid((logits(x) + logits(x.flip(-1)).flip(-1)) / 2)
    torch.testing.assert_close(model.boundary(images), expected)
    assert not torch.allclose(model.boundary(images, flip=False), expected)


def test_displacement_loss_by_hand():
    # One row of five pixels: labels fg 1, fg 1, bg, bg, ignored; radius 2 (3 x 3 taps).
    labels = torch.tensor([[[1, 1, 0, 0, 255]]])
    field = torch.zeros(1, 2, 1, 5)
    field[0, :, 0, 1] = torch.tensor([0.5, 0.0])    # D_1 = (0.5, 0)
    field[0, :, 0, 2] = torch.tensor([1.0, 2.0])    # D_2 = (1, 2)
    field[0, :, 0, 3] = torch.tensor([0.0, 0.5])    # D_3 = (0, 0.5)
    field[0, :, 0, 4] = torch.tensor([9.0, 9.0])    # ignored
    bg, fg, _ = affinity_pair_labels(labels, radius=2)
    terms = displacement_loss(field, fg, bg, radius=2)
    # fg pair (0, 1), offset (0, 1): |D_0 - D_1 - (0, 1)| = |(-0.5, -1)| = 1.5, over 2 x 1 pairs.
    torch.testing.assert_close(terms["displacement_fg"], torch.tensor(1.5 / (2 + 1e-5)))
    # bg pair (2, 3): |D_2 - D_3| = |(1, 1.5)| = 2.5, over 2 x 1 pairs.
    torch.testing.assert_close(terms["displacement_bg"], torch.tensor(2.5 / (2 + 1e-5)))
    # No pairs: 0, not NaN.
    empty = displacement_loss(field, torch.zeros_like(fg), torch.zeros_like(bg), radius=2)
    assert float(empty["displacement_fg"]) == 0.0 and float(empty["displacement_bg"]) == 0.0


def _displacement_oracle(field: np.ndarray, labels: np.ndarray, radius: int) -> tuple[float, float]:
    """irn's dp_fg / dp_bg with loops over each unordered pair once (its forward directions)."""
    _, height, width = field.shape
    fg_sum = bg_sum = fg_count = bg_count = 0.0
    for py in range(height):
        for px in range(width):
            for dy in range(radius):
                for dx in range(-radius + 1, radius):
                    if dy * dy + dx * dx >= radius * radius or (dy == 0 and dx <= 0):
                        continue
                    qy, qx = py + dy, px + dx
                    if not (0 <= qy < height and 0 <= qx < width):
                        continue
                    a, b = labels[py, px], labels[qy, qx]
                    if a == 255 or b == 255 or a != b:
                        continue
                    diff = field[:, py, px] - field[:, qy, qx]
                    if a > 0:
                        fg_sum += np.abs(diff - np.array([dy, dx])).sum()
                        fg_count += 1
                    else:
                        bg_sum += np.abs(diff).sum()
                        bg_count += 1
    return fg_sum / (2 * fg_count + 1e-5), bg_sum / (2 * bg_count + 1e-5)


def test_displacement_loss_matches_a_loop_oracle():
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (2, 5, 6), generator=generator)
    labels[0, 0, :2] = 255
    field = torch.randn(2, 2, 5, 6, generator=generator, dtype=torch.float64)
    bg, fg, _ = affinity_pair_labels(labels, radius=3)
    terms = displacement_loss(field, fg, bg, radius=3)
    for b in range(2):
        # irn pools the pairs of the whole batch; the oracle is per image, so compare batches of one.
        single = displacement_loss(field[b:b + 1], fg[b:b + 1], bg[b:b + 1], radius=3)
        expected = _displacement_oracle(field[b].numpy(), labels[b].numpy(), 3)
        assert float(single["displacement_fg"]) == pytest.approx(expected[0], rel=1e-9)
        assert float(single["displacement_bg"]) == pytest.approx(expected[1], rel=1e-9)
    assert torch.isfinite(terms["displacement_fg"]) and float(terms["displacement_fg"]) > 0


def test_displacement_loss_gradcheck():
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (1, 4, 5), generator=generator)
    bg, fg, _ = affinity_pair_labels(labels, radius=2)
    field = torch.randn(1, 2, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)

    def total(x):
        terms = displacement_loss(x, fg, bg, radius=2)
        return terms["displacement_fg"] + terms["displacement_bg"]

    assert torch.autograd.gradcheck(total, (field,))


def test_irnet_losses_total_is_train_irns():
    generator = torch.Generator().manual_seed(4)
    boundary = torch.rand(2, 1, 6, 7, generator=generator)
    field = torch.randn(2, 2, 6, 7, generator=generator)
    labels = torch.randint(0, 3, (2, 6, 7), generator=generator)
    terms = irnet_losses(boundary, field, labels, radius=3)
    total = (terms["bg_pos"] / 2 + terms["fg_pos"] / 2 + terms["neg"]) / 2 \
        + (terms["displacement_fg"] + terms["displacement_bg"]) / 2
    torch.testing.assert_close(terms["loss"], total)
    a = wsss_ext.boundary_affinity(boundary, 3)
    bg, _, neg = affinity_pair_labels(labels, radius=3)
    torch.testing.assert_close(terms["neg"], -torch.log(1 + 1e-5 - a[neg]).mean())
    torch.testing.assert_close(terms["bg_pos"], -torch.log(a[bg] + 1e-5).mean())


def test_reduce_label_map_samples_cell_centres_as_pil_nearest():
    labels = torch.arange(32 * 32).view(1, 32, 32)
    reduced = reduce_label_map(labels, (8, 8))
    centres = torch.arange(8) * 4 + 2
    assert torch.equal(reduced[0], labels[0][centres][:, centres])


def test_example_batch_ir_labels_are_confident_labels_at_stride_4(model, batch):
    ir = batch["ir_labels"]
    assert ir.shape == (2, 8, 8) and ir.dtype == torch.int64
    for labels_map, tags in zip(ir, batch["labels"]):
        assert set(labels_map.unique().tolist()) <= {0, 255} | {c + 1 for c in tags.nonzero().flatten().tolist()}
    # Mostly right where confident (the synthetic CAMs are blurred masks).
    masks = reduce_label_map(batch["masks"], (8, 8))
    confident = ir != 255
    assert float((ir[confident] == masks[confident]).float().mean()) > 0.9


def test_inputs_are_checked_by_name(model, batch):
    images, labels, cams = batch["images"], batch["labels"], batch["cams"]
    with pytest.raises(ValueError, match="ir_labels"):
        model.losses({**batch, "ir_labels": batch["ir_labels"][:, :4]})
    with pytest.raises(TypeError, match="ir_labels"):
        model.losses({**batch, "ir_labels": batch["ir_labels"].float()})
    with pytest.raises(ValueError, match="ir_labels"):
        model.losses({**batch, "ir_labels": torch.full_like(batch["ir_labels"], 7)})
    with pytest.raises(ValueError, match="cams"):
        model.pseudo_labels(images, labels)              # cam_network=None and no cams=
    with pytest.raises(ValueError, match="cams"):
        model.pseudo_labels(images, labels, cams=cams[:, :2])
    with pytest.raises(ValueError, match="cams"):
        model.pseudo_labels(images, labels, cams=cams * 3)
    with pytest.raises(ValueError, match="boundary"):
        model.pseudo_labels(images, labels, cams=cams, boundary=torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="labels"):
        model.pseudo_labels(images, labels[:1], cams=cams)
    bad = torch.zeros(1, 2, 3, 3)
    bad[0, 0, 1, 1] = float("nan")
    pairs = torch.zeros(1, 9, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="displacement"):
        displacement_loss(bad, pairs, pairs, radius=2)
    with pytest.raises(ValueError, match="displacement"):
        displacement_loss(torch.zeros(1, 3, 3, 3), pairs, pairs, radius=2)
    with pytest.raises(ValueError, match="fg_pos"):
        displacement_loss(torch.zeros(1, 2, 3, 3), pairs[:, :5], pairs, radius=2)
    with pytest.raises(TypeError, match="displacement"):
        displacement_loss(torch.zeros(1, 2, 3, 3, dtype=torch.long), pairs, pairs, radius=2)
    with pytest.raises(ValueError, match="radius"):
        create("irnet", backbone="tiny", num_classes=NUM_CLASSES, radius=65, cam_network=None)


def test_default_cam_network_supplies_the_seeds(batch):
    torch.manual_seed(0)
    model = create("irnet", backbone="tiny", num_classes=NUM_CLASSES, crop_size=0).eval()
    images, labels = batch["images"], batch["labels"]
    network = model.cam_network
    assert type(network).__name__ == "CAM" and not network.training
    seeds = model.seed_cams(images, labels, None, (8, 8))
    with torch.no_grad():
        total = sum(F.interpolate(F.relu(network.raw_cams(network.normalize(x))), size=(8, 8), mode="bilinear",
                                  align_corners=False)
                    for s in (1.0, 0.5, 1.5, 2.0)
                    for x in [F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False,
                                            recompute_scale_factor=False) if s != 1 else images])
        total = total + sum(F.interpolate(F.relu(network.raw_cams(network.normalize(x.flip(-1)))).flip(-1),
                                          size=(8, 8), mode="bilinear", align_corners=False)
                            for s in (1.0, 0.5, 1.5, 2.0)
                            for x in [F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False,
                                                    recompute_scale_factor=False) if s != 1 else images])
    expected = total / (total.flatten(2).amax(2)[..., None, None] + 1e-5) * labels[..., None, None]
    torch.testing.assert_close(seeds, expected, atol=1e-4, rtol=1e-4)   # summation order differs
    assert float(seeds.amax()) > 0.9


def test_loss_falls_over_20_steps(batch):
    torch.manual_seed(0)
    # radius 5 instead of 10 keeps the smoke test fast; the loss is the same code.
    model = create("irnet", backbone="tiny", num_classes=NUM_CLASSES, cam_network=None, lr=0.02, radius=5).train()
    losses = train_losses(model, batch, optimizer=torch.optim.SGD(model.param_groups(), momentum=0.9))
    assert losses[-1] < 0.75 * losses[0], losses


def test_freeze_backbone_false_trains_the_backbone_too():
    frozen = create("irnet", backbone="tiny", num_classes=NUM_CLASSES, cam_network=None, radius=5).train()
    free = create("irnet", backbone="tiny", num_classes=NUM_CLASSES, cam_network=None, radius=5,
                  freeze_backbone=False).train()
    assert not frozen.backbone.training and free.backbone.training
    for model in (frozen, free):
        batch = model.example_batch(2, 32, torch.Generator().manual_seed(0))
        model.losses(batch)["loss"].backward()
    assert all(p.grad is None for p in frozen.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in free.backbone.parameters())
