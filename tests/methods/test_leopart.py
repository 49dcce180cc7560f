"""Leopart: RoIAlign (against torchvision's algorithm written as loops), crop
intersections, the attention-mass foreground mask, CBFE, the spatial loss,
the Sinkhorn codes against SwAV's recipe, state discipline and a training smoke."""

from __future__ import annotations

import math

import pytest
import torch
from method_support import one_thread, seeded_batch, traced_ops, train_losses  # noqa: F401

from python_models import create
from python_models.augment.crops import multi_crop
from python_models.losses import leopart_spatial_loss
from python_models.memory import cosine_momentum
from python_models.pseudo import (
    attention_foreground,
    cbfe,
    cbfe_search_cut,
    cls_attention_map,
    cluster_precisions,
    crop_intersections,
    drop_small_components,
    gaussian_blur,
    keep_attention_mass,
    roi_align,
)
from wsss_ext.reference import sinkhorn_swav


def _tiny(**overrides):
    torch.manual_seed(0)
    options = dict(backbone="tiny", num_classes=8, queue_length=16)
    options.update(overrides)
    return create("leopart", **options)


# ---------------------------------------------------------------- defaults


def test_defaults_are_the_published_values():
    # MkuuWaUjinga/leopart experiments/configs/train_coco_config.yml and Leopart.__init__ / process_attentions.
    assert create("leopart", backbone="tiny").DEFAULTS == dict(
        num_classes=300, backbone="vit_small", weights=None, drop_path_rate=0.1,
        projection_hidden_dim=2048, projection_dim=256, projection_layers=3,
        temperature=0.1, epsilon=0.05, sinkhorn_iterations=3,
        global_crops=2, local_crops=4, global_crop_size=224, local_crop_size=96,
        global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25), min_intersection=0.01,
        roi_align_size=7, momentum_teacher=0.9995, final_momentum_teacher=1.0,
        queue_length=8192, queue_rows_per_image=10, loss_mask="fg",
        attention_fraction=0.6, attention_blur_sigma=0.6, attention_blur_size=7, attention_min_component=3,
        lr_backbone=1e-5, lr_heads=1e-4, final_lr=0.0, weight_decay=0.04, weight_decay_end=0.5,
        batch_size=32, max_epochs=50, optimizer="adamw", exclude_norm_bias=True, process_group=None,
    )
    from python_models.methods import Leopart
    assert Leopart.KERNELS == ("sinkhorn_knopp",)


# ---------------------------------------------------------------- RoIAlign


def _bilinear(image, y, x):
    height, width = len(image), len(image[0])
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * image[y_low][x_low] + hy * lx * image[y_low][x_high]
            + ly * hx * image[y_high][x_low] + ly * lx * image[y_high][x_high])


def _roi_align_loops(inputs, rois, out_h, out_w, scale, sampling, aligned):
    """torchvision's roi_align_forward_kernel_impl (csrc/ops/cpu/roi_align_kernel.cpp) as loops."""
    result = torch.zeros(len(rois), inputs.shape[1], out_h, out_w, dtype=torch.float64)
    for r, roi in enumerate(rois.tolist()):
        offset = 0.5 if aligned else 0.0
        sw, sh = roi[1] * scale - offset, roi[2] * scale - offset
        rw, rh = roi[3] * scale - offset - sw, roi[4] * scale - offset - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / out_h, rw / out_w
        gh = sampling if sampling > 0 else math.ceil(rh / out_h)
        gw = sampling if sampling > 0 else math.ceil(rw / out_w)
        count = max(gh * gw, 1)
        for c in range(inputs.shape[1]):
            image = inputs[int(roi[0]), c].tolist()
            for ph in range(out_h):
                for pw in range(out_w):
                    total = 0.0
                    for iy in range(gh):
                        y = sh + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            x = sw + pw * bw + (ix + 0.5) * bw / gw
                            total += _bilinear(image, y, x)
                    result[r, c, ph, pw] = total / count
    return result


