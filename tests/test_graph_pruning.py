"""Channel pruning by cross distillation on models the registry does not know: the groups come
from the graph, every reader of a group is re-solved, the model is slimmed physically."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from crossdistill.compression.channel_pruning import ChannelPruning
from crossdistill.compression.graph_plan import plan_graph_channels
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.pipeline import FewShot, compress
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.unit_selection import Reader, select_units_obs
from test_graph_channels import MODELS, build, params

CHANNEL_MODELS = [k for k in MODELS if k not in ("se_shuffle",)]


def fewshot_for(example: torch.Tensor, n: int = 12) -> FewShot:
    gen = torch.Generator().manual_seed(3)
    images = torch.randn((n, *example.shape[1:]), generator=gen)
    return FewShot(images=images, labels=torch.arange(n) % 3, indices=np.arange(n))


def run(key: str, **settings) -> tuple[torch.nn.Module, torch.nn.Module, FewShot, object]:
    teacher, example = build(key)
    few = fewshot_for(example)
    cfg = CompressConfig(model=f"user-{key}", n_samples=len(few.labels), damping=0.01, **settings)
    return teacher, compress(teacher, few, cfg, show_progress=False).student, few, cfg


@pytest.mark.parametrize("key", CHANNEL_MODELS)
def test_cross_distillation_prunes_any_graph(key):
    teacher, student, few, _ = run(key, keep=0.5)
    assert params(student) < params(teacher)
    with torch.no_grad():
        out = student(few.images)
    assert out.shape == teacher(few.images).shape and torch.isfinite(out).all()


@pytest.mark.parametrize("key", CHANNEL_MODELS)
def test_nothing_to_prune_reproduces_the_teacher(key):
    teacher, student, few, _ = run(key, keep=1.0, solver="prune-only")
    assert params(student) == params(teacher)
    with torch.no_grad():
        assert torch.equal(student(few.images), teacher(few.images))


@pytest.mark.parametrize("key", CHANNEL_MODELS)
def test_every_layer_that_mixes_a_pruned_groups_channels_is_re_solved(key):
    """A reader left out of the re-solve keeps weights fitted to channels that are gone: only a
    depthwise conv, which mixes nothing, may read a pruned group without being re-solved."""
    teacher, example = build(key)
    method = ChannelPruning(keep=0.5)
    method.prepare(example)
    method.plan(copy.deepcopy(teacher))
    plan = method._plan
    for gid, g in plan.groups.items():
        for c in g.consumers:
            layer = teacher.get_submodule(c.name)
            depthwise = getattr(layer, "groups", 1) > 1 and layer.groups == layer.in_channels
            assert c.name in plan.readers[gid] or depthwise, (key, gid, c.name)


def test_a_grouped_reader_is_re_solved_and_beats_slicing():
    """The groups a grouped (not depthwise) conv reads are pruned like any other, the grouped
    conv re-solved on what is left (one block-diagonal problem over its groups): its outputs
    are closer to the teacher's than with its kept weights merely sliced (prune-only)."""
    teacher, example = build("grouped")
    method = ChannelPruning(keep=0.5)
    method.prepare(example)
    method.plan(copy.deepcopy(teacher))
    assert {"features.3", "features.6"} <= set(method._plan.reads)
    assert not any("grouped" in e["reason"] for e in method._plan.left_whole)
    # Its units are one channel of each of its 2 groups: the report says so next to width/kept.
    first = next(e for e in method._plan.summary()["channel_groups"]["pruned"] if e["readers"] == ["features.3"])
    assert (first["width"], first["channels_per_unit"]) == (4, 2)
    errors = {}
    for solver in ("closed-form", "prune-only"):
        teacher, student, few, _ = run("grouped", keep=0.5, solver=solver)
        with torch.no_grad():
            t = teacher(few.images)
            errors[solver] = float((student(few.images) - t).norm() / t.norm())
        assert student.features[3].groups == 2 and student.features[6].groups == 4
    assert errors["closed-form"] < 0.8 * errors["prune-only"], errors
    # The paper's Adam solver prunes one layer's own channels: units of a channel per conv group
    # are not that, and it says so rather than pruning them some other way.
    with pytest.raises(CrossDistillError, match=r"features.3: .*units of several channels \(a grouped conv's or a GroupNorm's\)"):
        run("grouped", keep=0.5, solver="paper", iters=5)


