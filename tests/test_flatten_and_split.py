"""Channels followed through x.flatten(2) in a conv net, and the reasons for a split whose sizes
the forward fixes. Before: a 3-d tensor's channels were taken as its last axis in any model
without a 3-d layer, so `x.flatten(2)` (channels still at dim 1) stopped the group ("reshapes the
channel dimension"); a global budget gave a group that cannot be slimmed the reason "the keep
preset leaves it whole"."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crossdistill


class FlatNet(nn.Module):
    """conv → BN → ReLU → [flatten(2) → minus half the mean over positions → view back] → conv."""

    def __init__(self, flat: bool = True):
        super().__init__()
        self.flat = flat
        self.c0, self.b0 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c1, self.b1 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        z = F.relu(self.b0(self.c0(x)))
        n, c, h, w = z.shape
        if self.flat:
            t = z.flatten(2)  # (n, c, h·w)
            z = (t - 0.5 * t.mean(-1, keepdim=True)).view(n, c, h, w)
        else:
            z = z - 0.5 * z.mean((2, 3), keepdim=True)
        z = F.relu(self.b1(self.c1(z)))
        return self.fc(z.view(z.shape[0], z.shape[1], -1).mean(2))  # a pooling written as a view


def _twins() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a = FlatNet(True)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in a.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(16, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(16, generator=gen) + 0.5)
    b = FlatNet(False)
    b.load_state_dict(a.state_dict())
    return a.eval(), b.eval()


def test_channels_are_followed_through_flatten_2_as_through_the_same_net_without_it():
    flat, other = _twins()
    x = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(flat(x), other(x))
    s1, r1 = crossdistill.compress(flat, x, n_samples=30, keep=0.5, show_progress=False)
    s2, r2 = crossdistill.compress(other, x, n_samples=30, keep=0.5, show_progress=False)
    pruned = {tuple(g["producers"]): g["kept"] for g in r1["channel_groups"]["pruned"]}
    assert pruned == {("c0",): 8}
    assert pruned == {tuple(g["producers"]): g["kept"] for g in r2["channel_groups"]["pruned"]}
    assert s1.c1.in_channels == 8
    held_out = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(s1(held_out), s2(held_out), rtol=1e-4, atol=1e-5)


class SplitNet(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.c0, self.b0 = nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        z = F.relu(self.b0(self.c0(x)))
        p, q, r = torch.split(z, [8, 8, 8], 1) if self.mode == "sizes" else torch.split(z, 8, 1)
        u = torch.cat([F.relu(self.c1(p)), self.c2(torch.cat([q, r], 1))], 1)
        return self.fc(u.mean((2, 3)))


@pytest.mark.parametrize("mode", ["sizes", "int"])
def test_a_split_at_fixed_sizes_is_left_whole_with_the_same_reason_under_either_budget(mode):
    torch.manual_seed(0)
    model = SplitNet(mode).eval()
    x = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reasons = {}
    for budget in ("uniform", "global"):
        _, report = crossdistill.compress(model, x, n_samples=30, flops=0.8, budget=budget,
                                          prune_classifier=True, show_progress=False)
        whole = {tuple(g["producers"]): g["reason"] for g in report["channel_groups"]["left_whole"]}
        reasons[budget] = whole[("c0",)]
    assert reasons["uniform"] == reasons["global"]
    assert "torch.split" in reasons["global"] and "keep preset" not in reasons["global"]


class SpatialSoftmaxNet(nn.Module):
    """A spatial softmax (over positions, per channel) between two convs."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.c0, self.b0 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        z = self.b0(self.c0(x))
        n, c, h, w = z.shape
        z = z.flatten(2).softmax(self.dim).view(n, c, h, w) * (h * w if self.dim == -1 else c)
        return self.fc(self.c1(z).mean((2, 3)))


@pytest.mark.parametrize("dim, pruned", [(-1, True), (1, False)])
def test_a_softmax_over_positions_keeps_channels_one_over_channels_does_not(dim, pruned):
    torch.manual_seed(0)
    model = SpatialSoftmaxNet(dim).eval()
    x = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    if not pruned:
        with pytest.raises(crossdistill.CrossDistillError, match=r"SoftmaxBackward0 \(mixes channels\)"):
            crossdistill.compress(model, x, n_samples=30, keep=0.5, show_progress=False)
        return
    student, report = crossdistill.compress(model, x, n_samples=30, keep=0.5, show_progress=False)
    assert [g["producers"] for g in report["channel_groups"]["pruned"]] == [["c0"]]
    assert student.c1.in_channels == 8
    pruned_only, _ = crossdistill.compress(model, x, n_samples=30, keep=0.5, solver="prune-only", show_progress=False)
    held_out = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = model(held_out)
        assert (student(held_out) - t).norm() < (pruned_only(held_out) - t).norm()