def test_roi_align_hand_computed_cases():
    grid = torch.arange(16.0).view(1, 1, 4, 4)
    # Box (1, 1, 3, 3) into 2 x 2: one sample per bin at the pixel centres (1, 1), (1, 2), (2, 1), (2, 2).
    out = roi_align(grid, [torch.tensor([[1.0, 1.0, 3.0, 3.0]])], 2)
    assert out.tolist() == [[[[5.0, 6.0], [9.0, 10.0]]]]
    # Box (0, 0, 2, 2) into 1 x 1: a 2 x 2 sample grid (ceil(2 / 1)) averaging pixels 0, 1, 4, 5.
    assert roi_align(grid, torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]]), 1).item() == pytest.approx(2.5)
    # Box (0.5, 0, 1.5, 1): one sample at x = 0.5, y = 0, halfway between pixels 0 and 1.
    assert roi_align(grid, torch.tensor([[0.0, 0.5, 0.0, 1.5, 1.0]]), 1).item() == pytest.approx(0.5)


def test_full_image_box_on_a_7x7_map_returns_the_map():
    maps = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    boxes = [torch.tensor([[0.0, 0.0, 7.0, 7.0]]), torch.tensor([[0.0, 0.0, 112.0, 112.0]]) / 16]
    torch.testing.assert_close(roi_align(maps, boxes, 7), maps)
    # The same in crop pixels with spatial_scale 1 / 16 (a 112-px crop at patch 16).
    torch.testing.assert_close(roi_align(maps, [torch.tensor([[0.0, 0.0, 112.0, 112.0]])] * 2, 7,
                                         spatial_scale=1 / 16), maps)


@pytest.mark.parametrize("aligned,sampling", [(True, -1), (True, 2), (False, -1)])
def test_roi_align_equals_torchvision_algorithm_on_random_boxes(aligned, sampling):
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    corners = torch.rand(9, 2, generator=g, dtype=torch.float64) * torch.tensor([7.0, 6.0]) - 1.0
    sides = torch.rand(9, 2, generator=g, dtype=torch.float64) * 5 + 0.2
    rois = torch.cat([torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 1.0], dtype=torch.float64)[:, None], corners,
                      corners + sides], 1)
    rois[-1, 1:] = torch.tensor([-3.0, -3.0, -1.8, -2.0])  # wholly outside: zero
    out = roi_align(maps, rois, (3, 2), spatial_scale=1.0, sampling_ratio=sampling, aligned=aligned)
    torch.testing.assert_close(out, _roi_align_loops(maps, rois, 3, 2, 1.0, sampling, aligned))
    assert torch.all(out[-1] == 0)


def test_roi_align_gradcheck():
    maps = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    boxes = [torch.tensor([[0.3, 0.2, 3.1, 2.7], [1.0, 1.0, 4.0, 4.0]], dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda x: roi_align(x, boxes, 2), (maps,))


def test_roi_align_bad_input_is_named():
    maps = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="input"):
        roi_align(torch.zeros(4, 4), [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="boxes"):
        roi_align(maps, [torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="boxes"):
        roi_align(maps, torch.tensor([[2.0, 0, 0, 1, 1]]))  # batch index 2 of a batch of 1
    with pytest.raises(ValueError, match="boxes"):
        roi_align(maps, [torch.zeros(1, 4), torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="input"):
        roi_align(torch.full((1, 1, 2, 2), float("nan")), [torch.zeros(1, 4)])


# ---------------------------------------------------------------- crop boxes


def test_crop_intersections_hand_case():
    # Image 20 x 20; global crop (0, 0, 10, 10) resized to 20; crop (5, 5, 15, 15) resized to 10.
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]]])
    in_global, in_crop = crop_intersections(boxes, [20, 10], n_global=1)
    assert in_global.shape == (1, 1, 2, 4) and in_crop.shape == (1, 2, 1, 4)
    assert in_global[0, 0, 0].tolist() == [0.0, 0.0, 20.0, 20.0]      # a crop with itself: all of it
    assert in_global[0, 0, 1].tolist() == [10.0, 10.0, 20.0, 20.0]     # overlap (5..10) in the global crop
    assert in_crop[0, 1, 0].tolist() == [0.0, 0.0, 5.0, 5.0]           # the same overlap in the crop
    with pytest.raises(ValueError, match="overlap"):
        crop_intersections(torch.tensor([[[0.0, 0, 4, 4], [5.0, 5, 9, 9]]]), [8, 8], 1)
    with pytest.raises(ValueError, match="crop_boxes"):
        crop_intersections(torch.zeros(2, 4), [8, 8], 1)


