"""DINO: the loss by hand and its pairs, the teacher without gradient, the
centre, the EMA schedule and the last-layer freeze through after_step, the
Sinkhorn-teacher option's kernel, bad input and a training smoke."""

from __future__ import annotations

import math

import pytest
import torch
from method_support import one_thread, seeded_batch, traced_ops, train_losses  # noqa: F401

from python_models import create
from python_models.losses import dino_loss
from python_models.memory import cosine_momentum
from python_models.methods.dino import teacher_temperature_at
from wsss_ext.reference import sinkhorn_swav


def _tiny(**overrides):
    torch.manual_seed(0)
    options = dict(backbone="tiny", num_classes=16)
    options.update(overrides)
    return create("dino", **options)


def test_defaults_are_the_published_values():
    # facebookresearch/dino main_dino.py argparse defaults (DINOLoss: student temperature 0.1, centre 0.9);
    # freeze_last_layer: 1 epoch = 1,281,167 // (8 GPUs x 64) steps.
    assert create("dino", backbone="tiny").DEFAULTS == dict(
        num_classes=65536, backbone="vit_small", drop_path_rate=0.1, hidden_dim=2048, bottleneck_dim=256,
        head_layers=3, use_bn_in_head=False, norm_last_layer=True, momentum_teacher=0.996,
        final_momentum_teacher=1.0, teacher_temperature=0.04, warmup_teacher_temperature=0.04,
        warmup_teacher_temperature_steps=0, student_temperature=0.1, centre_momentum=0.9, global_crops=2,
        local_crops=8, global_crop_size=224, local_crop_size=96, global_crops_scale=(0.4, 1.0),
        local_crops_scale=(0.05, 0.4), freeze_last_layer=2502, lr=0.0005, min_lr=1e-6, warmup_epochs=10,
        weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0, batch_size=64, epochs=100, optimizer="adamw",
        teacher="centering", sinkhorn_iterations=3, process_group=None,
    )
    assert 1281167 // (8 * 64) == 2502
    from python_models.methods import DINO
    assert DINO.KERNELS == ()


def _loss_by_hand(student, teacher, centre, ts, tt):
    """DINOLoss.forward in plain Python lists."""
    def softmax(row):
        top = max(row)
        e = [math.exp(x - top) for x in row]
        return [x / sum(e) for x in e]

    total, terms = 0.0, 0
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            per_sample = []
            for t_row, s_row in zip(t.tolist(), s.tolist()):
                q = softmax([(a - c) / tt for a, c in zip(t_row, centre.tolist())])
                p = softmax([a / ts for a in s_row])
                per_sample.append(-sum(qk * math.log(pk) for qk, pk in zip(q, p)))
            total += sum(per_sample) / len(per_sample)
            terms += 1
    return total / terms


def test_dino_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(4)]
    teacher = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    centre = torch.randn(4, generator=g, dtype=torch.float64)
    loss = dino_loss(student, teacher, centre, 0.1, 0.04)
    assert float(loss) == pytest.approx(_loss_by_hand(student, teacher, centre, 0.1, 0.04), rel=1e-10)
    # A two-element case worked on paper: uniform teacher, student logits (0, log 3) at τ_s 1 -> p = (1/4, 3/4).
    s = [torch.tensor([[0.0, math.log(3.0)]])] * 2
    t = [torch.tensor([[5.0, 5.0]])]
    assert float(dino_loss(s, t, None, 1.0, 0.04)) == pytest.approx(-0.5 * math.log(0.25) - 0.5 * math.log(0.75))


def test_pairs_with_the_same_view_are_skipped():
    g = torch.Generator().manual_seed(1)
    teacher = [torch.randn(2, 5, generator=g)]
    other = torch.randn(2, 5, generator=g)
    # With one teacher view, student view 0 (the same view) never enters the loss.
    a = dino_loss([torch.randn(2, 5, generator=g), other], teacher, torch.zeros(5))
    b = dino_loss([torch.randn(2, 5, generator=g), other], teacher, torch.zeros(5))
    assert float(a) == float(b)
    # And its term count is G (V - 1): four student views, two teacher views -> 6 pairs.
    students = [torch.zeros(2, 5)] * 4
    assert float(dino_loss(students, [torch.zeros(2, 5)] * 2, None)) == pytest.approx(math.log(5))


def test_dino_loss_gradcheck():
    g = torch.Generator().manual_seed(2)
    student = [torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda *s: dino_loss(list(s), teacher, torch.zeros(3), 0.1, 0.04),
                                    tuple(student))


