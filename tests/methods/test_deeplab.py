"""ASPP and the DeepLabv3+ decoder (python_models.heads.deeplab): torchvision's
parameter names (so its DeepLabv3 head weights load), shapes, the decoder's
wiring against a hand composition of its parts, and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from python_models.heads import ASPP, DeepLabV3PlusDecoder


# torchvision.models.segmentation.deeplabv3.DeepLabHead's "classifier.0." (ASPP) keys, in order,
# with their shapes for in_channels I and out_channels O.
def _torchvision_aspp_shapes(i: int, o: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"convs.0.0.weight": (o, i, 1, 1)}
    bn = lambda prefix: {f"{prefix}.weight": (o,), f"{prefix}.bias": (o,), f"{prefix}.running_mean": (o,),
                         f"{prefix}.running_var": (o,), f"{prefix}.num_batches_tracked": ()}
    shapes.update(bn("convs.0.1"))
    for k in (1, 2, 3):
        shapes[f"convs.{k}.0.weight"] = (o, i, 3, 3)
        shapes.update(bn(f"convs.{k}.1"))
    shapes["convs.4.1.weight"] = (o, i, 1, 1)
    shapes.update(bn("convs.4.2"))
    shapes["project.0.weight"] = (o, 5 * o, 1, 1)
    shapes.update(bn("project.1"))
    return shapes


def test_aspp_has_torchvision_names_and_loads_a_torchvision_state_dict():
    aspp = ASPP(24, 8)
    expected = _torchvision_aspp_shapes(24, 8)
    assert {k: tuple(v.shape) for k, v in aspp.state_dict().items()} == expected
    # a torchvision-style checkpoint (random values under torchvision's keys) loads strictly
    state = {f"classifier.0.{k}": (torch.randn(s) if s else torch.tensor(3)) for k, s in expected.items()}
    aspp.load_state_dict({k[len("classifier.0."):]: v for k, v in state.items() if k.startswith("classifier.0.")})
    assert torch.equal(aspp.convs[4][1].weight, state["classifier.0.convs.4.1.weight"])
    assert [m.dilation[0] for m in (aspp.convs[1][0], aspp.convs[2][0], aspp.convs[3][0])] == [6, 12, 18]
    assert aspp.convs[2][0].padding == (12, 12) and aspp.project[3].p == 0.5


def test_aspp_output_is_the_projection_of_the_five_branches():
    torch.manual_seed(0)
    aspp = ASPP(6, 4, rates=(1, 2, 3)).eval()
    x = torch.randn(2, 6, 5, 7)
    out = aspp(x)
    assert out.shape == (2, 4, 5, 7)
    pool_conv, pool_bn, pool_relu = aspp.convs[4][1], aspp.convs[4][2], aspp.convs[4][3]
    pooled = pool_relu(pool_bn(pool_conv(x.mean((2, 3), keepdim=True)))).expand(-1, -1, 5, 7)
    branches = [aspp.convs[k](x) for k in range(4)] + [pooled]
    assert torch.allclose(out, aspp.project(torch.cat(branches, 1)), atol=1e-6)


def test_decoder_shapes_and_wiring():
    torch.manual_seed(0)
    dec = DeepLabV3PlusDecoder(8, 32, 3, aspp_channels=16, decoder_channels=12).eval()
    low, high = torch.randn(2, 8, 8, 8), torch.randn(2, 32, 2, 2)
    logits = dec(low, high)
    assert logits.shape == (2, 3, 8, 8)
    assert dec(low, high, size=(32, 32)).shape == (2, 3, 32, 32)
    assert dec.reduce[0].out_channels == 48 and dec.fuse[0].in_channels == 16 + 48
    up = F.interpolate(dec.aspp(high), size=(8, 8), mode="bilinear", align_corners=False)
    manual = dec.classifier(dec.fuse(torch.cat([up, dec.reduce(low)], 1)))
    assert torch.allclose(logits, manual, atol=1e-6)
    assert torch.allclose(dec(low, high, size=(32, 32)),
                          F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False), atol=1e-6)
    three = DeepLabV3PlusDecoder(8, 32, 3, aspp_channels=16, classifier_kernel=3, classifier_bias=False)
    assert three.classifier.kernel_size == (3, 3) and three.classifier.bias is None


def test_bad_input_is_named():
    aspp = ASPP(6, 4)
    with pytest.raises(ValueError, match="features"):
        aspp(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="features"):
        aspp(torch.randn(6, 4, 4))
    with pytest.raises(TypeError, match="features"):
        aspp(torch.ones(2, 6, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="rates"):
        ASPP(6, 4, rates=(1, 2))
    with pytest.raises(TypeError, match="in_channels"):
        ASPP(6.0, 4)
    dec = DeepLabV3PlusDecoder(8, 32, 3, aspp_channels=16)
    with pytest.raises(ValueError, match="low"):
        dec(torch.randn(2, 7, 8, 8), torch.randn(2, 32, 2, 2))
    with pytest.raises(ValueError, match="batch"):
        dec(torch.randn(1, 8, 8, 8), torch.randn(2, 32, 2, 2))
    with pytest.raises(ValueError, match="classifier_kernel"):
        DeepLabV3PlusDecoder(8, 32, 3, classifier_kernel=2)