def test_multi_crop_boxes_hold_the_crops_and_overlap():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    crops, boxes = multi_crop(images, [32, 32, 16, 16], [(0.25, 1.0)] * 2 + [(0.05, 0.25)] * 2, 2,
                              torch.Generator().manual_seed(0), min_intersection=0.01)
    assert [c.shape for c in crops] == [(2, 3, 32, 32)] * 2 + [(2, 3, 16, 16)] * 2
    assert torch.all(boxes[..., :2] >= 0) and torch.all(boxes[..., 2:] <= 32)
    x0, y0, x1, y1 = boxes[0, 0].int().tolist()
    expected = torch.nn.functional.interpolate(images[:1, :, y0:y1, x0:x1], size=(32, 32), mode="bilinear",
                                               align_corners=False, antialias=True)
    torch.testing.assert_close(crops[0][:1], expected.clamp(0, 1))
    crop_intersections(boxes, [32, 32, 16, 16], 2)  # no ValueError: every crop overlaps both global ones


# ---------------------------------------------------------------- the attention foreground


def test_gaussian_blur_is_torchvisions_reflect_padded_kernel():
    maps = torch.rand(1, 8, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.arange(-3.0, 4.0, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / 0.6) ** 2)
    kernel = kernel / kernel.sum()
    padded = torch.nn.functional.pad(maps[None], (3, 3, 3, 3), mode="reflect")[0, 0]
    expected = torch.zeros(8, 9, dtype=torch.float64)
    for i in range(8):
        for j in range(9):
            expected[i, j] = (kernel[:, None] * kernel[None, :] * padded[i:i + 7, j:j + 7]).sum()
    torch.testing.assert_close(gaussian_blur(maps, 7, 0.6)[0], expected)


def test_attention_mass_mask_keeps_at_least_the_fraction_and_is_minimal():
    maps = torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(0)) ** 3
    kept = keep_attention_mass(maps, 0.6)
    for m, k in zip(maps, kept):
        share = float(m[k].sum() / m.sum())
        assert share >= 0.6
        smallest = m[k].min()
        assert float((m[k].sum() - smallest) / m.sum()) < 0.6  # dropping the smallest kept one falls short
        assert float(m[~k].max()) <= float(smallest)             # the kept pixels are the largest
    # Hand case: masses 0.5, 0.3, 0.1, 0.1 -> 0.5 + 0.3 = 0.8 >= 0.6 is needed, 0.5 alone is not enough.
    hand = torch.tensor([[[0.1, 0.5], [0.3, 0.1]]])
    assert keep_attention_mass(hand, 0.6).tolist() == [[[False, True], [True, False]]]


def test_small_components_are_dropped_with_8_connectivity():
    masks = torch.tensor([[[1, 0, 0, 0, 1],
                           [0, 0, 0, 1, 0],
                           [0, 0, 0, 0, 0],
                           [1, 1, 0, 0, 0],
                           [1, 0, 0, 0, 0]]], dtype=torch.bool)
    out = drop_small_components(masks, 2)
    expected = torch.zeros_like(masks)
    expected[0, 3, 0] = expected[0, 3, 1] = expected[0, 4, 0] = True  # the only component of 3 pixels
    assert torch.equal(out, expected)  # (0,4)-(1,3) joins diagonally: 2 pixels, dropped; (0,0) alone dropped


def test_attention_foreground_and_cls_attention_map():
    attention = torch.zeros(1, 2, 1 + 16, 1 + 16)
    attention[:, :, 0, 1:] = 0.001
    attention[0, 0, 0, 1 + 5] = attention[0, 1, 0, 1 + 6] = 1.0  # head 0 -> patch (1, 1), head 1 -> (1, 2)
    maps = cls_attention_map(attention, (4, 4))
    assert maps.shape == (1, 4, 4) and maps[0, 1, 1].item() == pytest.approx(0.5005)
    mask = attention_foreground(maps)
    assert mask[0, 1, 1] and mask[0, 1, 2] and not mask[0, 3, 3]
    blurred = gaussian_blur(maps)
    assert float(blurred[mask].sum() / blurred.sum()) >= 0.6
    with pytest.raises(ValueError, match="attention"):
        cls_attention_map(attention, (3, 3))


