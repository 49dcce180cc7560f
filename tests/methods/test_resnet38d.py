"""ResNet-38 ("resnet38d", PSA / SEAM / 1-stage-wseg): PSA's layout (parameter
count from the architecture, every key name), output stride 8 and stage
shapes, blocks against a functional oracle, loading PSA-named weights from a
local file (and the MXNet renaming), the frozen regime, the tiny variant, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from python_models.backbones import BACKBONES, ResNet38d, build_backbone, convert_mxnet_names, resnet38d, resnet38d_tiny
from python_models.backbones.resnet38d import ResBlock, ResBlockBottleneck

# PSA network/resnet38d.py: block name -> (in, mid, out, stride, first dilation, dilation) for ResBlock,
# (in, out, dilation) for ResBlock_bot.
PSA_PLAIN = {
    "b2": (64, 128, 128, 2, 1, 1), "b2_1": (128, 128, 128, 1, 1, 1), "b2_2": (128, 128, 128, 1, 1, 1),
    "b3": (128, 256, 256, 2, 1, 1), "b3_1": (256, 256, 256, 1, 1, 1), "b3_2": (256, 256, 256, 1, 1, 1),
    "b4": (256, 512, 512, 2, 1, 1), "b4_1": (512, 512, 512, 1, 1, 1), "b4_2": (512, 512, 512, 1, 1, 1),
    "b4_3": (512, 512, 512, 1, 1, 1), "b4_4": (512, 512, 512, 1, 1, 1), "b4_5": (512, 512, 512, 1, 1, 1),
    "b5": (512, 512, 1024, 1, 1, 2), "b5_1": (1024, 512, 1024, 1, 2, 2), "b5_2": (1024, 512, 1024, 1, 2, 2),
}
PSA_BOTTLENECK = {"b6": (1024, 2048, 4), "b7": (2048, 4096, 4)}


def _bn_keys(prefix):
    return [f"{prefix}.{leaf}" for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _psa_keys():
    keys = ["conv1a.weight"]
    for name, (cin, _, cout, stride, _, _) in PSA_PLAIN.items():
        keys += _bn_keys(f"{name}.bn_branch2a") + [f"{name}.conv_branch2a.weight"]
        keys += _bn_keys(f"{name}.bn_branch2b1") + [f"{name}.conv_branch2b1.weight"]
        if cin != cout or stride != 1:
            keys.append(f"{name}.conv_branch1.weight")
    for name in PSA_BOTTLENECK:
        for sub in ("2a", "2b1", "2b2"):
            keys += _bn_keys(f"{name}.bn_branch{sub}") + [f"{name}.conv_branch{sub}.weight"]
        keys.append(f"{name}.conv_branch1.weight")
    return keys + _bn_keys("bn7")


def _psa_parameter_count():
    total = 3 * 64 * 9  # conv1a
    for cin, mid, cout, stride, _, _ in PSA_PLAIN.values():
        total += 2 * cin + cin * mid * 9 + 2 * mid + mid * cout * 9
        total += cin * cout if (cin != cout or stride != 1) else 0
    for cin, cout, _ in PSA_BOTTLENECK.values():
        q, h = cout // 4, cout // 2
        total += 2 * cin + cin * q + 2 * q + q * h * 9 + 2 * h + h * cout + cin * cout
    return total + 2 * 4096  # bn7


def _meta_resnet38d():
    with torch.device("meta"):
        return resnet38d()


def _tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return resnet38d_tiny(**kwargs)


# ---------------------------------------------------------------- PSA's layout


def test_parameter_count_is_psas_architecture():
    net = _meta_resnet38d()
    assert _psa_parameter_count() == 105_070_912
    assert sum(p.numel() for p in net.parameters()) == 105_070_912
    # PSA's converted checkpoint drops linear1000 (4096 x 1000 + 1000).
    assert sum(p.numel() for p in net.parameters()) + 4096 * 1000 + 1000 == 109_167_912


def test_state_dict_keys_and_shapes_are_psas():
    state = _meta_resnet38d().state_dict()
    assert list(state) == _psa_keys()
    assert len(state) == 228
    assert tuple(state["conv1a.weight"].shape) == (64, 3, 3, 3)
    for name, (cin, mid, cout, stride, first, dilation) in PSA_PLAIN.items():
        assert tuple(state[f"{name}.conv_branch2a.weight"].shape) == (mid, cin, 3, 3)
        assert tuple(state[f"{name}.conv_branch2b1.weight"].shape) == (cout, mid, 3, 3)
    assert tuple(state["b6.conv_branch2a.weight"].shape) == (512, 1024, 1, 1)
    assert tuple(state["b6.conv_branch2b1.weight"].shape) == (1024, 512, 3, 3)
    assert tuple(state["b6.conv_branch2b2.weight"].shape) == (2048, 1024, 1, 1)
    assert tuple(state["b7.conv_branch2b2.weight"].shape) == (4096, 2048, 1, 1)
    assert tuple(state["b7.conv_branch1.weight"].shape) == (4096, 2048, 1, 1)
    assert tuple(state["bn7.running_var"].shape) == (4096,)


def test_strides_dilations_and_dropout_are_psas():
    net = _meta_resnet38d()
    assert net.conv1a.stride == (1, 1) and net.conv1a.padding == (1, 1)
    for name, (_, _, _, stride, first, dilation) in PSA_PLAIN.items():
        block = getattr(net, name)
        assert block.conv_branch2a.stride == (stride, stride)
        assert block.conv_branch2a.dilation == (first, first) and block.conv_branch2a.padding == (first, first)
        assert block.conv_branch2b1.dilation == (dilation, dilation)
    for name, p in (("b6", 0.3), ("b7", 0.5)):
        block = getattr(net, name)
        assert block.conv_branch2b1.dilation == (4, 4) and block.conv_branch2b1.padding == (4, 4)
        assert block.dropout_2b1.p == p and block.dropout_2b2.p == p
    assert net.block_names == tuple(PSA_PLAIN) + ("b6", "b7")
    assert (net.out_channels, net.stage_channels, net.output_stride) == (4096, (256, 512, 1024, 4096), 8)
    assert net.stage_strides == (4, 8, 8, 8)


def test_full_network_shapes_at_stride_8():
    torch.manual_seed(0)
    net = resnet38d().eval()
    with torch.no_grad():
        maps = net.stages(torch.randn(1, 3, 24, 20))
    assert [tuple(m.shape) for m in maps] == [(1, 256, 6, 5), (1, 512, 3, 3), (1, 1024, 3, 3), (1, 4096, 3, 3)]


# ---------------------------------------------------------------- stages and blocks


@pytest.mark.parametrize("size, expected", [((32, 32), (4, 4)), ((33, 17), (5, 3)), ((8, 8), (1, 1))])
def test_tiny_output_stride_8(size, expected):
    net = _tiny().eval()
    x = torch.randn(2, 3, *size)
    out = net(x)
    assert out.shape == (2, 256, *expected) and net.out_channels == 256
    maps = net.stages(x)
    assert [m.shape[1] for m in maps] == list(net.stage_channels) == [16, 32, 64, 256]
    assert maps[0].shape[2:] == tuple(math.ceil(s / 4) for s in size)
    assert all(m.shape[2:] == expected for m in maps[1:])
    torch.testing.assert_close(maps[-1], out)
    assert list(net.forward_as_dict(x)) == ["conv3", "conv4", "conv5", "conv6"]


def test_tiny_layout():
    net = _tiny()
    assert net.block_names == ("b2", "b3", "b4", "b5", "b6", "b7")
    assert {name for name, _ in net.named_children()} == {"conv1a", "b2", "b3", "b4", "b5", "b6", "b7", "bn7"}
    assert sum(p.numel() for p in net.parameters()) < 300_000
    assert BACKBONES["resnet38d_tiny"][0] is resnet38d_tiny and BACKBONES["resnet38d"][0] is resnet38d
    assert isinstance(build_backbone("tiny", tiny="resnet38d_tiny", output_stride=8), ResNet38d)


def test_stage_maps_are_conv3_and_the_preactivated_inputs_of_b5_b6():
    net = _tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    seen = {}
    for name in ("b3", "b4", "b5", "b6", "b7"):
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: (i[0], o)}))
    conv3, conv4, conv5, conv6 = net.stages(x)
    torch.testing.assert_close(conv3, seen["b3"][1])  # 1-stage-wseg's conv3: b3's output
    torch.testing.assert_close(conv4, F.relu(net.b5.bn_branch2a(seen["b5"][0])))
    torch.testing.assert_close(conv5, F.relu(net.b6.bn_branch2a(seen["b6"][0])))
    torch.testing.assert_close(seen["b5"][1][1], conv4)  # return_input=True through __call__
    torch.testing.assert_close(conv6, F.relu(net.bn7(seen["b7"][1])))
    assert (conv3 < 0).any() and (conv4 >= 0).all() and (conv5 >= 0).all() and (conv6 >= 0).all()


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _randomize_bn(module, generator):
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator))
            bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.randn(n, generator=generator))
            bn.bias.data.copy_(torch.randn(n, generator=generator))


@pytest.mark.parametrize("cin, mid, cout, stride, first, dilation", [(4, 6, 8, 2, 1, 1), (8, 4, 8, 1, 2, 2),
                                                                     (4, 4, 8, 1, 1, 2)])
def test_resblock_matches_a_functional_oracle(cin, mid, cout, stride, first, dilation):
    g = torch.Generator().manual_seed(1)
    block = ResBlock(cin, mid, cout, stride, first, dilation).eval()
    with torch.no_grad():
        _randomize_bn(block, g)
    x = torch.randn(2, cin, 9, 9, generator=g)
    a = F.relu(_bn(x, block.bn_branch2a))
    b = F.conv2d(a, block.conv_branch2a.weight, stride=stride, padding=first, dilation=first)
    b = F.conv2d(F.relu(_bn(b, block.bn_branch2b1)), block.conv_branch2b1.weight, padding=dilation, dilation=dilation)
    shortcut = x if (cin == cout and stride == 1) else F.conv2d(a, block.conv_branch1.weight, stride=stride)
    assert (block.conv_branch1 is None) == (cin == cout and stride == 1)
    out, activated = block(x, return_input=True)
    torch.testing.assert_close(out, shortcut + b)
    torch.testing.assert_close(activated, a)


def test_bottleneck_matches_a_functional_oracle():
    g = torch.Generator().manual_seed(2)
    block = ResBlockBottleneck(8, 16, dilation=4, dropout=0.3).eval()
    with torch.no_grad():
        _randomize_bn(block, g)
    x = torch.randn(2, 8, 10, 10, generator=g)
    a = F.relu(_bn(x, block.bn_branch2a))
    b = F.conv2d(a, block.conv_branch2a.weight)
    b = F.conv2d(F.relu(_bn(b, block.bn_branch2b1)), block.conv_branch2b1.weight, padding=4, dilation=4)
    b = F.conv2d(F.relu(_bn(b, block.bn_branch2b2)), block.conv_branch2b2.weight)
    torch.testing.assert_close(block(x), F.conv2d(a, block.conv_branch1.weight) + b)
    torch.testing.assert_close(block(x, return_input=True)[1], a)
    assert block.conv_branch2b1.weight.shape == (8, 4, 3, 3)


def test_dropout_only_in_train_mode():
    net = _tiny()
    x = torch.randn(2, 3, 16, 16)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


# ---------------------------------------------------------------- weights


def test_load_pretrained_roundtrip(tmp_path):
    source = _tiny(seed=1).eval()
    with torch.no_grad():
        _randomize_bn(source, torch.Generator().manual_seed(3))
    path = tmp_path / "resnet38d_tiny.pth"
    torch.save(source.state_dict(), path)
    target = _tiny(seed=2)
    assert target.load_pretrained(path) == []
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(target.eval()(x), source(x))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_pretrained_from_psa_style_conversion(tmp_path):
    # What PSA's convert_mxnet_to_torch writes: no num_batches_tracked, no linear1000.
    source = _tiny(seed=1)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "psa.pth"
    torch.save({**state, "fc8.weight": torch.zeros(3, 256, 1, 1)}, path)
    target = _tiny(seed=2)
    assert target.load_pretrained(path) == ["fc8.weight"]
    assert torch.equal(target.b7.conv_branch2b2.weight, source.b7.conv_branch2b2.weight)


def test_load_pretrained_rejects_missing_and_misshaped(tmp_path):
    state = _tiny().state_dict()
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("b7.")}, missing)
    with pytest.raises(ValueError, match="lacks"):
        _tiny().load_pretrained(missing)
    wrong = tmp_path / "wrong.pth"
    torch.save({**state, "conv1a.weight": torch.zeros(4, 3, 5, 5)}, wrong)
    with pytest.raises(ValueError, match="conv1a.weight"):
        _tiny().load_pretrained(wrong)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(TypeError, match="state dict"):
        _tiny().load_pretrained(tensor)


def _mxnet_keys(name):
    """The MXNet checkpoint's names (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``) for a PSA key."""
    if name == "conv1a.weight":
        return "arg:conv1a_weight"
    bn_leaf = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
    if name.startswith("bn7."):
        leaf = name.split(".")[1]
        return ("aux:" if "running" in leaf else "arg:") + "bn7_" + bn_leaf[leaf]
    block, layer, leaf = name.split(".")
    group, _, index = block[1:].partition("_")
    suffix = f"{group}a" if not index else f"{group}b{index}"
    kind, branch = layer.split("_", 1)
    if kind == "conv":
        return f"arg:res{suffix}_{branch}_weight"
    return ("aux:" if "running" in leaf else "arg:") + f"bn{suffix}_{branch}_{bn_leaf[leaf]}"


