"""ESL (Saporta et al., CVPR-W 2020) and BDL's SSL rule: entropy and
confidence thresholds on hand-computed cases, an independent numpy oracle of
the published scripts, the method's losses and pseudo-labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import python_models
from method_support import train_losses
from python_models import Method, WSSSMethod
from python_models.methods.esl import ESL
from python_models.pseudo import esl_labels, esl_thresholds, normalized_entropy, ssl_labels, ssl_thresholds

NUM_CLASSES = 4


def _model(**overrides) -> ESL:
    torch.manual_seed(0)
    return ESL(backbone="tiny", num_classes=NUM_CLASSES, **overrides)


def _entropy(p: list[float]) -> float:
    return -sum(v * math.log(v) for v in p if v > 0) / math.log(len(p))


# Eight pixels, K = 3. Class 0 predicted on four of them (confidence 1.0, 0.8, 0.6, 0.4), class 1 on
# four very confident ones (1.0, 0.999, 0.995, 0.99), class 2 on none.
_PIXELS = [[1.0, 0.0, 0.0], [0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.4, 0.3, 0.3],
           [0.0, 1.0, 0.0], [0.0005, 0.999, 0.0005], [0.0025, 0.995, 0.0025], [0.005, 0.99, 0.005]]


def _hand_probs(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(_PIXELS, dtype=dtype).T.reshape(1, 3, 1, 8)


def test_defaults_are_the_published_values():
    # valeoai/ESL config.py + configs/esl.yml (DeepLabv2, MULTI_LEVEL, LAMBDA_SEG_MAIN 1.0 / AUX 0.1,
    # ESL.THRESHOLD 0.1, 19 classes), BDL SSL.py (cap 0.9), DeepLab-v2's ASPP dilations.
    assert ESL.DEFAULTS == dict(num_classes=19, backbone="resnet101", output_stride=8, multi_level=True,
                                lambda_seg_main=1.0, lambda_seg_aux=0.1, rule="esl", entropy_floor=0.1,
                                confidence_cap=0.9, aspp_dilations=(6, 12, 18, 24))
    assert ESL.KERNELS == ()
    assert python_models.METHODS["esl"] is ESL
    assert issubclass(ESL, Method) and not issubclass(ESL, WSSSMethod) and not hasattr(ESL, "cams")


def test_normalized_entropy_is_in_0_1_and_matches_the_formula():
    assert normalized_entropy(torch.full((1, 5, 2, 2), 0.2)).sub(1).abs().max() < 1e-6  # uniform: 1
    assert torch.equal(normalized_entropy(F.one_hot(torch.tensor([[[0, 3]]]), 4).permute(0, 3, 1, 2).float()),
                       torch.zeros(1, 1, 2))  # one-hot: exactly 0 (0 log 0 = 0)
    probs = torch.softmax(3 * torch.randn(3, 6, 5, 7, generator=torch.Generator().manual_seed(0)), 1)
    entropy = normalized_entropy(probs)
    assert entropy.shape == (3, 5, 7) and float(entropy.min()) >= 0 and float(entropy.max()) <= 1
    p = probs[1, :, 2, 3].tolist()
    assert abs(float(entropy[1, 2, 3]) - _entropy(p)) < 1e-6


def test_esl_hand_case_thresholds_and_ignored_pixels():
    probs = _hand_probs()
    h = [_entropy(p) for p in _PIXELS]
    assert h[0] < h[1] < h[2] < h[3] and h[4] < h[5] < h[6] < h[7] < 0.1
    # Class 0: sorted entropies' index round(4 / 2) = 2 -> h[2] (0.865); class 1: h[6] is below the floor
    # 0.1; class 2 (no pixel): the floor.
    thresholds = esl_thresholds(probs, floor=0.1)
    torch.testing.assert_close(thresholds, torch.tensor([h[2], 0.1, 0.1], dtype=torch.float64))
    assert abs(h[2] - 0.8650) < 1e-3
    assert esl_labels(probs).tolist() == [[[0, 0, 0, 255, 1, 1, 1, 1]]]
    # Without the floor class 1's threshold is h[6]: its least confident pixel is dropped too.
    torch.testing.assert_close(esl_thresholds(probs, floor=0.0)[:2], torch.tensor([h[2], h[6]], dtype=torch.float64))
    assert esl_labels(probs, floor=0.0).tolist() == [[[0, 0, 0, 255, 1, 1, 1, 255]]]
    # The floor is a lower bound (max), not a cap: a floor of 0.95 keeps every class-0 pixel below 0.95.
    assert esl_labels(probs, floor=0.95).tolist() == [[[0, 0, 0, 255, 1, 1, 1, 1]]]
    assert esl_labels(probs, floor=1.0).tolist() == [[[0, 0, 0, 0, 1, 1, 1, 1]]]
    assert esl_labels(probs, ignore_index=99)[0, 0, 3] == 99


def test_esl_median_index_of_the_published_script():
    # n = 3: index round(1.5) = 2 (half to even), the largest: nothing of that class is dropped.
    probs = torch.tensor(_PIXELS[:3], dtype=torch.float64).T.reshape(1, 3, 1, 3)
    assert esl_labels(probs, floor=0.0).tolist() == [[[0, 0, 0]]]
    # n = 5: index round(2.5) = 2, the true median: the two above it go.
    five = _PIXELS[:4] + [[0.34, 0.33, 0.33]]
    probs = torch.tensor(five, dtype=torch.float64).T.reshape(1, 3, 1, 5)
    assert esl_labels(probs, floor=0.0).tolist() == [[[0, 0, 0, 255, 255]]]


def test_thresholds_are_taken_over_the_chunk_not_per_image():
    # The class-0 pixels split over two images: each image alone keeps both of its pixels (n = 2 ->
    # index 1, the larger entropy), the chunk of both drops the least confident one.
    a = torch.tensor([_PIXELS[0], _PIXELS[1]], dtype=torch.float64).T.reshape(1, 3, 1, 2)
    b = torch.tensor([_PIXELS[2], _PIXELS[3]], dtype=torch.float64).T.reshape(1, 3, 1, 2)
    assert esl_labels(a, floor=0.0).tolist() == [[[0, 0]]]
    assert esl_labels(b, floor=0.0).tolist() == [[[0, 0]]]
    assert esl_labels(torch.cat([a, b]), floor=0.0).tolist() == [[[0, 0]], [[0, 255]]]
    assert ssl_labels(torch.cat([a, b]), cap=1.0).tolist() == [[[0, 0]], [[255, 255]]]


def test_ssl_hand_case():
    probs = _hand_probs()
    # Class 0 confidences sorted 0.4, 0.6, 0.8, 1.0 -> index 2 -> 0.8; class 1: 0.99 ... 1.0 -> 0.999,
    # capped at 0.9; class 2: 0.
    torch.testing.assert_close(ssl_thresholds(probs, cap=0.9), torch.tensor([0.8, 0.9, 0.0], dtype=torch.float64))
    assert ssl_labels(probs).tolist() == [[[0, 0, 255, 255, 1, 1, 1, 1]]]
    # Without the cap class 1 keeps p >= 0.999 only; a low cap keeps everything above it.
    assert ssl_labels(probs, cap=1.0).tolist() == [[[0, 0, 255, 255, 1, 1, 255, 255]]]
    assert ssl_labels(probs, cap=0.5).tolist() == [[[0, 0, 0, 255, 1, 1, 1, 1]]]


def _oracle(probs: np.ndarray, rule: str, bound: float) -> np.ndarray:
    """valeoai/ESL esl_UDA.py and BDL SSL.py, re-written: per class the sorted values at index
    round(n * 0.5); ESL floors the entropy thresholds and drops entropy > t, BDL caps the confidence
    thresholds and drops p < t."""
    batch, classes, height, width = probs.shape
    label = probs.argmax(1)
    if rule == "esl":
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(probs > 0, probs * np.log(probs), 0.0)
        value = -terms.sum(1) / np.log(classes)
    else:
        value = probs.max(1)
    thres = []
    for c in range(classes):
        x = value[label == c]
        if len(x) == 0:
            thres.append(0.0)
            continue
        x = np.sort(x)
        thres.append(x[int(np.round(len(x) * 0.5))])
    thres = np.array(thres)
    if rule == "esl":
        thres[thres < bound] = bound
    else:
        thres[thres > bound] = bound
    out = label.copy()
    for c in range(classes):
        drop = (value > thres[c]) if rule == "esl" else (value < thres[c])
        out[drop & (label == c)] = 255
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rules_match_an_independent_numpy_oracle(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, 6, 7, generator=g, dtype=torch.float64) * (1 + 2 * seed)
    probs = torch.softmax(logits, 1)
    array = probs.numpy()
    for floor in (0.1, 0.5):
        expected = _oracle(array, "esl", floor)
        assert np.array_equal(esl_labels(probs, floor=floor).numpy(), expected)
    for cap in (0.9, 0.5):
        expected = _oracle(array, "ssl", cap)
        assert np.array_equal(ssl_labels(probs, cap=cap).numpy(), expected)
    kept = esl_labels(probs) != 255
    assert torch.equal(esl_labels(probs)[kept], probs.argmax(1)[kept])  # kept pixels keep their argmax


def test_bad_probabilities_are_refused_by_name():
    probs = _hand_probs(torch.float32)
    for rule in (esl_labels, ssl_labels):
        with pytest.raises(ValueError, match="probs"):
            rule(probs[0])
        with pytest.raises(TypeError, match="probs"):
            rule((probs * 100).long())
        with pytest.raises(TypeError, match="probs"):
            rule(probs.tolist())
        bad = probs.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="probs"):
            rule(bad)
        with pytest.raises(ValueError, match="sum to 1"):
            rule(probs * 0.5)
        with pytest.raises(ValueError, match="K >= 2"):
            rule(torch.ones(1, 1, 2, 2))
        with pytest.raises(TypeError, match="ignore_index"):
            rule(probs, ignore_index=1.5)
    with pytest.raises(TypeError, match="floor"):
        esl_labels(probs, floor="0.1")
    with pytest.raises(TypeError, match="cap"):
        ssl_labels(probs, cap=None)


def test_losses_are_cross_entropies_of_source_and_target():
    model = _model().eval()
    batch = model.example_batch(2, 32, torch.Generator().manual_seed(0))
    assert batch["target_pseudo"].shape == (2, 32, 32) and set(batch["masks"].unique().tolist()) <= set(range(4))
    terms = model.losses(batch)
    assert set(terms) == {"source", "source_aux", "target", "target_aux", "loss"}
    with torch.no_grad():
        aux, main = model.segment(batch["images"])
        assert main.shape == aux.shape == (2, NUM_CLASSES, 32, 32)
        torch.testing.assert_close(terms["source"], F.cross_entropy(main, batch["masks"], ignore_index=255))
        torch.testing.assert_close(terms["source_aux"], F.cross_entropy(aux, batch["masks"], ignore_index=255))
        aux_t, main_t = model.segment(batch["target_images"])
        torch.testing.assert_close(terms["target"], F.cross_entropy(main_t, batch["target_pseudo"], ignore_index=255))
    expected = terms["source"] + terms["target"] + 0.1 * (terms["source_aux"] + terms["target_aux"])
    torch.testing.assert_close(terms["loss"], expected)
    # All-ignored target labels contribute 0, not NaN.
    empty = model.losses({**batch, "target_pseudo": torch.full_like(batch["target_pseudo"], 255)})
    assert float(empty["target"].detach()) == 0 and torch.isfinite(empty["loss"])
    single = _model(multi_level=False)
    assert set(single.losses(batch)) == {"source", "target", "loss"}


def test_pseudo_labels_apply_the_rule_to_the_softmax_in_eval_mode():
    model = _model().train()
    images = model.example_batch(2, 32, torch.Generator().manual_seed(1))["target_images"]
    before = {name: value.clone() for name, value in model.state_dict().items()}
    labels = model.pseudo_labels(images)
    assert model.training  # mode restored, BatchNorm statistics untouched
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(images), 1)
    assert torch.equal(labels, esl_labels(probs, 0.1))
    assert torch.equal(model.pseudo_labels(images, rule="ssl"), ssl_labels(probs, 0.9))
    assert torch.equal(_model(rule="ssl").pseudo_labels(images), ssl_labels(probs, 0.9))
    assert (labels == 255).any() and (labels != 255).any()


def test_bad_method_input_is_refused_by_name():
    model = _model()
    batch = model.example_batch(2, 32)
    with pytest.raises(ValueError, match="masks"):
        model.losses({**batch, "masks": batch["masks"] + 10})
    with pytest.raises(TypeError, match="masks"):
        model.losses({**batch, "masks": batch["masks"].float()})
    with pytest.raises(ValueError, match="target_pseudo"):
        model.losses({**batch, "target_pseudo": batch["target_pseudo"][:, :16]})
    bad = batch["target_images"].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="target_images"):
        model.losses({**batch, "target_images": bad})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"images": batch["images"], "masks": batch["masks"]})
    with pytest.raises(ValueError, match="rule"):
        _model(rule="entropy")
    with pytest.raises(ValueError, match="rule"):
        model.pseudo_labels(batch["images"], rule="max")
    with pytest.raises(ValueError, match="images"):
        model.pseudo_labels(batch["images"][0])


def test_loss_falls_over_20_steps():
    model = _model().train()
    batch = model.example_batch(2, 32, torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = float(model.losses(batch)["loss"])
    train_losses(model, batch, lr=1e-2)
    with torch.no_grad():
        after = float(model.losses(batch)["loss"])
    assert after < 0.7 * before