# ---------------------------------------------------------------- CBFE


def test_cluster_precisions_average_over_the_images_a_cluster_is_in():
    clusters = torch.tensor([[[0, 0, 1, 1]], [[0, 0, 0, 0]]])
    foreground = torch.tensor([[[1, 1, 1, 0]], [[1, 1, 0, 0]]], dtype=torch.bool)
    # cluster 0: image 0 precision 2/2, image 1 precision 2/4 -> 0.75; cluster 1: image 0 only, 1/2; 2: absent.
    assert cluster_precisions(clusters, foreground, 3).tolist() == [0.75, 0.5, 0.0]
    mask, _ = cbfe(clusters, foreground, 3, cut=0.6)
    assert mask.tolist() == [[[True, True, False, False]], [[True, True, True, True]]]
    with pytest.raises(ValueError, match="clusters"):
        cluster_precisions(clusters, foreground, 1)
    with pytest.raises(TypeError, match="clusters"):
        cluster_precisions(clusters.float(), foreground, 3)


def test_cbfe_search_cut_picks_the_best_cut_in_the_range():
    # 20 clusters, one pixel each in one image; cluster k has precision k / 20 (exactly: set below).
    k = 20
    clusters = torch.arange(k).view(1, 1, k)
    precisions = torch.arange(k, dtype=torch.float64) / k
    truth = torch.zeros(1, 1, k, dtype=torch.long)
    truth[0, 0, 13:] = 1  # the ground-truth foreground: clusters 13 .. 19
    # Cuts tried: start in range(11, 15); start 13 matches the truth exactly (IoU 1) -> precision 0.65.
    assert cbfe_search_cut(clusters, precisions, truth) == pytest.approx(0.65)
    truth[0, 0, 5:] = 1  # a foreground larger than any allowed cut: the smallest start (11) is best
    assert cbfe_search_cut(clusters, precisions, truth) == pytest.approx(0.55)


# ---------------------------------------------------------------- the spatial loss


def _ce_oracle(codes, scores, masks, tau):
    """Full-crop boxes on 7 x 7 grids: RoIAlign is the identity, so the loss is a plain masked CE."""
    total = 0.0
    for g, q in enumerate(codes):
        sub = 0.0
        for v, s in enumerate(scores):
            if v == g:
                continue
            ce = -(q * torch.log_softmax(s / tau, dim=1)).sum(1)
            if masks is None:
                sub += ce.mean()
            else:
                w = masks[g].double()
                sub += (ce * w).sum() / w.sum()
        total += sub / (len(scores) - 1)
    return total / len(codes)


@pytest.mark.parametrize("masked", [False, True])
def test_spatial_loss_equals_the_plain_cross_entropy_on_full_boxes(masked):
    g = torch.Generator().manual_seed(0)
    b, k, v_count = 2, 5, 3
    codes = [torch.softmax(torch.randn(b, k, 7, 7, generator=g, dtype=torch.float64), 1) for _ in range(2)]
    scores = [torch.randn(b, k, 7, 7, generator=g, dtype=torch.float64) for _ in range(v_count)]
    full = torch.tensor([0.0, 0.0, 7.0, 7.0], dtype=torch.float64)
    global_boxes = full.expand(b, 2, v_count, 4).clone()
    crop_boxes = full.expand(b, v_count, 2, 4).clone()
    masks = None
    if masked:
        masks = [torch.rand(b, 7, 7, generator=g) > 0.5 for _ in range(2)]
    loss = leopart_spatial_loss(codes, scores, global_boxes, crop_boxes, 0.1, masks)
    torch.testing.assert_close(loss, _ce_oracle(codes, scores, masks, 0.1))
    if not masked:  # an all-true mask is no mask
        ones = [torch.ones(b, 7, 7, dtype=torch.bool)] * 2
        torch.testing.assert_close(leopart_spatial_loss(codes, scores, global_boxes, crop_boxes, 0.1, ones), loss)