def test_every_reader_of_a_shared_group_is_re_solved_on_what_is_left():
    # The ResNet's residual stream is read by several convs (and the 1x1 downsample): one choice
    # for all of them, each reader keeping exactly the kept channels' columns.
    teacher, example = build("resnet")
    method = ChannelPruning(keep=0.5)
    method.prepare(example)
    tasks = method.plan(copy.deepcopy(teacher))
    plan = method._plan
    shared = [gid for gid, names in plan.readers.items() if len(names) > 1]
    assert shared, "the toy ResNet has a residual stream read by several layers"
    few = fewshot_for(example)
    from crossdistill.engine import distill_layers
    from crossdistill.objectives import create_objective
    from crossdistill.solvers import create_solver

    student = copy.deepcopy(teacher)
    recs = distill_layers(teacher, student, few.images, tasks, create_objective("soft"),
                          create_solver("channels", "closed-form"), damping=0.01)
    by_name = {r.name: r for r in recs}
    for gid in shared:
        kept = plan.kept[gid]
        assert len(kept) == plan.keep[gid]
        for name in plan.readers[gid]:
            w = student.get_submodule(name).weight.detach()
            lc = next(c for c in plan.groups[gid].consumers if c.name == name)
            dropped = [ch for u, unit in enumerate(lc.channels) if u not in kept for ch in unit]
            assert torch.all(w[:, dropped] == 0), name
            assert set(by_name[name].info["kept"]).isdisjoint(dropped)
    slim = method.finalize(student, recs)
    assert params(slim) < params(teacher)


def test_unit_obs_sums_the_readers_costs():
    # Two readers that disagree: each alone keeps its own favourite; together the sum decides.
    eye = torch.eye(2, dtype=torch.float64)
    a = QuadraticProblem(H=eye, B=torch.tensor([[3.0, 0.1]], dtype=torch.float64), c=0.0,
                         w_teacher=torch.zeros(1, 2, dtype=torch.float64))
    b = QuadraticProblem(H=eye, B=torch.tensor([[0.0, 2.0]], dtype=torch.float64), c=0.0,
                         w_teacher=torch.zeros(1, 2, dtype=torch.float64))
    units = [[0], [1]]
    assert select_units_obs([Reader(a, units)], 1).tolist() == [0]
    assert select_units_obs([Reader(b, units)], 1).tolist() == [1]
    assert select_units_obs([Reader(a, units), Reader(b, units)], 1).tolist() == [0]  # 9 > 0.01 + 4


@pytest.mark.parametrize("key,reason", [("transformer", "MultiheadAttention"), ("chain", "feeds the classifier")])
def test_groups_left_whole_are_reported_with_their_reason(key, reason):
    teacher, example = build(key)
    method = ChannelPruning(keep=0.5)
    method.prepare(example)
    method.plan(copy.deepcopy(teacher))
    left = method.summary(teacher)["channel_groups"]["left_whole"]
    assert any(reason in g["reason"] for g in left)


class ReflectPadded(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        conv = torch.nn.Conv2d
        self.c1, self.c2, self.c3 = conv(3, 8, 3, padding=1), conv(8, 8, 3, padding=1, padding_mode="reflect"), conv(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))).mean((2, 3)))


def test_a_group_read_by_a_conv_that_pads_otherwise_than_with_zeros_is_left_whole():
    torch.manual_seed(0)
    teacher = ReflectPadded().eval()
    few = fewshot_for(torch.zeros(1, 3, 8, 8))
    cfg = CompressConfig(model="user-reflect", n_samples=12, keep=0.5)
    result = compress(teacher, few, cfg, show_progress=False)
    left = {g["producers"][0]: g["reason"] for g in result.summary["channel_groups"]["left_whole"]}
    assert left["c1"] == "read by conv c2 with padding_mode='reflect'"
    assert result.student.c2.out_channels == 4 and result.student.c3.in_channels == 4  # the zero-padded reader's group
    assert result.student.c2.in_channels == 8


