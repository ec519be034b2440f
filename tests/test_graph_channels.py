"""Channel groups from the traced graph (Torch-Pruning + checked index maps) and the slimming.

The central property: slimming a group must compute exactly what the unslimmed model computes
once every consumer's inputs from the dropped channels are zeroed (`mask_groups`). A wrong
index map anywhere (concat offsets, a shuffle, a flatten) breaks it.
"""
from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.compression import graph_trace
from crossdistill.compression.channels import slim_channels
from crossdistill.compression.graph_channels import ChannelGroup, channel_groups, mask_groups, slim_groups
from crossdistill.errors import CrossDistillError
from crossdistill.models import create_model


def cbr(i: int, o: int, k: int = 3, s: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o), nn.ReLU()]


class Chain(nn.Module):
    """conv-BN-ReLU x3, flatten of a 4x4 map into a Linear, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*cbr(3, 8), *cbr(8, 12), *cbr(12, 16, s=2))
        self.fc1 = nn.Linear(16 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.features(x).flatten(1))))


class Block(nn.Module):
    def __init__(self, i: int, o: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o)
        self.conv2, self.bn2 = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
        self.down = None
        if stride != 1 or i != o:
            self.down = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*cbr(3, 8))
        self.block1, self.block2 = Block(8, 8), Block(8, 16, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.block2(self.block1(self.stem(x))), 1).flatten(1))


class Dense(nn.Module):
    def __init__(self, i: int, growth: int) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(i), nn.Conv2d(i, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(F.relu(self.bn(x))), x], 1)


class DenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*cbr(3, 8))
        self.dense1, self.dense2 = Dense(8, 4), Dense(12, 4)
        self.trans = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2))
        self.head_bn, self.fc = nn.BatchNorm2d(8), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans(self.dense2(self.dense1(self.stem(x))))
        return self.fc(F.relu(self.head_bn(x)).mean((2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape  # as torchvision's ShuffleNetV2
    x = torch.transpose(x.view(b, groups, c // groups, h, w), 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, i: int, o: int, stride: int) -> None:
        super().__init__()
        half = o // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(i, i, 3, stride, 1, groups=i, bias=False), nn.BatchNorm2d(i), *cbr(i, half, k=1))
        self.branch2 = nn.Sequential(
            *cbr(i if stride > 1 else half, half, k=1),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            *cbr(half, half, k=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*cbr(3, 8))
        self.stage = nn.Sequential(ShuffleBlock(8, 16, 2), ShuffleBlock(16, 16, 1), ShuffleBlock(16, 16, 1))
        self.last = nn.Sequential(*cbr(16, 24, k=1))
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.last(self.stage(self.stem(x))).mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, i: int, o: int, stride: int, expand: int) -> None:
        super().__init__()
        h = i * expand
        self.res = stride == 1 and i == o
        self.conv = nn.Sequential(
            nn.Conv2d(i, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, o, 1, bias=False), nn.BatchNorm2d(o))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.res else self.conv(x)


class MobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*cbr(3, 8))
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 1, 4), InvertedResidual(8, 12, 2, 4), InvertedResidual(12, 12, 1, 4))
        self.last = nn.Sequential(*cbr(12, 16, k=1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.last(self.blocks(self.stem(x))), 1).flatten(1))


class Grouped(nn.Module):
    """groups=2 then groups=4 convs; the head flattens a 2x2 map into the Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*cbr(3, 8), *cbr(8, 16, groups=2), *cbr(16, 16, groups=4), *cbr(16, 8, k=1))
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 2).flatten(1))


