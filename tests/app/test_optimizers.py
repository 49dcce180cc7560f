"""The optimizer ``wsss-ext train`` gives a method: its published settings
when its DEFAULTS state them (SGD, its groups, its schedule), else AdamW."""

import pytest
import torch

import python_models
from wsss_app.pipeline.optimizers import DEFAULT_LR, build_optimizer, optimizer_settings


def _factors(schedule, steps):
    rates = []
    for _ in range(steps):
        rates.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()
        schedule.step()
    return rates


def test_published_settings_and_schedules():
    seam = python_models.create("seam", backbone="tiny", num_classes=4)
    settings = optimizer_settings(seam)
    assert (settings["name"], settings["lr"], settings["momentum"], settings["weight_decay"],
            settings["schedule"]) == ("sgd", 0.01, 0.9, 5e-4, "poly")  # SEAM train_SEAM.py
    optimizer, schedule = build_optimizer(seam, settings, total_steps=4)
    assert isinstance(optimizer, torch.optim.SGD)
    assert _factors(schedule, 4) == pytest.approx([0.01 * (1 - k / 4) ** 0.9 for k in range(4)])
    ssss = python_models.create("ssss", backbone="tiny", num_classes=4)
    _, constant = build_optimizer(ssss, optimizer_settings(ssss), total_steps=4)
    assert _factors(constant, 3) == pytest.approx([1e-3] * 3)  # 1-stage-wseg keeps its rate
    sec = python_models.create("sec", backbone="tiny", num_classes=4)
    settings = optimizer_settings(sec, lr=1.0)
    assert (settings["schedule"], settings["lr_step"], settings["lr_gamma"]) == ("step", 2000, 0.1)


def test_a_method_without_settings_gets_adamw_and_lr_overrides_keep_group_ratios():
    cam = python_models.create("cam", backbone="tiny", num_classes=4)
    settings = optimizer_settings(cam)
    assert settings["name"] == "adamw" and settings["lr"] == DEFAULT_LR
    optimizer, _ = build_optimizer(cam, optimizer_settings(cam, lr=0.5), total_steps=2)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["lr"] == 0.5
    irnet = python_models.create("irnet", backbone="tiny", num_classes=4, freeze_backbone=False)
    optimizer, _ = build_optimizer(irnet, optimizer_settings(irnet, lr=0.01), total_steps=2)
    rates = [group["lr"] for group in optimizer.param_groups]
    assert rates[:2] == pytest.approx([0.01, 0.1])  # irn: the displacement branch at 10 x lr
    covered = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert covered == {id(p) for p in irnet.parameters() if p.requires_grad}  # the backbone too