def test_the_teacher_gets_no_gradient():
    model = _tiny()
    model.losses(seeded_batch(model))["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.student.parameters())


def test_the_centre_converges_to_the_batch_mean():
    model = _tiny(momentum_teacher=1.0, final_momentum_teacher=1.0)  # a fixed teacher: a fixed batch mean
    batch = seeded_batch(model)
    views = [model.normalize(v) for v in batch["crops"]]
    mean = torch.cat(model.teacher(views)).mean(0, keepdim=True)
    with torch.no_grad():
        model.losses(batch)
    assert torch.equal(model.centre.value, torch.zeros(1, 16))  # losses() only stages
    model.after_step(0, 40)
    torch.testing.assert_close(model.centre.value, 0.1 * mean)   # c <- 0.9 c + 0.1 mean
    for step in range(1, 40):
        with torch.no_grad():
            model.losses(batch)
        model.after_step(step, 40)
    torch.testing.assert_close(model.centre.value, (1 - 0.9 ** 40) * mean, rtol=1e-4, atol=1e-6)
    assert float((model.centre.value - mean).abs().max()) <= 0.9 ** 40 * float(mean.abs().max()) + 1e-6


def test_ema_schedule_moves_the_teacher_only_in_after_step():
    model = _tiny(momentum_teacher=0.9)
    batch = seeded_batch(model)
    teacher = {n: p.clone() for n, p in model.teacher.module.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.losses(batch)["loss"].backward()
    optimizer.step()
    assert all(torch.equal(p, teacher[n]) for n, p in model.teacher.module.named_parameters())
    student = {n: p.clone() for n, p in model.student.named_parameters()}
    assert int(model.steps_done) == 0
    model.after_step(3, 10)
    m = cosine_momentum(3, 10, 0.9, 1.0)
    assert 0.9 < m < 1.0
    for name in ("backbone.blocks.1.attn.qkv.weight", "head.mlp.0.weight"):
        torch.testing.assert_close(dict(model.teacher.module.named_parameters())[name],
                                   m * teacher[name] + (1 - m) * student[name])
    assert int(model.steps_done) == 4
    # The teacher has no stochastic depth; the student has DINO's 0.1 at the last block.
    assert model.student.backbone.blocks[-1].drop_path == pytest.approx(0.1)
    assert all(block.drop_path == 0 for block in model.teacher.module.backbone.blocks)


def test_last_layer_frozen_for_the_first_steps_and_temperature_warm_up():
    model = _tiny(freeze_last_layer=1, warmup_teacher_temperature=0.04, teacher_temperature=0.07,
                  warmup_teacher_temperature_steps=3)
    batch = seeded_batch(model)
    last = model.student.head.last_layer
    model.losses(batch)["loss"].backward()
    assert last.weight_v.grad is None and last.weight_g.grad is None
    assert model.student.head.mlp[0].weight.grad is not None
    assert model.current_teacher_temperature() == pytest.approx(0.04)
    model.zero_grad()
    model.after_step(0, 10)
    model.losses(batch)["loss"].backward()
    assert last.weight_v.grad is not None and float(last.weight_v.grad.abs().sum()) > 0
    assert last.weight_g.grad is None  # norm_last_layer: g stays 1
    assert model.current_teacher_temperature() == pytest.approx(0.055)
    model.after_step(1, 10)
    assert model.current_teacher_temperature() == pytest.approx(0.07)
    assert teacher_temperature_at(100, 0.04, 0.07, 3) == 0.07


def test_sinkhorn_teacher_option_runs_the_kernel_and_equals_swavs_recipe():
    model = _tiny(teacher="sinkhorn")
    batch = seeded_batch(model)
    ran, terms = traced_ops(model.losses, batch, 0)
    assert "wsss_ext::sinkhorn_codes" in ran and torch.isfinite(terms["loss"])
    assert _tiny().KERNELS == ()
    plain, _ = traced_ops(_tiny().losses, batch, 0)
    assert not any(op.startswith("wsss_ext::sinkhorn") for op in plain)
    teacher_out = model.teacher([model.normalize(v) for v in batch["crops"]])
    for target, out in zip(model.teacher_targets(teacher_out), teacher_out):
        torch.testing.assert_close(target.double(), sinkhorn_swav(out.double(), 0.04, 3), rtol=1e-4, atol=1e-6)
    # The centre is not used by this teacher: nothing is staged.
    model.after_step(0, 5)
    assert torch.equal(model.centre.value, torch.zeros(1, 16))


def test_bad_input_is_named():
    model = _tiny()
    batch = seeded_batch(model)
    crops, small = batch["crops"], batch["small_crops"]
    with pytest.raises(TypeError, match="crops"):
        model.losses({"crops": "crops", "small_crops": small})
    with pytest.raises(ValueError, match="crops"):
        model.losses({"crops": crops[0], "small_crops": small})          # rank 4, not G x B x 3 x H x W
    with pytest.raises(ValueError, match="small_crops"):
        model.losses({"crops": crops, "small_crops": small[:, :1]})      # batch 1 against 2
    with pytest.raises(ValueError, match="crops"):
        model.losses({"crops": crops * float("nan"), "small_crops": small})
    with pytest.raises(ValueError, match="global_crops"):
        model.losses({"crops": crops[:1], "small_crops": small})
    with pytest.raises(ValueError, match="small_crops"):
        model.losses({"crops": crops})
    with pytest.raises(ValueError, match="student"):
        dino_loss([torch.zeros(2, 3, 1)] * 2, [torch.zeros(2, 3)], None)
    with pytest.raises(ValueError, match="centre"):
        dino_loss([torch.zeros(2, 3)] * 2, [torch.zeros(2, 3)], torch.zeros(4))
    with pytest.raises(ValueError, match="teacher"):
        dino_loss([torch.zeros(2, 3)] * 2, [torch.zeros(2, 4)], None)
    with pytest.raises(ValueError, match="teacher"):
        create("dino", backbone="tiny", teacher="momentum")


def test_loss_falls_over_20_steps():
    # Centring flattens the teacher's targets on a fixed batch, which raises their entropy (the loss's floor);
    # with the centre held at zero the loss measures how well the student predicts its teacher.
    model = _tiny(centre_momentum=1.0)
    losses = train_losses(model, seeded_batch(model), steps=20, lr=1e-3)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]