class GroupedCat(nn.Module):
    """Two convs concatenated into a groups=2 conv: each feeds one conv group, so their
    channels go in pairs across two Torch-Pruning groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Sequential(*cbr(3, 4)), nn.Sequential(*cbr(3, 4))
        self.g, self.fc = nn.Sequential(*cbr(8, 8, groups=2)), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.g(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean(x))))): fc2 writes the channels it scales."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(*cbr(3, 12))
        self.fc1, self.fc2 = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.shuffle = nn.ChannelShuffle(3)  # the native op, not the view/transpose pattern
        self.c, self.fc = nn.Sequential(*cbr(12, 6)), nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(h.mean((2, 3), keepdim=True)))))
        return self.fc(self.c(self.shuffle(h * w)).mean((2, 3)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.embed(x)).mean(1))


class Signal(nn.Module):
    """A Conv1d model on (N, C, L) signals: strided, 'same' with an even kernel, dilated and
    grouped convs, a residual add, a concatenation, 1-d pooling (unsqueeze/squeeze around 2-d
    pooling inside torch) and a flatten of a length-2 map into the Linear."""

    def __init__(self) -> None:
        super().__init__()
        def c(i: int, o: int, k: int, **kw) -> list[nn.Module]:
            return [nn.Conv1d(i, o, k, bias=False, **kw), nn.BatchNorm1d(o), nn.ReLU()]
        self.stem = nn.Sequential(*c(2, 8, 5, stride=2, padding=2))
        self.a = nn.Sequential(*c(8, 8, 4, padding="same"), *c(8, 8, 3, padding=2, dilation=2))
        self.b = nn.Sequential(*c(8, 8, 1), nn.MaxPool1d(2))
        self.g = nn.Sequential(*c(16, 12, 3, padding=1, groups=2), nn.AvgPool1d(2))
        self.fc = nn.Linear(12 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.a(h)
        h = torch.cat([F.max_pool1d(h, 2), self.b(h)], 1)
        return self.fc(F.adaptive_avg_pool1d(self.g(h), 2).flatten(1))


class ConvTokens(nn.Module):
    """Conv1d front then a transformer over the (N, L, C) transpose: 3-d tensors of both
    layouts in one model, so a 3-d op's channel axis is unknown (a barrier), never guessed."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 16, 3, padding=1)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(F.relu(self.bn1(self.c1(x)))).transpose(1, 2)
        return self.head(self.enc(h).mean(1))