class Transposed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.up(torch.relu(self.c2(torch.relu(self.c1(x)))))).amax((2, 3)))


def test_a_group_read_by_a_transposed_conv_is_pruned_and_the_reader_re_solved():
    # It was left whole (the solvers took no transposed conv); pruning its input by the producers'
    # norms alone, with no re-solve, had wrecked the output without a word.
    torch.manual_seed(0)
    cfg = CompressConfig(model="user-mixed", n_samples=12, keep=0.5)
    result = compress(Transposed().eval(), fewshot_for(torch.zeros(1, 3, 8, 8)), cfg, show_progress=False)
    left = {g["producers"][0] for g in result.summary["channel_groups"]["left_whole"]}
    assert left == {"up", "fc"}  # the classifier's input and the output
    assert result.student.c2.out_channels == 4 and result.student.up.in_channels == 4
    assert "up" in {r.name for r in result.records}


def test_thinet_on_a_shared_group_is_refused_by_name():
    with pytest.raises(CrossDistillError, match="selection 'thinet' needs a group read by one layer"):
        run("resnet", keep=0.5, selection="thinet")


def test_plan_counts_follow_the_keep_ratio():
    teacher, example = build("densenet")
    plan = plan_graph_channels(teacher, example, lambda g: max(1, g.width // 2))
    assert plan.groups and all(plan.keep[gid] == max(1, g.width // 2) for gid, g in plan.groups.items())


def test_tp_magnitude_keeps_the_heaviest_channels():
    from crossdistill.compression.graph_plan import group_magnitude

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                              torch.nn.Conv2d(6, 4, 3)).eval()
    with torch.no_grad():
        for m in net:
            if hasattr(m, "weight"):
                m.weight.fill_(0.01)
        net[0].weight[4] = 5.0  # channel 4: heavy filter
        net[3].weight[:, 1] = 5.0  # channel 1: heavy reader columns
    plan = plan_graph_channels(net, torch.randn(1, 2, 8, 8), lambda g: 2, prune_classifier=True)
    (g,) = [g for g in plan.groups.values() if g.producers[0].name == "0"]
    assert group_magnitude(g, net, 2) == [1, 4]


@pytest.mark.parametrize("keep", ["paper", 0.5])
def test_registered_resnet_plans_the_hand_declared_counts(keep):
    """Through the graph path, ResNet-56 keeps exactly the channel counts of its hand-declared
    pairs (the paper preset included), reader by reader."""
    from crossdistill.compression.channels import plan_channels
    from crossdistill.models import create_model

    model = create_model("resnet56").eval()
    method = ChannelPruning(keep=keep)
    method.prepare(torch.zeros(1, 3, 32, 32))
    method.plan(model)
    plan = method._plan
    legacy = {t.name: t.keep for t in plan_channels(model, keep)}
    assert {plan.first_reader[g]: plan.keep[g] for g in plan.groups} == legacy


@pytest.mark.parametrize("layer,shape", [(torch.nn.Conv2d(5, 3, 3, padding=1), (6, 5, 6, 6)),
                                         (torch.nn.Conv2d(5, 3, 3, padding=1), (6, 5, 14, 14)),  # shifted maps
                                         (torch.nn.Linear(7, 4), (6, 3, 7))])
def test_teacher_side_problem_is_the_block_of_the_full_moments(layer, shape):
    """The later readers' cost uses only the decided channels' columns: the same numbers as the
    corresponding block of the full moment matrix."""
    from crossdistill.capture import group_size
    from crossdistill.engine import teacher_side_problem
    from crossdistill.moments import MomentAccumulator

    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)]
    per = group_size(layer)
    cols = sorted(c * per + k for c in (1, 3) for k in range(per))
    p = teacher_side_problem(layer, inputs, 0.0, cols)
    acc = MomentAccumulator(layer)
    for x in inputs:
        acc.add(x, x)
    full = acc.finish().tt
    idx = torch.as_tensor(cols)
    assert torch.allclose(p.H, full[idx][:, idx], rtol=1e-5, atol=1e-7)
    # ... and the Gram of the unfolded columns in float64, whichever route made it.
    from crossdistill.capture import unfold

    X = torch.cat([unfold(layer, x.double()) for x in inputs])[:, idx]
    torch.testing.assert_close(p.H, X.T @ X / X.shape[0], rtol=1e-5, atol=1e-7)
    assert torch.equal(p.w_teacher, layer.weight.detach().reshape(layer.weight.shape[0], -1)[:, idx].double())


@pytest.mark.parametrize("key", ["resnet", "densenet", "shufflenet", "mobilenet"])
@pytest.mark.parametrize("share", [0.5, 0.7])
def test_flops_target_is_met_and_tight(key, share):
    """--flops: the slimmed model has at most the asked share of the FLOPs, and one more unit in
    every group (the next keep ratio up) would exceed it or change nothing."""
    from crossdistill.compression.channel_pruning import ratio_for_flops
    from crossdistill.compression.channels import keep_count
    from crossdistill.compression.graph_channels import slim_groups
    from crossdistill.evaluation import count_flops

    model, example = build(key)
    x = example[:1]
    full = count_flops(model, tuple(x.shape[1:]))

    def flops_at(ratio: float) -> int:
        plan = plan_graph_channels(model, x, lambda g: keep_count(g.width, ratio))
        kept = {gid: list(range(k)) for gid, k in plan.keep.items()}
        return count_flops(slim_groups(copy.deepcopy(model), x, kept, check=False), tuple(x.shape[1:]))

    ratio = ratio_for_flops(model, x, share, False)
    assert flops_at(ratio) <= share * full
    widths = [g.width for g in plan_graph_channels(model, x, lambda g: g.width).groups.values()]
    # the smallest ratio step that keeps one more unit somewhere
    step = min(((keep_count(w, ratio) + 0.5) / w - ratio for w in widths if keep_count(w, ratio) < w), default=None)
    if step is not None:
        assert flops_at(min(1.0, ratio + step + 1e-6)) > share * full


def test_a_flops_target_that_coarse_units_undershoot_is_named():
    """Two groups of 4 units: 0.5 of the FLOPs lands far below (keeping one more unit of each
    overshoots); the user is told what the plan reaches, and a target that is met closely is quiet."""
    import warnings

    from crossdistill.compression.channel_pruning import ratio_for_flops

    torch.manual_seed(0)
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"nearest plan at or under 0.5 of the FLOPs reaches 0\.(3|4[0-4])"):
        ratio_for_flops(model, x, 0.5, False, warn=True)  # as the uniform budget asks for it
    wide, _ = build("resnet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratio_for_flops(wide, x.new_zeros(1, 3, 32, 32), 0.5, False, warn=True)
        ratio_for_flops(model, x, 0.5, False)  # a global budget plans at the share itself: nothing to say


def test_a_flops_budget_that_allows_everything_prunes_nothing():
    teacher, student, few, _ = run("resnet", flops=1.0, solver="prune-only")
    assert params(student) == params(teacher)
    with torch.no_grad():
        assert torch.equal(student(few.images), teacher(few.images))


def test_a_model_that_cannot_be_traced_is_named_before_any_work():
    class Picky(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            if x.shape[0] == 1:  # works on the few-shot batch, not on one traced example
                raise RuntimeError("batch of one not supported")
            return self.fc(self.conv(x).mean((2, 3)))

    method = ChannelPruning(keep=0.5)
    method.prepare(torch.randn(4, 3, 8, 8))
    with pytest.raises(CrossDistillError, match=r"cannot trace Picky for channel pruning .*batch of one"):
        method.plan(Picky().eval())


@pytest.mark.parametrize("key", ["resnet", "mobilenet"])
def test_channels_last_images_and_model_give_the_default_layouts_student(key):
    # Images permuted from N×H×W×C (the usual way from an .npz) and a model moved to channels_last
    # have other strides, the same values: the groups and the student must not change.
    teacher, example = build(key)
    few = fewshot_for(example)
    cfg = CompressConfig(model=f"user-{key}", n_samples=len(few.labels), damping=0.01, keep=0.5)
    plain = compress(teacher, few, cfg, show_progress=False)
    strided = FewShot(images=few.images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), labels=few.labels,
                      indices=few.indices)
    assert not strided.images.is_contiguous()
    for model in (teacher, copy.deepcopy(teacher).to(memory_format=torch.channels_last)):
        other = compress(model, strided, cfg, show_progress=False)
        assert other.summary["channel_groups"]["left_whole"] == plain.summary["channel_groups"]["left_whole"]
        a, b = plain.student.state_dict(), other.student.state_dict()
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
        # Channels-last convs add in another order: float32 rounding apart, relative to each tensor's size.
        assert [k for k in a if a[k].is_floating_point()
                and float((a[k] - b[k]).abs().max()) > 1e-4 * float(a[k].abs().max().clamp_min(1e-12))] == []


class FrozenStem(torch.nn.Module):
    """A stem run without autograd history (torch.no_grad() or .detach()), then a prunable pair."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
        self.c1, self.c2 = torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.Conv2d(12, 12, 3, padding=1)
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "no_grad":
            with torch.no_grad():
                h = self.stem(x)
        else:
            h = self.stem(x).detach()
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(h)))).mean((2, 3)))


@pytest.mark.parametrize("how", ["no_grad", "detach"])
def test_layers_the_trace_cannot_reach_are_reported_as_left_whole(how):
    # no_grad stopped the trace with "'NoneType' object has no attribute '_sequence_nr'"; with
    # detach the stem's groups were missing from the report altogether.
    torch.manual_seed(0)
    cfg = CompressConfig(model="user-frozen", n_samples=12, keep=0.5)
    result = compress(FrozenStem(how).eval(), fewshot_for(torch.zeros(1, 3, 8, 8)), cfg, show_progress=False)
    groups = result.summary["channel_groups"]
    left = {g["producers"][0]: g["reason"] for g in groups["left_whole"]}
    assert left["stem.0"].startswith("not traced: its output does not reach the model's output through autograd")
    assert "stem.2" in left and [g["producers"] for g in groups["pruned"]] == [["c1"]]
    assert result.student.stem[2].out_channels == 8 and result.student.c2.in_channels == 6


def test_a_flops_target_on_a_model_with_nothing_to_prune_says_why():
    # It said "keeping one unit of every group leaves 1.000", which names no cause.
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    cfg = CompressConfig(model="user-tiny", n_samples=12, flops=0.5)
    with pytest.raises(CrossDistillError, match=r"has no channel group that can be pruned \(0 -> 4: feeds the classifier 4"):
        compress(teacher, fewshot_for(torch.zeros(1, 3, 8, 8)), cfg, show_progress=False)


def test_flops_targets_work_when_the_forward_slices_a_sequential():
    # `self.body[:2](x)` runs the layers through a container the model does not name: the FLOPs
    # of each layer are told apart by the module, not by the counter's call-path names.
    import crossdistill
    from torch import nn

    class Sliced(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body[2:](self.body[:2](x)).mean((2, 3)))

    torch.manual_seed(0)
    x = torch.randn(24, 3, 12, 12)
    for kw in ({"flops": 0.5}, {"keep": 0.5, "budget": "global"}):
        _, report = crossdistill.compress(Sliced().eval(), x, n_samples=12, show_progress=False, **kw)
        assert 0.35 < report["student"]["flops"] / report["teacher"]["flops"] < 0.55


def test_a_training_only_head_reading_pruned_channels_is_named_and_keeps_bn_train_out():
    # The trace runs in eval mode and never sees an Inception-style auxiliary head: its input
    # channels are pruned under it. The run says so, and a fine-tune in training mode is refused.
    import warnings

    import crossdistill
    from torch import nn

    class WithAuxHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
            self.fc, self.aux_head = nn.Linear(32, 10), nn.Linear(16, 10)

        def forward(self, x: torch.Tensor):
            a = self.stem(x)
            out = self.fc(self.body(a).mean((2, 3)))
            return (out, self.aux_head(a.mean((2, 3)))) if self.training else out

    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 12, 12), torch.arange(40) % 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student, _ = crossdistill.compress(WithAuxHead().eval(), x, labels=y, shots=2, keep=0.5, show_progress=False)
    assert any("runs in eval mode only: layers that run only in training mode (aux_head)" in str(w.message)
               for w in caught)
    assert student(x[:2]).shape == (2, 10)  # the student itself is fine in eval mode
    with pytest.raises(CrossDistillError, match="the fine-tune with bn 'train' runs the student in training mode"):
        crossdistill.compress(WithAuxHead().eval(), x, labels=y, shots=2, keep=0.5, finetune_epochs=1,
                              finetune_bn="train", show_progress=False)


class GroupNormNet(torch.nn.Module):
    """conv-GN blocks (GN groups of 4 channels) with a residual add, as a GN ResNet or a U-Net
    of a diffusion model has."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.c1, self.g1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.g2 = nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32)
        self.c3, self.g3 = nn.Conv2d(32, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.g1(self.c1(x)))
        r = torch.relu(self.g3(self.c3(torch.relu(self.g2(self.c2(h))))) + h)
        return self.fc(r.mean((2, 3)))


def test_a_groupnorm_model_is_pruned_by_whole_norm_groups_and_re_solved():
    import crossdistill

    torch.manual_seed(0)
    teacher = GroupNormNet().eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # off the init, so channels differ
    x = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    runs = {solver: crossdistill.compress(teacher, x, n_samples=32, keep=0.5, prune_classifier=True, solver=solver,
                                          eval_data=x[32:], show_progress=False) for solver in ("closed-form",
                                                                                               "prune-only")}
    student, report = runs["closed-form"]
    # Both groups lose half their GN groups; each norm keeps its group size of 4 channels.
    assert [(g.num_groups, g.num_channels) for g in (student.g1, student.g2, student.g3)] == [(2, 8), (4, 16), (2, 8)]
    assert {g["channels_per_unit"] for g in report["channel_groups"]["pruned"]} == {4}
    assert report["agreement"]["output_error"] < runs["prune-only"][1]["agreement"]["output_error"] / 5


def test_a_branch_the_traced_input_did_not_take_keeps_its_channels():
    """`a(x) if x[0].mean() > t else b(x)`: the trace runs one arm; pruning the channels the other
    arm reads and writes made the student fail on every input that took it. Those groups stay
    whole (with a warning), the rest is pruned, and the student runs on every input."""
    import warnings

    import crossdistill
    from torch import nn
    from torch.nn import functional as F

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c0, self.c1 = nn.Conv2d(3, 24, 3, padding=1), nn.Conv2d(24, 16, 3, padding=1)
            self.a, self.b = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
            self.c3, self.c4 = nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
            self.fc, self.threshold = nn.Linear(32, 10), 0.0

        def stem(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.c1(F.relu(self.c0(x))))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = F.relu(self.a(x)) if x[0].mean() > self.threshold else F.relu(self.b(x))
            return self.fc(F.relu(self.c4(F.relu(self.c3(x)))).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Branchy().eval(), torch.randn(120, 3, 12, 12)
    with torch.no_grad():
        model.threshold = float(torch.stack([model.stem(x[i:i + 1]).mean() for i in range(120)]).median())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student, report = crossdistill.compress(model, x[:60], labels=torch.arange(60) % 10, shots=3, keep=0.5,
                                                show_progress=False)
    assert any("did not run on the traced input, in eval or training mode: " in str(w.message) for w in caught)
    whole = {tuple(e["producers"]): e["reason"] for e in report["channel_groups"]["left_whole"]}
    assert "never ran" in whole[("c1",)]
    assert {tuple(e["producers"]) for e in report["channel_groups"]["pruned"]} >= {("c0",), ("c3",)}
    for i in range(60, 120):  # about half of these take the arm the trace did not
        student(x[i:i + 1])


def test_a_grouped_conv_that_reduces_channels_is_named_as_such_not_as_a_multiplier():
    """Conv2d(32, 16, groups=16) has two inputs a group: Torch-Pruning reads groups == out_channels as
    depthwise, and the group was left whole as 'depthwise conv ... has a channel multiplier'."""
    import crossdistill

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 16, 3, padding=1, groups=16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    with pytest.raises(CrossDistillError, match=r"grouped conv 2 reduces 32 channels to 16 \(16 groups of 2 inputs each\)"):
        crossdistill.compress(model, torch.randn(8, 3, 8, 8), n_samples=8, keep=0.5, show_progress=False)


def test_a_group_scaled_by_a_registered_buffer_names_the_buffer():
    """`x * self.scale` with a (1, C, 1, 1) buffer: the trace follows parameters, not buffers, so the
    slimmed model fails on it; the group was left whole as 'a channel map the trace got wrong'."""
    import crossdistill

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.register_buffer("scale", torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)) * self.scale)).mean((2, 3)))

    torch.manual_seed(0)
    with pytest.raises(CrossDistillError) as err:  # nothing else to prune: c2's output feeds the classifier
        crossdistill.compress(Scaled().eval(), torch.randn(8, 3, 8, 8), n_samples=8, keep=0.5, show_progress=False)
    assert "the forward uses buffer scale (1, 8, 1, 1) itself, which slimming does not cut" in str(err.value)