class SubPixel(nn.Module):
    """ESPCN-like: PixelUnshuffle in, a PixelShuffle(2) inside a residual branch (mid's 32 channels
    become 8 at twice the size), PixelShuffle(2) out."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(12, 32, 5, padding=2), nn.Conv2d(32, 16, 3, padding=1)
        self.mid, self.c5 = nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.c3, self.c4 = nn.Conv2d(16, 12, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        h = torch.tanh(self.c2(torch.tanh(self.c1(F.pixel_unshuffle(x, 2)))))
        h = h + self.c5(F.relu(F.pixel_shuffle(self.mid(h), 2)))
        return self.c4(F.pixel_shuffle(self.c3(h), 2))


def make_subpixel() -> nn.Module:
    torch.manual_seed(0)
    return SubPixel().eval()


def test_channels_are_followed_through_pixel_shuffle_and_unshuffle(tmp_path):
    """A unit after PixelShuffle(r) is r² channels of the conv before it: mid keeps whole units."""
    model = make_subpixel()
    x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    student, report = crossdistill.compress(model, x[:30], n_samples=30, keep=0.5, show_progress=False)
    pruned = {tuple(g["producers"]): (g["width"], g["kept"]) for g in report["channel_groups"]["pruned"]}
    assert pruned[("mid",)] == (8, 4)
    assert student.mid.out_channels == 16 and student.c5.in_channels == 4
    only, _ = crossdistill.compress(model, x[:30], n_samples=30, keep=0.5, solver="prune-only", show_progress=False)
    with torch.no_grad():
        t = model(x[30:])
        assert (student(x[30:]) - t).norm() < (only(x[30:]) - t).norm()
    student.crossdistill_factory = f"{__file__}:make_subpixel"
    path = crossdistill.save(student, tmp_path / "s.safetensors")
    with torch.no_grad():
        assert torch.equal(crossdistill.load(path)(x[30:]), student(x[30:]))


def test_a_forward_failing_after_the_first_conv_ran_on_what_it_takes_gets_no_hint_about_its_input():
    class Broken(SubPixel):
        def forward(self, x):
            return F.pixel_shuffle(self.c1(F.pixel_unshuffle(x, 2)), 3)  # 32 channels do not split in 9

    with pytest.raises(crossdistill.CrossDistillError, match="pixel_shuffle") as err:
        crossdistill.compress(Broken().eval(), torch.randn(8, 3, 16, 16), n_samples=8, show_progress=False)
    assert "first conv takes" not in str(err.value)


class Detector(nn.Module):
    """Three levels, each head's output viewed to (n, 6, -1) and concatenated along positions (as
    YOLO's Detect): the rules of 2 follow the views and merge the heads' groups, which renumbers
    the groups after them."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.d2, self.d3 = nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.a = nn.ModuleList(nn.Conv2d(16, 12, 3, padding=1) for _ in range(3))
        self.b = nn.ModuleList(nn.Conv2d(12, 6, 1) for _ in range(3))

    def forward(self, x):
        f1 = F.relu(self.stem(x))
        f2 = F.relu(self.d2(f1))
        f3 = F.relu(self.d3(f2))
        outs = [b(F.relu(a(f))).view(x.shape[0], 6, -1) for a, b, f in zip(self.a, self.b, (f1, f2, f3))]
        return torch.cat(outs, 2).mean(2)


def make_detector() -> nn.Module:
    torch.manual_seed(0)
    return Detector().eval()


def _doc(path):
    import json

    from safetensors import safe_open

    from crossdistill.persistence import spec

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()[spec.META_KEY])