class ConvLSTM(nn.Module):
    """Conv1d layers, then an LSTM over the (N, L, C) transpose: both 3-d layouts in one model, so
    each op's channel axis comes from the layers its tensors come from. Negative dims throughout
    (torch saves dim -1 as 2**64 - 1), a chunk swapped back by a cat, 1-d max pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.c2, self.bn2 = nn.Conv1d(8, 12, 3, padding=1), nn.BatchNorm1d(12)
        self.c3 = nn.Conv1d(12, 6, 1)
        self.lstm = nn.LSTM(6, 5, batch_first=True)
        self.head = nn.Linear(12 + 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool1d(F.relu(self.bn1(self.c1(x))), 2)
        a, b = h.chunk(2, dim=-2)
        h = F.relu(self.bn2(self.c2(torch.cat([b, a], dim=-2))))
        pooled = h.max(-1).values
        r, _ = self.lstm(F.relu(self.c3(h)).transpose(1, 2))
        return self.head(torch.cat([pooled, r[:, -1]], -1))


MODELS = {
    "chain": (Chain, (2, 3, 8, 8)),
    "resnet": (ResNet, (2, 3, 8, 8)),
    "densenet": (DenseNet, (2, 3, 8, 8)),
    "shufflenet": (ShuffleNet, (2, 3, 8, 8)),
    "mobilenet": (MobileNet, (2, 3, 8, 8)),
    "grouped": (Grouped, (2, 3, 8, 8)),
    "grouped_cat": (GroupedCat, (2, 3, 8, 8)),
    "se_shuffle": (SqueezeExcite, (2, 3, 8, 8)),
    "transformer": (Encoder, (2, 5, 6)),
    "conv1d": (Signal, (2, 2, 32)),
    "conv_tokens": (ConvTokens, (2, 3, 10)),
    "conv_lstm": (ConvLSTM, (2, 3, 16)),
}


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so that no BN is the identity; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def build(key: str) -> tuple[nn.Module, torch.Tensor]:
    cls, shape = MODELS[key]
    torch.manual_seed(1)
    return randomised(cls()), torch.randn(shape)


def half_kept(groups: list[ChannelGroup], seed: int = 0) -> dict[int, list[int]]:
    rng = random.Random(seed)
    return {g.id: sorted(rng.sample(range(g.width), max(1, g.width // 2))) for g in groups if g.prunable}


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item() / b.abs().max().item()
    assert err <= rtol, f"relative error {err:.2e}"


def by_producer(groups: list[ChannelGroup], name: str) -> ChannelGroup:
    return next(g for g in groups if name in [p.name for p in g.producers])


# -- every synthetic architecture ----------------------------------------------------------------

@pytest.mark.parametrize("key", list(MODELS))
def test_groups_cover_channels_once(key):
    model, x = build(key)
    groups = channel_groups(model, x)
    assert [g.id for g in groups] == list(range(len(groups)))
    assert any(g.prunable for g in groups)
    seen: set[tuple[str, int]] = set()
    for g in groups:
        assert g.prunable == (g.reason == "")
        for lc in g.producers:
            assert len(lc.channels) == g.width
            chans = [(lc.name, c) for unit in lc.channels for c in unit]
            assert len(set(chans)) == len(chans) and not seen & set(chans), "an output channel in two places"
            seen |= set(chans)
    # Every output channel of every conv/linear the forward runs is in exactly one group (the
    # attention's out_proj is a Linear that MultiheadAttention never calls as a module).
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)) and not name.endswith("out_proj"):
            n = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
            assert {(name, c) for c in range(n)} <= seen, name


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_slimmed_equals_masked(key, seed):
    model, x = build(key)
    groups = channel_groups(model, x)
    kept = half_kept(groups, seed)
    masked = mask_groups(model, groups, kept)
    slim = slim_groups(copy.deepcopy(model), x, kept)  # its own masked check must pass too
    assert params(slim) < params(model)
    with torch.no_grad():
        assert_close(slim(x), masked(x))
        assert not torch.allclose(masked(x), model(x)), "masking changed nothing: test is vacuous"


@pytest.mark.parametrize("key", list(MODELS))
def test_keep_everything_changes_nothing(key):
    model, x = build(key)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y = model(x)
    groups = channel_groups(model, x)
    out = slim_groups(model, x, {g.id: range(g.width) for g in groups if g.prunable})
    assert out is model and model.training is False
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(x), y)


def test_slim_checks_itself_and_regroups():
    model, x = build("shufflenet")
    kept = half_kept(channel_groups(model, x))
    slim_groups(model, x, kept)  # check=True: compared with the masked model inside
    again = channel_groups(model, x)  # the slimmed model still traces and groups
    assert sum(g.width for g in again) < sum(g.width for g in channel_groups(build("shufflenet")[0], x))


# -- what each structure does to the groups -------------------------------------------------------

def test_residual_add_couples_block_outputs():
    model, x = build("resnet")
    groups = channel_groups(model, x)
    stem = by_producer(groups, "stem.0")
    assert [p.name for p in stem.producers] == ["stem.0", "block1.conv2"]
    assert {c.name for c in stem.consumers} == {"block1.conv1", "block2.conv1", "block2.down.0"}
    out2 = by_producer(groups, "block2.conv2")
    assert [p.name for p in out2.producers] == ["block2.conv2", "block2.down.0"] and out2.prunable
    assert by_producer(groups, "fc").reason == "reaches the model output"


def test_concat_offsets():
    model, x = build("densenet")
    groups = channel_groups(model, x)
    stem = by_producer(groups, "stem.0")
    maps = {c.name: c.channels for c in stem.consumers}
    assert maps["dense1.conv"] == tuple((i,) for i in range(8))
    assert maps["dense2.conv"] == tuple((4 + i,) for i in range(8))  # cat(new, x): after the 4 new
    assert maps["trans.2"] == tuple((8 + i,) for i in range(8))
    new2 = by_producer(groups, "dense2.conv")
    assert {c.name: c.channels for c in new2.consumers} == {"trans.2": tuple((i,) for i in range(4))}


def test_shuffle_and_chunk_tie_channels():
    model, x = build("shufflenet")
    groups = channel_groups(model, x)
    big = by_producer(groups, "stage.0.branch1.2")
    # Both branches of the stride-2 block and the last conv of each stride-1 block meet in the
    # shuffles: one group. A shuffle ties channel j of one half to channel j of the other, a
    # chunk must keep its halves equal: with two stride-1 blocks only 2 units remain.
    assert [p.name for p in big.producers] == [
        "stage.0.branch1.2", "stage.0.branch2.5", "stage.1.branch2.5", "stage.2.branch2.5"]
    assert big.prunable and big.width == 2
    chans = {lc.name: lc.channels for lc in big.producers + big.consumers}
    assert chans["stage.0.branch1.2"] == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert chans["last.0"] == (tuple(range(8)), tuple(range(8, 16)))
    inner = by_producer(groups, "stage.1.branch2.0")
    assert inner.depthwise == ("stage.1.branch2.3",) and inner.width == 8 and inner.prunable


def test_depthwise_passes_channels_through():
    model, x = build("mobilenet")
    groups = channel_groups(model, x)
    expand = by_producer(groups, "blocks.0.conv.0")
    assert expand.depthwise == ("blocks.0.conv.3",)
    assert [c.name for c in expand.consumers] == ["blocks.0.conv.3", "blocks.0.conv.6"]
    assert expand.width == 32 and expand.prunable
    res = by_producer(groups, "stem.0")
    assert [p.name for p in res.producers] == ["stem.0", "blocks.0.conv.6"]


def test_grouped_conv_granularity():
    model, x = build("grouped")
    groups = channel_groups(model, x)
    first = by_producer(groups, "features.0")  # feeds groups=2: position p of both halves
    assert first.width == 4
    assert {c.name: c.channels for c in first.consumers}["features.3"] == tuple((p, 4 + p) for p in range(4))
    mid = by_producer(groups, "features.3")  # written by groups=2, read by groups=4
    assert mid.width == 4 and all(len(u) == 4 for u in mid.producers[0].channels)
    last = by_producer(groups, "features.9")
    fc = {c.name: c.channels for c in last.consumers}["fc"]
    assert fc[1] == (4, 5, 6, 7)  # a channel of the 2x2 map is four features after the flatten


def test_grouped_conv_ties_two_producers():
    model, x = build("grouped_cat")
    group = by_producer(channel_groups(model, x), "a.0")
    assert [p.name for p in group.producers] == ["a.0", "b.0"] and group.width == 4
    assert {c.name: c.channels for c in group.consumers}["g.0"] == tuple((p, 4 + p) for p in range(4))


def test_squeeze_excite_and_native_shuffle():
    model, x = build("se_shuffle")
    group = by_producer(channel_groups(model, x), "a.0")
    assert [p.name for p in group.producers] == ["a.0", "fc2"]  # the scale is coupled to x
    assert group.width == 4  # ChannelShuffle(3): three channels at a time
    assert {c.name: c.channels for c in group.consumers}["c.0"][1] == (3, 4, 5)


def test_a_groupnorm_loses_whole_groups():
    # Its units are its groups: dropping one leaves the others' statistics, so the slimmed
    # model equals the masked one. (Dropping one channel of every group, as before, changed
    # every group's statistics, and such groups were left whole.)
    class GN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.gn, self.c = nn.Conv2d(3, 12, 3, padding=1), nn.GroupNorm(3, 12), nn.Conv2d(12, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(F.relu(self.gn(self.a(x)))).mean((2, 3))

    torch.manual_seed(0)
    model, x = randomised(GN()), torch.randn(2, 3, 8, 8)
    group = by_producer(channel_groups(model, x), "a")
    assert group.prunable and group.exact and group.width == 3
    assert {c.name: c.channels for c in group.producers}["a"] == ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11))
    with torch.no_grad():
        masked = mask_groups(model, [group], {group.id: [0, 2]})(x)
    slim_groups(model, x, {group.id: [0, 2]})  # checked against the masked model inside too
    assert (model.gn.num_groups, model.gn.num_channels, model.a.out_channels, model.c.in_channels) == (2, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5)


def test_linear_after_flatten():
    model, x = build("chain")
    groups = channel_groups(model, x)
    fc1 = {c.name: c.channels for c in by_producer(groups, "features.6").consumers}["fc1"]
    assert fc1[3] == tuple(range(48, 64))
    assert by_producer(groups, "fc1").prunable and by_producer(groups, "fc2").reason == "reaches the model output"


def test_transformer_residual_stream_stays_whole_and_the_mlp_is_prunable():
    model, x = build("transformer")
    groups = channel_groups(model, x)
    stream = by_producer(groups, "embed")
    assert not stream.prunable and "read and written by attention enc.self_attn" in stream.reason
    assert "enc.norm1" in [n.name for n in stream.norms] and not stream.exact
    mlp = by_producer(groups, "enc.linear1")
    assert mlp.prunable and [c.name for c in mlp.consumers] == ["enc.linear2"] and mlp.width == 32


class OpNet(nn.Module):
    """conv -> op -> conv -> head: what an op between two convs does to the first conv's group."""

    def __init__(self, op, width: int = 8) -> None:
        super().__init__()
        self.op = op
        self.conv0, self.conv1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(width, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv1(self.op(self.conv0(x))).mean((2, 3)))


