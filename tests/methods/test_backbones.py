"""Backbones: torchvision's layouts and names (so ImageNet weights load from a
local file), output strides, and the registry that methods build from."""

import pytest
import torch
from torch import nn

from python_models.backbones import BACKBONES, build_backbone, resnet50, resnet101, resnet_tiny, vgg16_largefov, vgg_tiny


def test_resnet_matches_torchvision_layout():
    model = resnet50(num_classes=1000)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's resnet50
    assert len(state) == 320
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.bias", "fc.weight"):
        assert key in state
    assert len(resnet101().state_dict()) == 318 + 17 * 18  # 17 more blocks of 3 convs and 3 batch norms
    assert sum(p.numel() for p in resnet101(num_classes=1000).parameters()) == 44_549_160  # torchvision's


def test_resnet_loads_a_torchvision_state_dict_from_a_file(tmp_path):
    source = resnet50(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet50.pth")
    target = resnet50(output_stride=8)
    assert target.load_torchvision(tmp_path / "resnet50.pth") == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(target.layer3[0].conv2.weight, source.layer3[0].conv2.weight)


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_resnet_output_stride_and_stages(stride):
    model = resnet_tiny(output_stride=stride).eval()
    stages = model.stages(torch.randn(1, 3, 64, 96))
    assert stages[-1].shape[-2:] == (64 // stride, 96 // stride)
    assert [s.shape[1] for s in stages] == list(model.stage_channels)
    torch.testing.assert_close(model(torch.zeros(1, 3, 64, 96)), model.stages(torch.zeros(1, 3, 64, 96))[-1])


def test_vgg_largefov_has_vgg16_convolutions_and_output_stride_8(tmp_path):
    model = vgg16_largefov()
    convs = {key: value for key, value in model.state_dict().items() if key.startswith("features.")}
    # torchvision's VGG-16 convolutions: 13 weights and 13 biases, 14,714,688 parameters.
    assert len(convs) == 26 and sum(v.numel() for v in convs.values()) == 14_714_688
    assert {"features.0.weight", "features.28.bias", "fc6.weight", "fc7.weight"} <= set(model.state_dict())
    assert model.fc6.dilation == (12, 12) and model.features[24].dilation == (2, 2)
    # 321 x 321 crops give SEC's 41 x 41 maps.
    tiny = vgg_tiny().eval()
    assert tiny(torch.zeros(1, 3, 321, 321)).shape[-2:] == (41, 41)
    assert [s.shape[1] for s in tiny.stages(torch.zeros(1, 3, 33, 33))] == list(tiny.stage_channels)
    # torchvision's file: its classifier is the only part left out.
    state = {**convs, "classifier.0.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "vgg16.pth")
    other = vgg16_largefov()
    assert other.load_torchvision(tmp_path / "vgg16.pth") == ["classifier.0.weight"]
    torch.testing.assert_close(other.features[28].weight, model.features[28].weight)


def test_build_backbone_resolves_names_tiny_and_modules():
    assert set(BACKBONES) >= {"resnet50", "resnet101", "resnet_tiny", "vgg16_largefov", "vgg_tiny"}
    assert build_backbone("tiny", tiny="vgg_tiny").out_channels == vgg_tiny().out_channels
    assert build_backbone("tiny", tiny="resnet_tiny", output_stride=16).output_stride == 16
    module = resnet_tiny()
    assert build_backbone(module, tiny="resnet_tiny") is module
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet7", tiny="resnet_tiny")
    with pytest.raises(TypeError, match="backbone"):
        build_backbone(3, tiny="resnet_tiny")
    with pytest.raises(TypeError, match="out_channels"):
        build_backbone(nn.Identity(), tiny="resnet_tiny")