class _OwnConv(torch.nn.modules.conv._ConvNd):
    """A conv of its own kind on torch's conv base class: not one the solvers know."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, (3, 3), (1, 1), (1, 1), (1, 1), False, (0, 0), 1, True, "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.weight, self.bias, padding=1)


def test_a_group_read_by_a_conv_the_solvers_do_not_know_is_left_whole():
    # Such a reader cannot be re-solved on the kept channels: pruning its input by the producers'
    # norms alone (as for a depthwise reader) wrecked the output without a word.
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.own, self.fc = _OwnConv(8, 8), torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.own(torch.relu(self.c2(torch.relu(self.c1(x)))))).mean((2, 3)))

    torch.manual_seed(0)
    cfg = CompressConfig(model="user-mixed", n_samples=12, keep=0.5)
    result = compress(Net().eval(), fewshot_for(torch.zeros(1, 3, 8, 8)), cfg, show_progress=False)
    left = {g["producers"][0]: g["reason"] for g in result.summary["channel_groups"]["left_whole"]}
    assert left["c2"] == "read by _OwnConv own: only convs and Linear readers can be re-solved"
    assert result.student.c2.in_channels == 4 and result.student.own.in_channels == 8


def test_a_frozen_batchnorm_of_buffers_is_named_with_the_way_out():
    """detectron2's FrozenBatchNorm2d (statistics as buffers, its own forward) ties its channels;
    the refusal says how to make them prunable."""
    from torch import nn

    import crossdistill
    from crossdistill.errors import CrossDistillError

    class FrozenBN(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            for k in ("weight", "bias", "running_mean", "running_var"):
                self.register_buffer(k, torch.ones(n) if k in ("weight", "running_var") else torch.zeros(n))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = self.weight * (self.running_var + 1e-5).rsqrt()
            return x * scale.reshape(1, -1, 1, 1) + (self.bias - self.running_mean * scale).reshape(1, -1, 1, 1)

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), FrozenBN(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    with pytest.raises(CrossDistillError, match=r"buffer 1.running_mean \(16,\).*replace it with an nn.BatchNorm2d "
                                                r"holding the same statistics"):
        crossdistill.compress(model, torch.randn(20, 3, 8, 8), labels=torch.arange(20) % 4, shots=2, flops=0.5,
                              show_progress=False)