@pytest.mark.parametrize("op,width,reason", [
    (lambda t: t * t.mean(1, keepdim=True), 8, "MeanBackward1 (reduces over the channel dimension"),
    (lambda t: t - t.mean(1, keepdim=True), 8, "SubBackward0 (combines every channel with a value taken over all"),
    (lambda t: torch.softmax(t, 1), 8, "SoftmaxBackward0"),
    (lambda t: t.permute(0, 2, 3, 1).relu().permute(0, 3, 1, 2), 8, "PermuteBackward0"),
    (lambda t: t[:, :4], 4, "slices the channel dimension"),
    (lambda t: torch.cat(torch.split(t, [3, 5], 1)[::-1], 1), 8, "unequal parts [3, 5]"),
    (lambda t: F.pad(t, (0, 0, 0, 0, 1, 1)), 10, "pads the channel dimension"),
    (lambda t: torch.cat([t, t], 1), 16, ""),
    (lambda t: torch.cat(t.chunk(2, 1)[::-1], 1), 8, ""),
    (lambda t: F.pad(F.interpolate(t, scale_factor=2), (1, 1, 1, 1)), 8, ""),
    (lambda t: torch.sigmoid(t.amax((2, 3), keepdim=True)) * F.max_pool2d(t, 2), 8, ""),
])
def test_ops_between_convs(op, width, reason):
    torch.manual_seed(0)
    model = randomised(OpNet(op, width))
    x = torch.randn(2, 3, 8, 8)
    group = by_producer(channel_groups(model, x), "conv0")
    if reason:
        assert not group.prunable and reason in group.reason
    else:
        assert group.prunable
        kept = {group.id: list(range(0, group.width, 2))}
        with torch.no_grad():
            assert_close(slim_groups(copy.deepcopy(model), x, kept)(x), mask_groups(model, [group], kept)(x))