def test_a_student_saved_under_the_rules_of_before_loads_under_them(tmp_path):
    from crossdistill.compression.graph_groups import channel_groups
    from crossdistill.compression.graph_rules import trace_rules

    x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with trace_rules(1):
        old_ids = [[p.name for p in g.producers] for g in channel_groups(make_detector(), x[:1])]
        student, _ = crossdistill.compress(make_detector(), x[:30], n_samples=30, keep=0.5, prune_classifier=True,
                                           show_progress=False)
    new_ids = [[p.name for p in g.producers] for g in channel_groups(make_detector(), x[:1])]
    assert old_ids != new_ids  # the same ids name other groups now
    assert student.crossdistill_slim["trace"] == 1  # what it was traced with: as files written before
    student.crossdistill_factory = f"{__file__}:make_detector"
    path = crossdistill.save(student, tmp_path / "old.safetensors")
    assert "trace" not in _doc(path)["channel_groups"] and _doc(path)["format_version"] == 1
    with torch.no_grad():
        assert torch.equal(crossdistill.load(path)(x[30:]), student(x[30:]))

    # Pruned again now: the new stage is traced under the current rules and says so.
    again, _ = crossdistill.compress(crossdistill.load(path), x[:30], n_samples=30, keep=0.5, prune_classifier=True,
                                     show_progress=False)
    again.crossdistill_factory = student.crossdistill_factory
    path2 = crossdistill.save(again, tmp_path / "again.safetensors")
    doc = _doc(path2)
    assert "trace" not in doc["channel_groups"]
    assert doc["format_version"] == (3 if doc["channel_groups"]["then"][0].get("trace") == 2 else 1)
    with torch.no_grad():
        assert torch.equal(crossdistill.load(path2)(x[30:]), again(x[30:]))


def test_a_record_of_unknown_rules_is_refused(tmp_path, monkeypatch):
    from crossdistill.compression import graph_rules
    from crossdistill.persistence.codecs import DocumentError
    from crossdistill.persistence.codecs.slim import SlimCodec

    x = torch.randn(30, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    student, _ = crossdistill.compress(make_detector(), x, n_samples=30, keep=0.5, prune_classifier=True,
                                       show_progress=False)
    assert student.crossdistill_slim["trace"] == graph_rules.TRACE_RULES  # the rules of 1 number its groups apart
    meta = SlimCodec().encode(student)[0]
    for bad in (0, True, "2", graph_rules.TRACE_RULES + 1):
        with pytest.raises(DocumentError, match="trace"):
            SlimCodec().validate(dict(meta, trace=bad))
    student.crossdistill_factory = f"{__file__}:make_detector"
    path = crossdistill.save(student, tmp_path / "s.safetensors")
    assert _doc(path)["format_version"] == 3
    monkeypatch.setattr("crossdistill.persistence.spec.FORMAT_VERSION", 2)
    with pytest.raises(crossdistill.CrossDistillError, match="format version 3.*upgrade"):
        crossdistill.load(path)


def test_a_student_whose_groups_the_newer_rules_leave_alone_keeps_the_oldest_format(tmp_path):
    """Only a model the newer rules trace differently needs them on load: any other file stays
    at the lowest format version, which readers of before still read."""
    x = torch.randn(30, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    student, _ = crossdistill.compress(make_detector(), x, n_samples=30, keep=0.5, show_progress=False)
    assert student.crossdistill_slim["trace"] == 1
    student.crossdistill_factory = f"{__file__}:make_detector"
    path = crossdistill.save(student, tmp_path / "s.safetensors")
    assert _doc(path)["format_version"] == 1 and "trace" not in _doc(path)["channel_groups"]
    with torch.no_grad():
        assert torch.equal(crossdistill.load(path)(x), student(x))


def test_a_pixel_shuffle_of_a_5d_tensor_is_not_taken_for_one_over_channels():
    """On N×C×T×H×W, pixel_shuffle works on dim -3 (T), not the channels: the group stops there."""
    from crossdistill.compression.graph_groups import channel_groups

    class Clip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv3d(3, 8, 3, padding=1), nn.Conv3d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            h = F.pixel_shuffle(torch.relu(self.a(x)), 2)  # (N, 8, 1, 16, 16)
            return self.fc(torch.relu(self.b(h)).mean((2, 3, 4)))

    groups = {g.producers[0].name: g for g in channel_groups(Clip().eval(), torch.randn(1, 3, 4, 8, 8))}
    assert not groups["a"].prunable and groups["a"].reason == "feeds an unsupported op: PixelShuffleBackward0"
