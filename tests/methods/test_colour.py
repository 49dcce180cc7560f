"""The video methods' colour blocks: Lab conversion against skimage.color,
MAST's normalisation, channel dropout, k-means colour centroids and the
quantisation against a brute-force nearest neighbour, with gradcheck and
bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_support import one_thread  # noqa: F401  (autouse)

from python_models.augment import colour
from python_models.augment.colour import (
    CORRFLOW_DROPOUT,
    ColourQuantizer,
    channel_dropout,
    colour_centroids,
    denormalize_lab,
    gamut_centroids,
    grayscale_lab,
    lab_to_rgb,
    normalize_lab,
    quantize_colours,
    rgb_to_lab,
)

skimage_color = pytest.importorskip("skimage.color")


def _images(seed=0, shape=(2, 3, 6, 7), dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _skimage_lab(images):
    return np.stack([skimage_color.rgb2lab(x.permute(1, 2, 0).numpy()) for x in images]).transpose(0, 3, 1, 2)


def test_rgb_to_lab_matches_skimage_including_dark_colours_and_the_corners():
    x = _images()
    x[0, :, 0, 0] = 0.0                              # black: the linear branches of gamma and f
    x[0, :, 0, 1] = torch.tensor([0.02, 0.01, 0.03])  # below the sRGB and Lab thresholds
    x[0, :, 0, 2] = 1.0                              # white: L 100, a = b = 0
    np.testing.assert_allclose(rgb_to_lab(x).numpy(), _skimage_lab(x), atol=1e-8)
    np.testing.assert_allclose(rgb_to_lab(x.float()).numpy(), _skimage_lab(x), atol=2e-3)
    white = rgb_to_lab(torch.ones(1, 3, 1, 1, dtype=torch.float64)).flatten()
    np.testing.assert_allclose(white.numpy(), [100.0, 0.0, 0.0], atol=1e-2)  # skimage's matrix: a, b ~ 5e-3


def test_lab_to_rgb_matches_skimage_and_inverts_rgb_to_lab():
    x = _images(1)
    lab = rgb_to_lab(x)
    expected = np.stack([skimage_color.lab2rgb(v.permute(1, 2, 0).numpy()) for v in lab]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(lab_to_rgb(lab).numpy(), expected, atol=1e-8)
    torch.testing.assert_close(lab_to_rgb(lab), x, atol=1e-10, rtol=0)
    clip = _images(2, (2, 4, 3, 5, 5))  # B x T x 3 x H x W works too
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(clip)), clip, atol=1e-10, rtol=0)


def test_mast_normalisation_maps_lab_to_the_unit_range():
    lab = torch.tensor([[0.0, 50.0, 100.0], [-127.0, 0.0, 127.0], [127.0, 0.0, -127.0]]).view(1, 3, 1, 3)
    out = normalize_lab(lab)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]]).view(1, 3, 1, 3))
    torch.testing.assert_close(denormalize_lab(out), lab)
    gray = grayscale_lab(torch.ones(1, 3, 2, 2))
    assert gray.shape == (1, 1, 2, 2)
    torch.testing.assert_close(gray, torch.ones(1, 1, 2, 2), atol=1e-4, rtol=0)  # L = 100 -> 100 / 50 - 1


def test_rgb_to_lab_gradcheck():
    x = (0.1 + 0.8 * _images(3, (1, 3, 3, 3))).requires_grad_()
    x.data[0, :, 0, 0] = torch.tensor([0.02, 0.03, 0.01], dtype=torch.float64)  # the linear branch too
    assert torch.autograd.gradcheck(rgb_to_lab, (x,))
    black = torch.zeros(1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    rgb_to_lab(black).sum().backward()
    assert torch.isfinite(black.grad).all()


def test_channel_dropout_draws_the_configured_channels_for_the_whole_clip():
    clip = _images(4, (2, 3, 3, 4, 4))
    seen = set()
    for seed in range(40):
        out, dropped = channel_dropout(clip, **CORRFLOW_DROPOUT, generator=torch.Generator().manual_seed(seed))
        seen.add(len(dropped))
        kept = [c for c in range(3) if c not in dropped]
        assert torch.all(out[:, :, list(dropped)] == 0)
        torch.testing.assert_close(out[:, :, kept], clip[:, :, kept] * 3 / (3 - len(dropped)))
    assert seen == {0, 1, 2}  # none (p 0.3), one or two channels
    same, none = channel_dropout(clip, keep_prob=1.0)
    assert none == () and torch.equal(same, clip) and same is not clip


def test_colour_centroids_recover_separated_clusters_and_quantisation_is_the_nearest_one():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-60.0, 40.0], [0.0, 0.0], [50.0, -30.0]])
    ab = centres[torch.randint(0, 3, (300,), generator=g)] + torch.randn(300, 2, generator=g)
    lab = torch.cat([torch.full((300, 1), 50.0), ab], 1).T.reshape(1, 3, 15, 20)
    found = colour_centroids(lab, k=3, generator=torch.Generator().manual_seed(1))
    order = found[:, 0].argsort()
    torch.testing.assert_close(found[order], centres, atol=0.5, rtol=0)
    index = quantize_colours(lab, found)
    brute = np.linalg.norm(ab.numpy()[:, None] - found.numpy()[None], axis=2).argmin(1).reshape(15, 20)
    assert index.shape == (1, 15, 20) and np.array_equal(index[0].numpy(), brute)


def test_colour_quantizer_starts_from_the_gamut_and_fits_training_frames():
    quantizer = ColourQuantizer(16)
    torch.testing.assert_close(quantizer.centroids, gamut_centroids(16))
    assert quantizer.centroids.shape == (16, 2) and "centroids" in quantizer.state_dict()
    frames = _images(5, (2, 3, 8, 8), torch.float32)
    index = quantizer(frames)
    assert index.shape == (2, 8, 8) and int(index.max()) < 16
    quantizer.fit(frames, generator=torch.Generator().manual_seed(0))
    expected = colour_centroids(rgb_to_lab(frames), 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(quantizer.centroids, expected)


def test_bad_input_is_refused_by_name():
    with pytest.raises(TypeError, match="images"):
        rgb_to_lab(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images"):
        rgb_to_lab(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="images"):
        rgb_to_lab(torch.zeros(0, 3, 2, 2))
    with pytest.raises(ValueError, match="images"):
        rgb_to_lab(torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(TypeError, match="lab"):
        lab_to_rgb([1, 2, 3])
    with pytest.raises(ValueError, match="channels"):
        channel_dropout(torch.zeros(1, 3, 2, 2), channels=(3,))
    with pytest.raises(ValueError, match="counts"):
        channel_dropout(torch.zeros(1, 3, 2, 2), channels=(0, 1, 2), counts=(3,))
    with pytest.raises(ValueError, match="keep_prob"):
        channel_dropout(torch.zeros(1, 3, 2, 2), keep_prob=1.5)
    with pytest.raises(ValueError, match="centroids"):
        quantize_colours(torch.zeros(1, 3, 2, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="k"):
        colour_centroids(torch.zeros(1, 3, 2, 2), k=5)
    with pytest.raises(ValueError, match="lab"):
        colour_centroids(torch.zeros(1, 5, 2, 2))
    assert colour.LAB_SCALE == (50.0, 127.0, 127.0)