def test_chunk_outputs_map_to_their_own_half():
    # Torch-Pruning numbers chunk outputs in the order its traversal finds them: here it sends
    # channel 5 (second half) to conv_a, which reads the first half.
    class Chunky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv0, self.conv_a, self.conv_b = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x1, x2 = self.conv0(x).chunk(2, 1)
            return (self.conv_a(x1) * self.conv_b(x2)).sum()

    model = Chunky()
    graph = graph_trace.trace(model, torch.randn(1, 3, 4, 4))
    group = graph.dg.get_pruning_group(model.conv0, graph.dg.get_pruner_of_module(model.conv0).prune_out_channels, [5])
    found = {graph.names.get(it.dep.target.module): list(it.idxs) for it in group}
    assert found["conv_b"] == [1] and "conv_a" not in found


def test_check_catches_a_wrong_index_map(monkeypatch):
    # Pretend the shuffle were the identity (what Torch-Pruning assumes): slim_groups notices.
    monkeypatch.setattr(graph_trace, "_table", lambda t: lambda i: (i,))
    model, x = build("shufflenet")
    groups = channel_groups(model, x)
    big = by_producer(groups, "stage.0.branch1.2")
    with pytest.raises(CrossDistillError, match="differs from the masked reference"):
        slim_groups(model, x, {big.id: [0]})


# -- refusals ------------------------------------------------------------------------------------

def test_refusals():
    model, x = build("resnet")
    groups = channel_groups(model, x)
    head = by_producer(groups, "fc")
    ok = next(g for g in groups if g.prunable)
    with pytest.raises(CrossDistillError, match=f"channel group {head.id} cannot be pruned: reaches the model output"):
        slim_groups(model, x, {head.id: [0]})
    with pytest.raises(CrossDistillError, match="keep at least one"):
        slim_groups(model, x, {ok.id: []})
    with pytest.raises(CrossDistillError, match="outside"):
        slim_groups(model, x, {ok.id: [0, ok.width]})
    with pytest.raises(CrossDistillError, match="no channel group"):
        slim_groups(model, x, {len(groups): [0]})
    with pytest.raises(CrossDistillError, match="ignored layer"):
        channel_groups(model, x, ignored=["nope"])
    assert not by_producer(channel_groups(model, x, ignored=["block2.down.0"]), "block2.conv2").prunable
    assert params(model) == params(build("resnet")[0])  # nothing was touched


# -- the registry's ResNets: the general path finds what the hand lists say -------------------