def test_spatial_loss_gradcheck_and_bad_input():
    g = torch.Generator().manual_seed(1)
    codes = [torch.softmax(torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64), 1)]
    scores = [torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    gb = torch.tensor([[[[0.0, 0.0, 4.0, 4.0], [1.0, 0.5, 3.5, 4.0]]]], dtype=torch.float64)
    cb = torch.tensor([[[[0.0, 0.0, 4.0, 4.0]], [[0.2, 0.0, 4.0, 3.0]]]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: leopart_spatial_loss(codes, [a, b], gb, cb, 0.1, None, 3),
                                    tuple(scores))
    with pytest.raises(ValueError, match="crop_boxes"):
        leopart_spatial_loss(codes, scores, gb, cb[:, :1], 0.1)
    with pytest.raises(ValueError, match="scores"):
        leopart_spatial_loss(codes, [scores[0], torch.zeros(2, 3, 4, 4)], gb, cb, 0.1)


# ---------------------------------------------------------------- the method


def test_codes_equal_swavs_sinkhorn_on_the_same_scores_with_and_without_the_queue():
    model = _tiny(queue_length=8)
    batch = seeded_batch(model)
    views = [model.normalize(v) for v in batch["crops"]]
    _, teacher_scores = model.teacher(views)
    rows = teacher_scores[0].reshape(-1, teacher_scores[0].shape[-1])
    torch.testing.assert_close(model.codes(teacher_scores[0], 0).double(),
                               sinkhorn_swav(rows.double(), 0.05, 3), rtol=1e-4, atol=1e-6)
    model.queues[0].stage(torch.nn.functional.normalize(torch.randn(8, 256), dim=1))
    model.queues[0].commit()
    assert model.queues[0].is_full
    queue_scores = model.queues[0].tensor() @ model.student.prototypes.weight.detach().t()
    expected = sinkhorn_swav(torch.cat([queue_scores, rows]).double(), 0.05, 3)[-rows.shape[0]:]
    torch.testing.assert_close(model.codes(teacher_scores[0], 0).double(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_kernel_runs_in_losses():
    model = _tiny()
    ran, terms = traced_ops(model.losses, seeded_batch(model), 0)
    assert "wsss_ext::sinkhorn_codes" in ran and torch.isfinite(terms["loss"])


def test_state_moves_only_in_after_step():
    model = _tiny(queue_length=64, momentum_teacher=0.9, final_momentum_teacher=1.0)
    batch = seeded_batch(model)
    teacher_before = {n: p.clone() for n, p in model.teacher.module.named_parameters()}
    loss = model.losses(batch)["loss"]
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert int(model.queues[0].filled) == 0 and model.queues[0].staged > 0
    staged = model.queues[0].staged
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.01)
    student = {n: p.clone() for n, p in model.student.named_parameters()}
    assert all(torch.equal(p, teacher_before[n]) for n, p in model.teacher.module.named_parameters())
    model.after_step(0, 10)
    m = cosine_momentum(0, 10, 0.9, 1.0)
    name = "backbone.blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(dict(model.teacher.module.named_parameters())[name],
                               m * teacher_before[name] + (1 - m) * student[name])
    assert int(model.queues[0].filled) == staged <= 10 * 2  # at most 10 B foreground rows per step
    for net in (model.student, model.teacher.module):
        torch.testing.assert_close(net.prototypes.weight.norm(dim=1), torch.ones(8))


def test_bad_input_is_named():
    model = _tiny()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="crop_boxes"):
        model.losses({**batch, "crop_boxes": batch["crop_boxes"][:, :3]})
    with pytest.raises(TypeError, match="crop_boxes"):
        model.losses({**batch, "crop_boxes": batch["crop_boxes"].long()})
    with pytest.raises(ValueError, match="small_crops"):
        model.losses({**batch, "small_crops": batch["small_crops"][:, :1]})
    with pytest.raises(ValueError, match="crops"):
        model.losses({**batch, "crops": batch["crops"] * float("nan")})
    with pytest.raises(ValueError, match="crop_boxes"):
        model.losses({k: v for k, v in batch.items() if k != "crop_boxes"})
    with pytest.raises(ValueError, match="loss_mask"):
        create("leopart", backbone="tiny", loss_mask="everything")


def test_loss_falls_over_20_steps():
    model = _tiny()
    losses = train_losses(model, seeded_batch(model), steps=20, lr=1e-3)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < losses[0]
