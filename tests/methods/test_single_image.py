"""Single-image self-supervision (Asano et al., ICLR 2020): crops of one image,
reproducible from the seed, inside the image, with the published defaults,
and usable by a method."""

from __future__ import annotations

import pytest
import torch
from method_support import one_thread  # noqa: F401  (autouse: torch on one thread)

from python_models.data import SINGLE_IMAGE_CROPS, SingleImageCrops, color_jitter


def _image() -> torch.Tensor:
    return torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))


def test_defaults_are_the_published_values():
    # yukimasano/single_img_pretraining make_dataset_single.py: --num_imgs 1281167, --img_size 256,
    # --initcrop 0.5, --scale 500 1 (inverted), --deg 30, --shear 30, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.5
    d = SingleImageCrops(_image())
    assert SINGLE_IMAGE_CROPS == 1_281_167 and len(d) == 1_281_167
    assert (d.size, d.initial_crop, d.scale, d.ratio, d.degrees, d.shear) == (256, 0.5, (1 / 500, 1.0),
                                                                              (3 / 4, 4 / 3), 30.0, 30.0)
    assert (d.jitter, d.jitter_p, d.flip_p) == ((0.4, 0.4, 0.4, 0.1), 0.5, 0.5)


def test_crops_are_reproducible_from_the_seed_and_independent_of_access_order():
    d = SingleImageCrops(_image(), num_crops=50, size=16, seed=3)
    first = [d[i] for i in (7, 2, 7)]
    assert torch.equal(first[0], first[2])
    assert torch.equal(SingleImageCrops(_image(), num_crops=50, size=16, seed=3)[2], first[1])
    assert not torch.equal(SingleImageCrops(_image(), num_crops=50, size=16, seed=4)[2], first[1])
    assert not torch.equal(d[1], d[2])
    assert torch.equal(d[-1], d[49])
    with pytest.raises(IndexError):
        d[50]


def test_crops_lie_inside_the_image_and_have_the_output_size():
    image = _image()
    d = SingleImageCrops(image, num_crops=200, size=12, seed=0)
    flips = 0
    for i in range(200):
        p = d.params(i)
        top, left, h, w = p["box"]
        assert 0 <= top and 0 <= left and top + h <= 40 and left + w <= 56 and h >= 1 and w >= 1
        it, il, ih, iw = p["initial_box"]
        assert ih == iw == 20 and top >= it and left >= il and top + h <= it + ih and left + w <= il + iw
        assert abs(p["angle"]) <= 30 and abs(p["shear"]) <= 30
        flips += p["flip"]
    assert 60 < flips < 140
    x = d[0]
    assert x.shape == (3, 12, 12) and float(x.min()) >= 0 and float(x.max()) <= 1


def test_a_plain_crop_is_the_resized_box():
    image = _image()
    d = SingleImageCrops(image, num_crops=4, size=10, initial_crop=None, degrees=0, shear=0, flip_p=0,
                         jitter_p=0)
    p = d.params(1)
    top, left, h, w = p["box"]
    big = int(2 ** 0.5 * 10)
    full = torch.nn.functional.interpolate(image[None, :, top:top + h, left:left + w], size=(big, big),
                                           mode="bilinear", align_corners=False)[0]
    offset = (big - 10) // 2
    torch.testing.assert_close(d[1], full[:, offset:offset + 10, offset:offset + 10].clamp(0, 1))


def test_color_jitter_factors():
    x = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(color_jitter(x, 0.5, 1.0, 1.0, 0.0), x * 0.5)
    grey = color_jitter(x, 1.0, 1.0, 0.0, 0.0)
    torch.testing.assert_close(grey[0], grey[1])  # saturation 0: grey
    shifted = color_jitter(x, 1.0, 1.0, 1.0, 0.5)
    back = color_jitter(shifted, 1.0, 1.0, 1.0, 0.5)  # two half turns of hue: the image again
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)


def test_views_feed_a_method():
    import python_models
    d = SingleImageCrops(_image(), num_crops=8, size=32, views=2)
    a, b = d[0]
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    torch.manual_seed(0)
    model = python_models.create("mae", backbone="tiny", decoder_dim=16, decoder_depth=1, decoder_heads=2)
    loss = model.losses({"images": torch.stack([d[i][0] for i in range(2)])})["loss"]
    assert torch.isfinite(loss) and loss.requires_grad


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="image"):
        SingleImageCrops(torch.rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="image"):
        SingleImageCrops((torch.rand(3, 8, 8) * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        SingleImageCrops(_image(), scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="flip_p"):
        SingleImageCrops(_image(), flip_p=2.0)
