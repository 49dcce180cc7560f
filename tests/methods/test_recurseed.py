"""RecurSeed + EdgePredictMix (python_models.methods.RecurSeed, python_models.pseudo.scg,
python_models.augment.epm): published defaults, SCG against a loop oracle of
the official formulas, PAMR inside RS against the direct op and the unfold
reference, EPM's mixing and filling rules, the kernels in a trace, the
pseudo-label step against a per-image CRF over the present labels, bad input,
and a training smoke."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread  # noqa: F401  (autouse fixture)
from method_support import seeded_batch, traced_ops, train_losses

import wsss_ext
from python_models import METHODS, create
from python_models.augment import (
    canny_edges,
    certain_labels,
    edge_predict,
    edge_predict_mix,
)
from python_models.methods.recurseed import RecurSeed
from python_models.pseudo import normalize_cams, scg
from wsss_ext.reference import pamr_unfold


def _model(**overrides):
    torch.manual_seed(0)
    settings = dict(backbone="tiny", num_classes=3, aspp_channels=16)
    return create("recurseed", **{**settings, **overrides})


def test_defaults_are_the_published_values():
    # shjo-april/RecurSeed_and_EdgePredictMix: core/networks.py RSEPM (output_stride 16, feature_size 256),
    # core/layers.py (ASPP 6/12/18 at stride 16, 48 low-level channels), infer_rsepm.py (scales 1, 0.5, 1.5, 2
    # + flip; SCG first 0.50, second 0.10, fg 0.30, bg 0.05), README (--conf_th 0.34), the official tag
    # CF(c=0.55, u=0.10) / seg=1.0, core/refinements/pamr.py (sigma 0.1), convert_seed_to_pseudo_masks.py
    # (bg_gamma 2, CRF 10 it, pos 1/3, bi 67/3/4). Unverified: scg_stages, pamr iters/dilations,
    # warmup_fraction, canny_thresholds (see the class docstring).
    assert RecurSeed.DEFAULTS == dict(
        num_classes=20, backbone="resnet50", output_stride=16, aspp_channels=256, aspp_rates=(6, 12, 18),
        low_reduced=48, cam_scales=(1.0, 0.5, 1.5, 2.0), cam_flip=True, class_threshold=0.34,
        scg_stages=(3, 4), scg_first_threshold=0.50, scg_second_threshold=0.10, scg_fg_threshold=0.30,
        scg_bg_threshold=0.05, pamr_iters=10, pamr_dilations=(1, 2, 4, 8, 12, 24), pamr_sigma=0.1,
        confident=0.55, uncertain=0.10, seg_weight=1.0, warmup_fraction=0.25, epm=True,
        canny_thresholds=(50.0, 100.0), bg_gamma=2.0,
        crf=dict(n_iters=10, gaussian_sxy=1, gaussian_weight=3, bilateral_sxy=67, bilateral_srgb=3,
                 bilateral_weight=4))
    assert METHODS["recurseed"] is RecurSeed and RecurSeed.KERNELS == ("pamr", "dense_crf")
    model = _model()
    assert model.decoder.classifier.out_channels == 4 and model.decoder.classifier.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="scg_stages"):
        _model(scg_stages=(5,))


# ---------------------------------------------------------------------------------------------- SCG
def _scg_oracle(stages, cams, t1=0.5, t2=0.1, fg_t=0.30, bg_t=0.05, eps=1e-10):
    """The official SCG (core/inferences.py) as loops over columns and classes, in numpy float64."""
    b_count, classes, h, w = cams.shape
    n = h * w
    out = np.zeros((b_count, classes, n))
    for b in range(b_count):
        hsc = np.zeros((n, n))
        for stage in stages:
            f = stage[b].reshape(stage.shape[1], n).T.astype(np.float64)
            f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
            sc = np.maximum(f @ f.T, 0)
            sc[sc < t1] = 0
            sc1 = np.zeros_like(sc)
            for j in range(n):
                sc1[:, j] = sc[:, j] / (sc[:, j].sum() + eps)
            s = sc.copy()
            np.fill_diagonal(s, 0)
            for j in range(n):
                s[:, j] = s[:, j] / (s[:, j].sum() + eps)
            sc2 = s @ s
            for j in range(n):
                sc2[:, j] = sc2[:, j] / (sc2[:, j].sum() + eps)
            sc2[sc2 < t2 / n] = 0
            m = np.maximum(sc1, sc2)
            for j in range(n):
                m[:, j] = m[:, j] / (m[:, j].sum() + eps)
            hsc += m
        for c in range(classes):
            cam = cams[b, c].reshape(-1)
            parts = []
            for ids in (np.nonzero(cam >= fg_t)[0], np.nonzero(cam <= bg_t)[0]):
                if len(ids) == 0:
                    parts.append(np.zeros(n))
                    continue
                sub = hsc[:, ids]
                sub = (sub - sub.min(0, keepdims=True)) / (sub.max(0, keepdims=True) - sub.min(0, keepdims=True) + eps)
                total = sub.sum(1)
                parts.append((total - total.min()) / (total.max() - total.min() + eps))
            scm = np.maximum(parts[0] - parts[1], 0)
            out[b, c] = (scm - scm.min()) / (scm.max() - scm.min() + eps)
    return out.reshape(b_count, classes, h, w)


def test_scg_equals_a_loop_oracle_of_the_official_formulas():
    g = torch.Generator().manual_seed(0)
    stages = [torch.randn(2, 5, 3, 4, generator=g).abs(), torch.randn(2, 7, 3, 4, generator=g)]
    cams = torch.rand(2, 3, 3, 4, generator=g, dtype=torch.float64)
    cams[0, 1] = cams[0, 1] * 0.2  # no pixel reaches 0.30: no foreground seed
    cams[1, 2] = 0.0  # an absent class
    got = scg([s.double() for s in stages], cams)
    expected = _scg_oracle([s.double().numpy() for s in stages], cams.numpy())
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)
    assert got.min() >= 0 and got.max() <= 1
    assert got[0, 1].abs().max() == 0 and got[1, 2].abs().max() == 0
    assert got[0, 0].max() == pytest.approx(1.0, abs=1e-6)
    # features at another size are resized bilinearly to the cams'
    small = torch.randn(2, 4, 6, 8, generator=g).double()
    resized = F.interpolate(small, size=(3, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(scg(small, cams), scg(resized, cams))


def test_scg_float32_output_range_and_bad_input():
    g = torch.Generator().manual_seed(1)
    out = scg(torch.randn(2, 8, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g))
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert scg(torch.randn(1, 8, 4, 4), torch.zeros(1, 2, 4, 4)).abs().max() == 0
    with pytest.raises(ValueError, match="cams"):
        scg(torch.randn(2, 8, 4, 4), torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="features"):
        scg([torch.randn(1, 8, 4, 4)], torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="cams"):
        scg(torch.randn(2, 8, 4, 4), torch.full((2, 3, 4, 4), float("nan")))
    with pytest.raises(TypeError, match="features"):
        scg(torch.ones(2, 8, 4, 4, dtype=torch.long), torch.rand(2, 3, 4, 4))


# ------------------------------------------------------------------------------------ RS and PAMR
def test_pamr_inside_rs_equals_the_direct_call_and_the_unfold_reference():
    model = _model().eval()
    batch = seeded_batch(model)
    images, labels = batch["images"], batch["labels"]
    with torch.no_grad():
        stages = model.backbone.stages(model.normalize(images))
        raw = model.head(stages[-1])
        got = model.recurseed_probs(images, labels, stages, raw, None)
        seed = normalize_cams(raw, labels)
        scm = scg([stages[2], stages[3]], seed, 0.5, 0.1, 0.30, 0.05)
        fg = F.interpolate(scm, size=stages[0].shape[-2:], mode="bilinear", align_corners=False) * labels[..., None, None]
        probs = torch.cat([1 - fg.amax(1, keepdim=True), fg], 1)
        image = wsss_ext.resize_image_to_mask(images, probs)
        direct = wsss_ext.pamr(image, probs, (1, 2, 4, 8, 12, 24), 10, 0.1)
        reference = pamr_unfold(image, probs, (1, 2, 4, 8, 12, 24), 10, 0.1)
    assert got.shape == (2, 4, 8, 8)
    assert torch.allclose(got, direct, atol=1e-6)
    assert torch.allclose(got, reference, atol=1e-5)
    # PAMR keeps every pixel's sum over the classes (its weights sum to 1 over the taps)
    assert torch.allclose(got.sum(1), probs.sum(1), atol=1e-5)
    # a class outside the tags stays zero
    absent = (labels == 0).nonzero()
    for b, c in absent.tolist():
        assert got[b, c + 1].abs().max() == 0


def test_losses_trace_pamr_and_pseudo_labels_trace_dense_crf():
    model = _model()
    batch = seeded_batch(model)
    ops, out = traced_ops(model.losses, batch)
    assert "wsss_ext::pamr_propagate" in ops and "wsss_ext::pamr_affinity" in ops
    assert set(out) == {"classification", "segmentation", "loss"}  # warm-up: no mix yet
    model.eval()
    ops, labels = traced_ops(model.pseudo_labels, batch["images"], batch["labels"])
    assert "wsss_ext::dense_crf" in ops
    assert labels.dtype == torch.int64 and labels.shape == (2, 32, 32)


def test_after_step_ends_the_warm_up_and_turns_on_epm():
    model = _model()
    batch = seeded_batch(model)
    assert float(model.progress) == 0.0
    model.after_step(0, 4)  # progress 0.25 = warmup_fraction
    assert float(model.progress) == 0.25
    out = model.losses(batch)
    assert {"classification_mix", "segmentation_mix"} <= set(out)
    total = out["classification"] + out["segmentation"] + out["classification_mix"] + out["segmentation_mix"]
    assert torch.allclose(out["loss"], total)
    assert set(_model(epm=False, warmup_fraction=0.0).losses(batch)) == {"classification", "segmentation", "loss"}
    with pytest.raises(ValueError, match="max_steps"):
        model.after_step(0, 0)


def test_pseudo_labels_equal_a_per_image_crf_over_the_present_labels():
    model = _model().eval()
    batch = seeded_batch(model, seed=3)
    images, labels = batch["images"], batch["labels"]
    got = model.pseudo_labels(images, labels)
    with torch.no_grad():
        probs = model.segment(images)
    crf = dict(model.config.crf)
    for b in range(2):
        present = [0] + [c + 1 for c in labels[b].nonzero().flatten().tolist()]
        fg = probs[b, present[1:]]
        fg = fg / (fg.flatten(1).amax(1)[:, None, None] + 1e-5)
        seed = torch.cat([(1 - fg.amax(0, keepdim=True)) ** 2, fg], 0)
        unary = -torch.log(seed.clamp(1e-5, 1))
        image = (images[b] * 255).round().clamp(0, 255).to(torch.uint8)
        q = wsss_ext.dense_crf(unary[None], image[None], **crf)[0]
        expected = torch.tensor(present)[q.argmax(0)]
        assert torch.equal(got[b], expected)
    # predict_tags: the mean sigmoid over scales and flips against 0.34
    tags = model.predict_tags(images)
    x = model.normalize(images)
    scores = []
    with torch.no_grad():
        for s in (1.0, 0.5, 1.5, 2.0):
            xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            scores += [torch.sigmoid(model.head.logits(model.backbone(xs))),
                       torch.sigmoid(model.head.logits(model.backbone(xs.flip(-1))))]
    assert torch.equal(tags, (torch.stack(scores).mean(0) >= 0.34).float())


# --------------------------------------------------------------------------------------------- EPM
def test_certain_labels_and_edge_predict_on_a_hand_case():
    # one row: fg prob of class 1 (class 2 zero); background = 1 - p
    p = torch.tensor([0.9, 0.6, 0.4, 0.3, 0.2, 0.05, 0.3, 0.3])
    probs = torch.stack([1 - p, p, torch.zeros(8)]).view(1, 3, 1, 8)
    assert certain_labels(probs).tolist() == [[[1, 1, 255, 255, 255, 0, 255, 255]]]
    no_edges = torch.zeros(1, 1, 8, dtype=torch.bool)
    # pixel 2 (next to a 1) takes 1 on the first pass; pixel 4 (next to a 0) takes 0; then pixel 3 sees
    # 1 (score p = 0.3) and 0 (score 1 - p = 0.7): 0; pixels 6, 7 grow from pixel 5's 0.
    assert edge_predict(probs, no_edges).tolist() == [[[1, 1, 1, 0, 0, 0, 0, 0]]]
    edges = torch.tensor([[[False, False, False, True, False, False, True, False]]])
    # an edge pixel stays ignored and cuts pixel 7 off from every certain pixel
    assert edge_predict(probs, edges).tolist() == [[[1, 1, 1, 255, 0, 0, 255, 255]]]


def _connected_through(labels, allowed, start_label, b):
    """Pixels reachable (8-neighbours) from pixels labelled start_label via allowed pixels labelled start_label."""
    h, w = labels.shape[-2:]
    seen = set()
    stack = [(y, x) for y in range(h) for x in range(w) if (y, x) in allowed[1] and labels[b, y, x] == start_label]
    seen.update(stack)
    while stack:
        y, x = stack.pop()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                q = (y + dy, x + dx)
                if 0 <= q[0] < h and 0 <= q[1] < w and q not in seen and q in allowed[0] \
                        and labels[b, q[0], q[1]] == start_label:
                    seen.add(q)
                    stack.append(q)
    return seen


def test_edge_predict_fills_only_where_the_rule_says():
    g = torch.Generator().manual_seed(5)
    probs = torch.softmax(3 * torch.randn(2, 4, 12, 12, generator=g), 1)
    edges = torch.rand(2, 12, 12, generator=g) < 0.2
    certain = certain_labels(probs)
    filled = edge_predict(probs, edges)
    sure = certain != 255
    assert torch.equal(filled[sure], certain[sure])  # certain pixels never change
    new = (certain == 255) & (filled != 255)
    assert not (new & edges).any()  # never fills an edge pixel
    assert ((filled[edges & ~sure]) == 255).all()
    for b in range(2):
        for label in filled[b].unique().tolist():
            if label == 255:
                continue
            region = {(y, x) for y, x in ((filled[b] == label) & ~edges[b] | (certain[b] == label)).nonzero().tolist()}
            seeds = {(y, x) for y, x in (certain[b] == label).nonzero().tolist()}
            reached = _connected_through(filled, (region, seeds), label, b)
            assert {(y, x) for y, x in (new[b] & (filled[b] == label)).nonzero().tolist()} <= reached
    # without edges every uncertain pixel is reached (each image has a certain pixel)
    assert (edge_predict(probs, torch.zeros_like(edges)) != 255).all()


def test_edge_predict_mix_mixes_images_and_masks_alike():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, 16, 16, generator=g)
    logits = torch.zeros(3, 3, 16, 16)
    logits[:, 1, 4:12, 4:12] = 6.0
    logits[:, 2, :4, :4] = 6.0
    probs = torch.softmax(logits + 0.3 * torch.randn(3, 3, 16, 16, generator=g), 1)
    result = edge_predict_mix(images, probs, generator=torch.Generator().manual_seed(0))
    partner = torch.tensor([1, 2, 0])
    assert torch.equal(result.partner, partner)
    m = result.masks
    assert m.any() and (~m).any()
    for i in range(3):
        j = int(partner[i])
        assert torch.equal(result.images[i][:, m[i]], images[i][:, m[i]])
        assert torch.equal(result.images[i][:, ~m[i]], images[j][:, ~m[i]])
        assert torch.equal(result.label_maps[i][m[i]], result.source_labels[i][m[i]])
        assert torch.equal(result.label_maps[i][~m[i]], result.source_labels[j][~m[i]])
        assert (result.source_labels[i][m[i]] != 255).all()
    edges = canny_edges(probs[:, 1:].amax(1))
    assert torch.equal(result.source_labels, edge_predict(probs, edges))


def test_epm_bad_input_is_named():
    probs = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    with pytest.raises(ValueError, match="probs"):
        certain_labels(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="uncertain"):
        certain_labels(probs, confident=0.1, uncertain=0.5)
    with pytest.raises(TypeError, match="edges"):
        edge_predict(probs, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="edges"):
        edge_predict(probs, torch.zeros(2, 8, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="probs"):
        edge_predict_mix(torch.rand(2, 3, 8, 8), torch.softmax(torch.randn(2, 3, 4, 4), 1))
    with pytest.raises(ValueError, match="maps"):
        canny_edges(torch.rand(2, 1, 8, 8))


def test_method_bad_input_is_named():
    model = _model()
    batch = seeded_batch(model)
    with pytest.raises(ValueError, match="labels"):
        model.losses({**batch, "labels": batch["labels"][:, :2]})
    with pytest.raises(ValueError, match="images"):
        model.losses({**batch, "images": batch["images"].clone().fill_(float("nan"))})
    with pytest.raises(ValueError, match="labels"):
        model.pseudo_labels(batch["images"], batch["labels"][:1])
    with pytest.raises(TypeError, match="unexpected"):
        _model(no_such_setting=1)


def test_loss_falls_over_20_steps():
    model = _model(epm=False, warmup_fraction=1.0)
    batch = seeded_batch(model)
    torch.manual_seed(0)
    # no after_step: it would end the warm-up (warmup_fraction 1.0) before the last loss
    first = train_losses(model, batch, lr=3e-3, after_step=False)[0]
    assert float(model.losses(batch)["loss"].detach()) < 0.7 * first