def test_convert_mxnet_names_gives_psas_keys(tmp_path):
    keys = [k for k in _psa_keys() if not k.endswith("num_batches_tracked")]
    assert _mxnet_keys("b4_5.bn_branch2b1.running_var") == "aux:bn4b5_branch2b1_moving_var"
    params = {_mxnet_keys(k): torch.full((1,), float(i)) for i, k in enumerate(keys)}
    params["arg:linear1000_weight"] = torch.zeros(1)
    params["arg:linear1000_bias"] = torch.zeros(1)
    renamed = convert_mxnet_names(params)
    assert sorted(renamed) == sorted(keys)
    assert all(renamed[k].item() == i for i, k in enumerate(keys))
    # A tiny network's tensors under their MXNet names load after the renaming.
    source = _tiny(seed=1)
    mx = {_mxnet_keys(k): v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "converted.pth"
    torch.save(convert_mxnet_names(mx), path)
    target = _tiny(seed=2)
    assert target.load_pretrained(path) == []
    assert torch.equal(target.b5.bn_branch2b1.running_var, source.b5.bn_branch2b1.running_var)
    with pytest.raises(ValueError, match="params"):
        convert_mxnet_names({"arg:fc8_weight": torch.zeros(1)})


# ---------------------------------------------------------------- frozen regime


def test_freeze_keeps_batchnorm_in_eval_and_fixes_parameters():
    net = _tiny()
    net.freeze(("conv1a", "b2"))
    net.train()
    assert net.training and all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not net.conv1a.weight.requires_grad and not net.b2.conv_branch2a.weight.requires_grad
    assert not net.b3.bn_branch2a.weight.requires_grad and net.b3.conv_branch2a.weight.requires_grad
    before = net.b4.bn_branch2a.running_mean.clone()
    net(torch.randn(2, 3, 16, 16))
    assert torch.equal(net.b4.bn_branch2a.running_mean, before)
    unfrozen = _tiny().train()
    unfrozen(torch.randn(2, 3, 16, 16))
    assert not torch.equal(unfrozen.b4.bn_branch2a.running_mean, before)
    with pytest.raises(ValueError, match="modules"):
        net.freeze(("b9",))


# ---------------------------------------------------------------- bad input


def test_bad_input():
    net = _tiny()
    with pytest.raises(ValueError, match="x"):
        net(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="x"):
        net.stages(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="output_stride"):
        resnet38d_tiny(output_stride=16)
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("resnet38d_tiny", tiny="resnet_tiny", output_stride=16)
    with pytest.raises(ValueError, match="width"):
        ResNet38d(width=0)
    with pytest.raises(ValueError, match="blocks"):
        ResNet38d(width=2, blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="bottleneck"):
        ResBlockBottleneck(8, 8)