@pytest.mark.parametrize("name,shape", [
    ("resnet20", (1, 3, 32, 32)), ("resnet56", (1, 3, 32, 32)), ("resnet18", (1, 3, 64, 64)),
    ("vgg16", (1, 3, 32, 32)), ("fashion_cnn", (1, 1, 28, 28)),
])
def test_registry_models_match_channel_pairs(name, shape):
    model = create_model(name).eval()
    groups = channel_groups(model, torch.randn(shape))
    for p in model.channel_pairs():
        g = by_producer(groups, p.producer)
        ident = tuple((i,) for i in range(g.width))
        assert g.prunable and g.exact
        assert [(lc.name, lc.channels) for lc in g.producers] == [(p.producer, ident)]
        assert [(lc.name, lc.channels) for lc in g.norms] == [(p.bn, ident)]
        assert [(lc.name, lc.channels) for lc in g.consumers] == [(p.consumer, ident)]
    hand = {p.producer for p in model.channel_pairs()}
    others = [g for g in groups if not hand & {lc.name for lc in g.producers}]
    if name.startswith("resnet") and name != "resnet18":
        # Option-A shortcuts zero-pad the channels (F.pad on dim 1): the three residual streams
        # stop there and stay whole, as the hand lists assume; so does the classifier.
        assert [g.reason for g in others] == [
            "feeds an unsupported op: ConstantPadNdBackward0 (pads the channel dimension)"] * 3 + [
            "reaches the model output"]
    elif name == "resnet18":
        # 1x1-conv shortcuts: the general path also finds the four residual streams prunable.
        assert [g.prunable for g in others] == [True] * 4 + [False]
    else:
        # Plain chains: the last conv feeding the classifier is prunable too.
        assert [g.prunable for g in others] == [True, False]


def test_same_slimming_as_the_hand_declared_pairs():
    model = randomised(create_model("resnet20"), seed=3)
    x = torch.randn(2, 3, 32, 32)
    groups = channel_groups(model, x)
    rng = random.Random(0)
    kept, by_consumer = {}, {}
    for p in model.channel_pairs()[::2]:
        g = by_producer(groups, p.producer)
        kept[g.id] = sorted(rng.sample(range(g.width), g.width // 2))
        by_consumer[p.consumer] = kept[g.id]
    general = slim_groups(copy.deepcopy(model), x, kept)
    hand = slim_channels(copy.deepcopy(model), by_consumer)
    a, b = general.state_dict(), hand.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_layer_scale_on_a_channels_last_tensor_is_named_as_such():
    # ConvNeXt's block: Linear on (N, H, W, C), times a per-channel gamma, permuted back. The
    # reason once read "broadcasts across channels", which named no pattern a user would know.
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.p1, self.p2 = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 16), nn.Linear(16, 8)
            self.gamma = nn.Parameter(torch.full((8,), 0.1))
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            r = self.gamma * self.p2(torch.relu(self.p1(h.permute(0, 2, 3, 1))))
            return self.fc((h + r.permute(0, 3, 1, 2)).mean((2, 3)))

    groups = channel_groups(randomised(Block()), torch.randn(2, 3, 8, 8))
    assert "a vector over the last dimension of a channels-last tensor (..., C), such as a layer scale" in \
        by_producer(groups, "p2").reason
    assert by_producer(groups, "p1").prunable  # the MLP's hidden units stay prunable


@pytest.mark.parametrize("gate", [lambda g: g[:, :, None, None], lambda g: g.unsqueeze(-1).unsqueeze(-1),
                                  lambda g: g.view(g.shape[0], g.shape[1], 1, 1)])
def test_an_se_gate_prunes_alike_however_its_unit_dims_are_added(gate):
    # g[:, :, None, None] went through a 3-d (N, C, 1) tensor whose channel axis was not known,
    # and the group was left whole ("reshapes the channel dimension (1, 8, 1) -> (1, 8, 1, 1)").
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.f1, self.f2, self.c3 = nn.Linear(8, 4), nn.Linear(4, 8), nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.c2(torch.relu(self.c1(x))))
            g = torch.sigmoid(self.f2(torch.relu(self.f1(h.mean((2, 3))))))
            return self.c3(h * gate(g)).mean((2, 3))

    torch.manual_seed(0)
    model, x = randomised(SE()), torch.randn(2, 3, 8, 8)
    group = by_producer(channel_groups(model, x), "c2")
    assert group.prunable, group.reason
    assert {p.name for p in group.producers} == {"c2", "f2"}
    kept = {group.id: [0, 2, 4, 6]}
    with torch.no_grad():
        assert torch.allclose(slim_groups(copy.deepcopy(model), x, kept)(x), mask_groups(model, [group], kept)(x),
                              atol=1e-5)
