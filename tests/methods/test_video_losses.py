"""The video methods' losses by hand: MAST's smooth-L1 of 20 x out vs 20 x
target, the colour cross-entropy with CorrFlow's 1e-8, their upsampling,
gradcheck and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread  # noqa: F401  (autouse)

from python_models.losses import colour_cross_entropy, lab_reconstruction_loss
from python_models.losses.video import scheduled_sampling_threshold


def test_lab_reconstruction_is_smooth_l1_of_twenty_times_the_values():
    pred = torch.tensor([0.0, 0.01, 0.5]).view(1, 1, 1, 3)
    target = torch.zeros(1, 1, 1, 3)
    # 20 x: 0, 0.2 (quadratic: 0.5 * 0.04) and 10 (linear: 10 - 0.5), averaged
    assert float(lab_reconstruction_loss(pred, target)) == pytest.approx((0.0 + 0.02 + 9.5) / 3)
    low = torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    full = torch.rand(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    up = F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(lab_reconstruction_loss(low, full), F.smooth_l1_loss(20 * up, 20 * full))


def test_colour_cross_entropy_by_hand():
    probs = torch.tensor([[0.7, 0.2], [0.3, 0.8]]).view(1, 2, 1, 2)  # K = 2 colours at two pixels
    target = torch.tensor([[[0, 1]]])
    expected = -(math.log(0.7 + 1e-8) + math.log(0.8 + 1e-8)) / 2
    assert float(colour_cross_entropy(probs, target)) == pytest.approx(expected)
    zero = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert float(colour_cross_entropy(zero, torch.tensor([[[1]]]))) == pytest.approx(-math.log(1e-8))


def test_losses_gradcheck():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(1, 1, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: lab_reconstruction_loss(p, target), (pred,))
    probs = torch.softmax(torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64), 1).requires_grad_()
    colours = torch.randint(0, 3, (1, 4, 4), generator=g)
    assert torch.autograd.gradcheck(lambda p: colour_cross_entropy(p, colours), (probs,))


def test_scheduled_sampling_threshold_is_clamped_to_the_schedule():
    assert scheduled_sampling_threshold(-5, 10) == 0.9 and scheduled_sampling_threshold(50, 10) == pytest.approx(0.6)
    assert scheduled_sampling_threshold(3, 4, start=1.0, end=0.0) == pytest.approx(0.25)


def test_bad_input_is_refused_by_name():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="pred"):
        lab_reconstruction_loss(x, torch.zeros(2, 2, 4, 4))
    with pytest.raises(TypeError, match="pred"):
        lab_reconstruction_loss(x.long(), x)
    with pytest.raises(ValueError, match="target"):
        lab_reconstruction_loss(x, torch.full((2, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="pred"):
        lab_reconstruction_loss(x[0], x)
    probs = torch.full((2, 3, 4, 4), 1 / 3)
    with pytest.raises(ValueError, match="target"):
        colour_cross_entropy(probs, torch.full((2, 4, 4), 3))
    with pytest.raises(TypeError, match="target"):
        colour_cross_entropy(probs, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="target"):
        colour_cross_entropy(probs, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="probs"):
        colour_cross_entropy(probs.clone().fill_(float("nan")), torch.zeros(2, 4, 4, dtype=torch.long))
