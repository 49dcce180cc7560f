"""The method contract, checked for every registered method on a tiny
backbone and 32-pixel images: settings, batches, losses, purity of forward,
state changes only in after_step, the kernels really running, and the WSSS
outputs (CAMs in [0, 1], zero outside the tags; pseudo-labels in the tags)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import wsss_ext
from method_support import KERNEL_OPS, seeded_batch, traced_ops
from python_models import METHODS, WSSSMethod, create

KEYS = sorted(METHODS)
NUM_CLASSES = 3


def _build(key: str) -> nn.Module:
    torch.manual_seed(0)
    return create(key, backbone="tiny", num_classes=NUM_CLASSES)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _changed(before: dict, after: dict) -> list[str]:
    return [name for name in before if not torch.equal(before[name], after[name])]


def _is_batch_norm_statistic(model: nn.Module, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and leaf in (
        "running_mean", "running_var", "num_batches_tracked")


def _pseudo_label_extras(model, batch) -> dict:
    """Keyword inputs beyond (images, labels) that a method's pseudo_labels takes from the batch (boxes ...)."""
    parameters = inspect.signature(model.pseudo_labels).parameters
    return {name: batch[name] for name in parameters if name not in ("images", "labels") and name in batch}


def test_registry_is_populated_and_create_refuses_unknown_names():
    assert {"cam", "grad_cam", "mil"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown method"):
        create("no_such_method")
    with pytest.raises(TypeError, match="name"):
        create(3)


@pytest.mark.parametrize("key", KEYS)
def test_settings_declared_and_unknown_keywords_refused(key):
    cls = METHODS[key]
    assert cls.KEY == key and cls.PAPER and cls.__doc__
    assert {"num_classes", "backbone"} <= set(cls.DEFAULTS)
    for kernel in cls.KERNELS:
        assert hasattr(wsss_ext, kernel), f"{key} names {kernel}, which is no wsss_ext op"
        assert kernel in KERNEL_OPS, f"add {kernel}'s custom op to method_support.KERNEL_OPS"
    with pytest.raises(TypeError, match="not_a_setting"):
        create(key, backbone="tiny", not_a_setting=1)
    model = _build(key)
    assert model.config.num_classes == NUM_CLASSES
    assert vars(model.config).keys() == cls.DEFAULTS.keys()


@pytest.mark.parametrize("key", KEYS)
def test_example_batch_holds_the_keys_it_documents_and_is_reproducible(key):
    model = _build(key)
    batch, again = seeded_batch(model), seeded_batch(model)
    assert set(model.BATCH_KEYS) <= set(batch)
    for name in batch:
        assert torch.equal(batch[name], again[name]), name
    assert batch["images"].shape[0] == 2


@pytest.mark.parametrize("key", KEYS)
def test_losses_are_named_terms_with_a_differentiable_total(key):
    model = _build(key).train()
    batch = seeded_batch(model)
    before = _state(model)
    terms = model.losses(batch, step=0)
    assert "loss" in terms and len(terms) >= 1
    total = terms["loss"]
    assert total.dim() == 0 and total.requires_grad and torch.isfinite(total)
    for name, value in terms.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value), name
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    # losses() itself changes no state beyond BatchNorm's statistics: schedules move in after_step only.
    changed = [name for name in _changed(before, _state(model)) if not _is_batch_norm_statistic(model, name)]
    assert changed == []


@pytest.mark.parametrize("key", KEYS)
def test_forward_is_pure(key):
    model = _build(key).eval()
    images = seeded_batch(model)["images"]
    before = _state(model)
    with torch.no_grad():
        first = model(images)
        second = model(images)
    assert _changed(before, _state(model)) == []
    torch.testing.assert_close(first, second)
    # In train mode only BatchNorm's running statistics may move (PyTorch's convention).
    model.train()
    with torch.no_grad():
        model(images)
    assert all(_is_batch_norm_statistic(model, name) for name in _changed(before, _state(model)))


@pytest.mark.parametrize("key", KEYS)
def test_after_step_is_callable_once_per_step(key):
    model = _build(key)
    for step in range(3):
        model.after_step(step, 3)


@pytest.mark.parametrize("key", KEYS)
def test_declared_kernels_run_in_losses_or_pseudo_labels(key):
    model = _build(key)
    batch = seeded_batch(model)
    ran, _ = traced_ops(model.losses, batch, 0)
    if isinstance(model, WSSSMethod):
        model.eval()
        more, _ = traced_ops(model.pseudo_labels, batch["images"], batch["labels"],
                             **_pseudo_label_extras(model, batch))
        ran |= more
    for kernel in model.KERNELS:
        assert KERNEL_OPS[kernel] in ran, f"{key} declares {kernel} but {KERNEL_OPS[kernel]} did not run"


@pytest.mark.parametrize("key", [key for key in KEYS if issubclass(METHODS[key], WSSSMethod)])
def test_wsss_outputs_respect_the_tags(key):
    model = _build(key).eval()
    batch = seeded_batch(model, seed=3)
    images, labels = batch["images"], batch["labels"].clone()
    cams = model.cams(images, labels).detach()
    assert cams.shape == (2, NUM_CLASSES, 32, 32)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1 + 1e-5
    assert torch.all(cams[labels == 0] == 0)
    masks = model.pseudo_labels(images, labels, **_pseudo_label_extras(model, batch))
    assert masks.dtype == torch.int64 and masks.shape == (2, 32, 32)
    for mask, tags in zip(masks, labels):
        allowed = {0, 255} | {c + 1 for c in tags.nonzero().flatten().tolist()}
        assert set(mask.unique().tolist()) <= allowed


@pytest.mark.parametrize("key", [key for key in KEYS if issubclass(METHODS[key], WSSSMethod)])
def test_wsss_inputs_are_checked_by_name(key):
    model = _build(key).eval()
    batch = seeded_batch(model)
    images, labels = batch["images"], batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        model.cams(images, labels[:, :2])
    with pytest.raises(ValueError, match="labels"):
        model.cams(images, labels[:1])
    with pytest.raises(TypeError, match="images"):
        model.cams((images * 255).to(torch.uint8), labels)
    with pytest.raises(ValueError, match="images"):
        model.cams(images[0], labels)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images"):
        model.cams(bad, labels)
    with pytest.raises(ValueError, match="labels"):
        model.losses({**batch, "labels": labels * 2})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"images": images})
