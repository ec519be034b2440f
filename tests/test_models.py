"""Registry, architectures, channel pairs and spec-based rebuilding."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.models import (
    ChannelPair,
    create_like,
    create_model,
    list_models,
    model_info,
    spec_from_state_dict,
)
from crossdistill.models.cifar_resnet import BasicBlock

ALL = ["fashion_cnn", "resnet110", "resnet18", "resnet20", "resnet32", "resnet34", "resnet44", "resnet56", "vgg16"]


def test_list_models_has_every_builtin():
    assert set(ALL) <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_and_name(name):
    info = model_info(name)
    model = create_model(name).eval()
    assert model.crossdistill_name == name
    c, h, w = info.input_size
    if info.family == "imagenet_resnet":
        h = w = 64  # any size >= 32 works; keeps the test fast
    with torch.no_grad():
        out = model(torch.randn(2, c, h, w))
    assert out.shape == (2, info.num_classes)


def test_unknown_model_lists_known_names():
    with pytest.raises(CrossDistillError) as exc:
        create_model("resnet57")
    assert "resnet57" in str(exc.value) and "resnet56" in str(exc.value) and "fashion_cnn" in str(exc.value)
    with pytest.raises(CrossDistillError):
        model_info("nope")


def test_bad_constructor_args_are_user_errors():
    with pytest.raises(CrossDistillError, match="mid_channels"):
        create_model("resnet20", mid_channels=[16] * 8)
    with pytest.raises(CrossDistillError):
        create_model("vgg16", channels=[8] * 12)


def test_model_info():
    r = model_info("resnet56")
    assert (r.family, r.input_size, r.num_classes) == ("cifar_resnet", (3, 32, 32), 10)
    assert r.mean == (0.485, 0.456, 0.406) and r.std == (0.229, 0.224, 0.225)
    assert r.default_mu == 0.9
    assert model_info("vgg16").default_mu == 0.6 and model_info("vgg16").family == "vgg"
    f = model_info("fashion_cnn")
    assert (f.family, f.input_size, f.mean, f.std, f.default_mu) == ("small_cnn", (1, 28, 28), (0.2860,), (0.3530,), 0.6)
    i = model_info("resnet18")
    assert (i.family, i.input_size, i.num_classes) == ("imagenet_resnet", (3, 224, 224), 1000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.default_mu = 0.5  # type: ignore[misc]


def test_cifar_resnet_keys_match_reference_layout():
    sd = create_model("resnet20").state_dict()
    for k in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
              "layer1.0.conv2.weight", "layer3.2.bn2.bias", "linear.weight", "linear.bias"]:
        assert k in sd
    assert not any("shortcut" in k or "downsample" in k for k in sd)  # option A has no parameters
    # 97 tensors in the reference checkpoint (which predates num_batches_tracked).
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == 97
    assert sum(p.numel() for p in create_model("resnet20").parameters()) == 269_722
    assert sum(p.numel() for p in create_model("resnet56").parameters()) == 853_018


def test_option_a_shortcut_pads_channels():
    blk = BasicBlock(16, 32, stride=2, mid_planes=5)
    x = torch.randn(1, 16, 8, 8)
    sc = blk.shortcut(x)
    assert sc.shape == (1, 32, 4, 4)
    assert torch.equal(sc[:, 8:24], x[:, :, ::2, ::2])
    assert sc[:, :8].abs().sum() == 0 and sc[:, 24:].abs().sum() == 0
    assert torch.equal(BasicBlock(16, 16).shortcut(x), x)


def test_resnet_mid_channels_rebuild():
    mids = [3, 4, 5, 6, 7, 8, 9, 10, 11]
    m = create_model("resnet20", mid_channels=mids).eval()
    blocks = [m.get_submodule(f"layer{s}.{i}") for s in (1, 2, 3) for i in range(3)]
    for blk, mid, planes in zip(blocks, mids, [16] * 3 + [32] * 3 + [64] * 3):
        assert blk.conv1.out_channels == mid == blk.bn1.num_features == blk.conv2.in_channels
        assert blk.conv2.out_channels == planes
    assert m.spec() == {"num_classes": 10, "mid_channels": mids}
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert spec_from_state_dict("resnet20", m.state_dict()) == m.spec()
    assert create_model("resnet20", **m.spec()).spec() == m.spec()


def test_spec_follows_live_module_shapes():
    m = create_model("resnet20")
    blk = m.layer2[1]
    blk.conv1 = nn.Conv2d(32, 7, 3, padding=1, bias=False)
    blk.bn1 = nn.BatchNorm2d(7)
    blk.conv2 = nn.Conv2d(7, 32, 3, padding=1, bias=False)
    assert m.spec()["mid_channels"] == [16, 16, 16, 32, 7, 32, 64, 64, 64]
    clone = create_like(m)
    assert clone.crossdistill_name == "resnet20"
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_vgg_and_fashion_channels_rebuild():
    widths = [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    v = create_model("vgg16", channels=widths).eval()
    assert v.spec() == {"num_classes": 10, "channels": widths}
    assert v(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert spec_from_state_dict("vgg16", v.state_dict()) == v.spec()
    f = create_model("fashion_cnn", channels=[3, 4, 5], num_classes=7).eval()
    assert f.spec() == {"num_classes": 7, "channels": [3, 4, 5]}
    assert f(torch.randn(1, 1, 28, 28)).shape == (1, 7)
    assert spec_from_state_dict("fashion_cnn", f.state_dict()) == f.spec()


def test_imagenet_resnet_mid_channels_rebuild():
    mids = [8, 9, 10, 11, 12, 13, 14, 15]
    m = create_model("resnet18", mid_channels=mids, num_classes=5).eval()
    assert m.spec() == {"num_classes": 5, "mid_channels": mids}
    assert m.layer3[0].conv2.in_channels == 12 and m.layer3[0].conv2.out_channels == 256
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert spec_from_state_dict("resnet18", m.state_dict()) == m.spec()


@pytest.mark.parametrize("name,count", [("resnet20", 9), ("resnet56", 27), ("resnet110", 54), ("vgg16", 12),
                                        ("fashion_cnn", 2), ("resnet18", 8), ("resnet34", 16)])
def test_channel_pairs_are_consistent(name, count):
    m = create_model(name)
    pairs = m.channel_pairs()
    assert len(pairs) == count
    assert all(isinstance(p, ChannelPair) for p in pairs)
    for p in pairs:
        prod, cons = m.get_submodule(p.producer), m.get_submodule(p.consumer)
        assert isinstance(prod, nn.Conv2d) and isinstance(cons, nn.Conv2d)
        assert p.bn is not None
        bn = m.get_submodule(p.bn)
        assert isinstance(bn, nn.BatchNorm2d)
        assert prod.out_channels == bn.num_features == cons.in_channels


def test_channel_pair_names():
    assert create_model("resnet20").channel_pairs()[4] == ChannelPair("layer2.1.conv1", "layer2.1.bn1", "layer2.1.conv2")
    vgg_pairs = create_model("vgg16").channel_pairs()
    assert vgg_pairs[0] == ChannelPair("features.0", "features.1", "features.3")
    assert vgg_pairs[-1].consumer == "features.40"  # the last conv: its inputs pruned, its outputs kept
    assert [p.consumer for p in create_model("fashion_cnn").channel_pairs()] == ["conv2", "conv3"]


def test_slimmed_forward_matches_zeroed_teacher():
    # Removing channels whose consumer weights are zero must not change the output: checks that
    # channel_pairs names the right modules and that the forward uses them as declared.
    torch.manual_seed(0)
    m = create_model("fashion_cnn", channels=[6, 8, 10]).eval()
    keep = torch.tensor([0, 2, 5])
    with torch.no_grad():
        mask = torch.ones(6, dtype=torch.bool)
        mask[keep] = False
        m.conv2.weight[:, mask] = 0
    small = create_model("fashion_cnn", channels=[3, 8, 10]).eval()
    sd = m.state_dict()
    sd["conv1.weight"] = sd["conv1.weight"][keep]
    for k in ("weight", "bias", "running_mean", "running_var"):
        sd[f"bn1.{k}"] = sd[f"bn1.{k}"][keep]
    sd["conv2.weight"] = sd["conv2.weight"][:, keep]
    small.load_state_dict(sd)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(small(x), m(x))


def test_imagenet_resnet_matches_torchvision_layout():
    r18 = create_model("resnet18")
    params = dict(r18.named_parameters())
    assert len(params) == 62
    assert len(r18.state_dict()) == 122
    assert sum(p.numel() for p in params.values()) == 11_689_512
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.weight": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.bias": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.weight": (128,),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }
    for k, shape in expected.items():
        assert tuple(params[k].shape) == shape, k
    assert "layer2.0.downsample.1.running_var" in r18.state_dict()
    assert "layer1.0.downsample.0.weight" not in params
    r34 = create_model("resnet34")
    assert sum(p.numel() for p in r34.parameters()) == 21_797_672
    assert "layer3.5.conv2.weight" in r34.state_dict() and "layer4.2.bn2.bias" in r34.state_dict()


def test_fashion_cnn_forward_is_cheap():
    # The demo trains this model on CPU; guard against an accidental blow-up of its cost.
    from crossdistill.evaluation import count_flops

    assert count_flops(create_model("fashion_cnn"), (1, 28, 28)) < 5e6


def test_models_train_step_runs():
    m = create_model("resnet20", mid_channels=[2] * 9)
    loss = F.cross_entropy(m(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2]))
    loss.backward()
    assert m.layer1[0].conv1.weight.grad is not None
