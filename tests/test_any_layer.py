"""Sparsity, quantization and low rank on any conv or linear: depthwise and grouped convs (one
quadratic problem per conv group), a linear head after flatten, an all-linear MLP and a
TransformerEncoderLayer over tokens; every layer listed in the report with its status."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_graph_channels import DenseNet, ResNet, ShuffleNet  # residual add, concat, split + shuffle
from torch import nn

from crossdistill.capture import all_layer_inputs, dense_weight_matrix, get_module, group_size, unfold, weight_matrix
from crossdistill.compression.coverage import CompressionWarning
from crossdistill.compression.low_rank import LowRank, LowRankLayer, empty_factorisation, factorise, restore_lowrank
from crossdistill.compression.quantization import QUANT_ATTR, dequantized_weight
from crossdistill.compression.weight_sparsity import group_shares
from crossdistill.config import CompressConfig
from crossdistill.engine import distill_layers
from crossdistill.errors import CrossDistillError
from crossdistill.layer_solve import merge_group_infos
from crossdistill.moments import MomentAccumulator
from crossdistill.objectives import create_objective
from crossdistill.pipeline import FewShot, compress
from crossdistill.solvers import LayerTask, create_solver
from crossdistill.solvers.quant_grid import code_range
from crossdistill.solvers.sparse_masks import prune_count


class InvertedResidual(nn.Module):
    """MobileNetV2-style: stem, 1×1 expand, 3×3 depthwise, 1×1 project, residual, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 8, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn0(self.stem(x)))
        y = F.relu6(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.dw(y)))
        x = x + self.bn3(self.project(y))
        return self.fc(x.mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.gconv = nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gconv(torch.relu(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class FlattenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.flatten(x, 1))


class SamePadding(nn.Module):
    """padding='same' with an even kernel (uneven: torch pads one more at the bottom/right), with
    dilation, and 'valid'."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 4, padding="same")
        self.dilated = nn.Conv2d(6, 8, 3, padding="same", dilation=2)
        self.valid = nn.Conv2d(8, 8, (2, 3), padding="valid")
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.valid(torch.relu(self.dilated(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Tokens(nn.Module):
    """(batch, tokens, features) → embedding → TransformerEncoderLayer → mean over tokens → head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 16)
        self.block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


class Signal(nn.Module):
    """Conv1d on (batch, channels, length): a strided stem, a depthwise, a grouped and a 'same'
    even-kernel conv, a residual add, a flatten into the head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, 8, 5, stride=2, padding=2)
        self.bn0 = nn.BatchNorm1d(8)
        self.dw = nn.Conv1d(8, 8, 3, padding=1, groups=8, bias=False)
        self.gconv = nn.Conv1d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.same = nn.Conv1d(8, 6, 4, padding="same")
        self.head = nn.Linear(6 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = x + F.relu(self.gconv(F.relu(self.dw(x))))
        return self.head(F.adaptive_avg_pool1d(F.relu(self.same(x)), 4).flatten(1))


MODELS = {
    "residual": (ResNet, (3, 8, 8)),
    "concat": (DenseNet, (3, 8, 8)),
    "split_shuffle": (ShuffleNet, (3, 8, 8)),
    "depthwise": (InvertedResidual, (3, 8, 8)),
    "grouped": (Grouped, (3, 8, 8)),
    "flatten_head": (FlattenHead, (3, 8, 8)),
    "same_padding": (SamePadding, (3, 8, 8)),
    "mlp": (MLP, (20,)),
    "transformer": (Tokens, (6, 12)),
    "conv1d": (Signal, (2, 16)),
}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model = cls()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # non-trivial statistics
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))
    return model.eval(), x


def qkv_names() -> list[str]:
    return [f"block.self_attn.{p}_proj" for p in "qkv"]


def layers_of(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def run(name: str, method: str, **settings):
    teacher, x = build(name)
    cfg = CompressConfig(model=name, method=method, shots=8, **settings).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        result = compress(teacher, FewShot(x, torch.arange(32) % 4, np.arange(32)), cfg, show_progress=False)
    entries = {e["name"]: e for e in result.summary[method]["layers"]}
    # Every conv and linear (and an attention's q/k/v projections) is listed, with its status.
    expected = set(layers_of(teacher)) | (set(qkv_names()) if name == "transformer" else set())
    assert set(entries) == expected
    for e in entries.values():
        assert e["status"] != "planned"
        assert (e["status"] == "skipped") == ("reason" in e)
    with torch.inference_mode():  # the fused fast paths too (they read the weights themselves)
        out_t, out_s = teacher(x), result.student(x)
    assert out_s.shape == out_t.shape and bool(torch.isfinite(out_s).all())
    return teacher, result.student, entries, out_t, out_s


@pytest.mark.parametrize("name", MODELS)
def test_sparsity_on_any_layer(name):
    teacher, student, entries, _, _ = run(name, "sparsity", sparsity=0.5)
    pruned = [n for n, e in entries.items() if e["status"] == "pruned"]
    assert pruned
    for n in pruned:
        w = get_module(student, n).weight
        assert int((w == 0).sum()) == prune_count(w.numel(), 0.5), n  # exact, also over conv groups
    for n, e in entries.items():
        if e["status"] == "skipped" and n in layers_of(teacher):
            assert torch.equal(student.get_submodule(n).weight, teacher.get_submodule(n).weight)
    # Defaults: the first conv and the classifier stay dense, and say so.
    convs = [n for n, m in teacher.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    last = [n for n, m in teacher.named_modules() if isinstance(m, nn.Linear)][-1]
    assert entries[last]["reason"].startswith("the last linear") and "prune_last" in entries[last]["reason"]
    if convs:
        assert "prune_first" in entries[convs[0]]["reason"]
    if name == "transformer":
        assert {"block.self_attn.out_proj", "block.linear1", "block.linear2", "embed", *qkv_names()} <= set(pruned)
        packed = teacher.block.self_attn.in_proj_weight
        assert int((student.block.self_attn.in_proj_weight == 0).sum()) == 3 * prune_count(packed.numel() // 3, 0.5)
    if name == "depthwise":
        assert "dw" in pruned


@pytest.mark.parametrize("name", ["grouped", "mlp"])
def test_sparsity_prune_first_and_last(name):
    teacher, student, entries, _, _ = run(name, "sparsity", sparsity=0.5, prune_first=True, prune_last=True)
    assert all(e["status"] == "pruned" for e in entries.values())


@pytest.mark.parametrize("name", MODELS)
def test_sparsity_zero_reproduces_the_outputs(name):
    _, _, _, out_t, out_s = run(name, "sparsity", sparsity=0.0)
    torch.testing.assert_close(out_s, out_t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_quantization_on_any_layer(name):
    teacher, student, entries, _, _ = run(name, "quant", bits=4)
    quantized = [n for n, e in entries.items() if e["status"] == "quantized"]
    expected = layers_of(teacher)  # quant_first / quant_last default to True
    if name == "transformer":  # the attention's q/k/v come before its out_proj
        at = expected.index("block.self_attn.out_proj")
        expected = expected[:at] + qkv_names() + expected[at:]
    assert quantized == expected
    codes = getattr(student, QUANT_ATTR)
    assert sorted(codes) == sorted(quantized)
    for n in quantized:
        e = codes[n]
        lo, hi = code_range(4, e["scheme"])
        assert int(e["codes"].min()) >= lo and int(e["codes"].max()) <= hi
        assert torch.equal(dequantized_weight(e), get_module(student, n).weight.detach()), n
        assert entries[n]["bits"] == 4


@pytest.mark.parametrize("name", MODELS)
def test_eight_bits_nearly_reproduce_the_outputs(name):
    _, _, _, out_t, out_s = run(name, "quant", bits=8)
    assert float((out_s - out_t).abs().max()) <= 0.02 * float(out_t.abs().max())


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_low_rank_on_any_layer(name):
    teacher, student, entries, _, _ = run(name, "lowrank", rank_ratio=0.5, lowrank_first=True, lowrank_last=True)
    factorised = [n for n, e in entries.items() if e["status"] == "factorised"]
    assert factorised and n_params(student) < n_params(teacher)
    for n in factorised:
        assert isinstance(student.get_submodule(n), LowRankLayer)
    if name == "depthwise":
        assert "would not make it cheaper" in entries["dw"]["reason"]  # rank 1 per group is full rank
    if name == "grouped":
        layer = student.get_submodule("gconv")
        assert layer[0].groups == layer[1].groups == 2 and layer.rank == 2 * entries["gconv"]["rank"]
    if name == "transformer":
        for n, owner in [("block.self_attn.out_proj", "MultiheadAttention"), ("block.linear1", "TransformerEncoderLayer"),
                         ("block.linear2", "TransformerEncoderLayer"), ("block.self_attn.q_proj", "in_proj_weight")]:
            assert entries[n]["status"] == "skipped" and owner in entries[n]["reason"]
            assert isinstance(get_module(student, n), nn.Linear)


@pytest.mark.parametrize("name", MODELS)
def test_full_rank_reproduces_the_outputs(name):
    """Rank = full per group: the plan refuses it (nothing gets cheaper), so the tasks are given
    directly; the factorised model must compute what the teacher computes."""
    teacher, x = build(name)
    student = copy.deepcopy(teacher)
    method = LowRank(rank_ratio=1.0)
    tasks = []
    for n in layers_of(teacher):
        layer = teacher.get_submodule(n)
        if name == "transformer" and n.startswith("block."):
            continue  # read by their parents: never factorised
        groups = getattr(layer, "groups", 1)
        full = min(layer.weight.shape[0] // groups, layer.weight[0].numel())
        tasks.append(LayerTask(name=n, group=group_size(layer), params={"rank": full}))
    recs = distill_layers(teacher, student, x, tasks, create_objective("mixed", mu=0.9), create_solver("lowrank", "svd"),
                          damping=1e-3)
    student = method.finalize(student, recs)
    assert all(isinstance(student.get_submodule(t.name), LowRankLayer) for t in tasks)
    with torch.inference_mode():
        torch.testing.assert_close(student(x), teacher(x), rtol=1e-4, atol=1e-4)


def test_grouped_low_rank_reloads():
    teacher, x = build("grouped")
    _, student, _, _, out_s = run("grouped", "lowrank", rank_ratio=0.5, lowrank_first=True, lowrank_last=True)
    fresh = copy.deepcopy(teacher)
    restore_lowrank(fresh, student.crossdistill_lowrank)
    fresh.load_state_dict(student.state_dict())
    assert student.crossdistill_lowrank["gconv"]["groups"] == 2
    with torch.inference_mode():
        assert torch.equal(fresh(x), out_s)


def test_factorise_grouped_conv_is_exact_at_full_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 9, 3, padding=1, groups=3)
    x = torch.randn(2, 6, 5, 5)
    fac = factorise(conv, 3)
    assert isinstance(fac, LowRankLayer) and fac[0].groups == fac[1].groups == 3
    torch.testing.assert_close(fac(x), conv(x), rtol=1e-5, atol=1e-5)
    assert empty_factorisation(conv, 2)[0].weight.shape == (6, 2, 3, 3)


def test_group_moments_are_the_diagonal_blocks_of_the_dense_moments():
    """A conv group's H comes from its own unfolded input channels: the diagonal blocks of the
    moments of an ungrouped conv over the same input."""
    torch.manual_seed(0)
    grouped, dense = nn.Conv2d(6, 4, 3, padding=1, groups=2), nn.Conv2d(6, 4, 3, padding=1)
    xt, xs = torch.randn(5, 6, 7, 7), torch.randn(5, 6, 7, 7)
    a, b = MomentAccumulator(grouped, chunk_images=2), MomentAccumulator(dense)
    a.add(xt, xs)
    b.add(xt, xs)
    full, parts = b.finish(), a.finish_groups()
    d = 3 * 9
    for g, m in enumerate(parts):
        blk = slice(g * d, (g + 1) * d)
        for key in ("tt", "ss", "ts"):
            torch.testing.assert_close(getattr(m, key), getattr(full, key)[blk, blk], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="finish_groups"):
        a.finish()


def test_attention_out_proj_input_is_captured():
    """out_proj is applied inside F.multi_head_attention_forward, never called; its captured
    input must be what that function feeds it."""
    teacher, x = build("transformer")
    emb = teacher.embed(x).detach()
    inputs = all_layer_inputs(teacher, ["block.self_attn.out_proj"], [x])["block.self_attn.out_proj"][0]
    mha = teacher.block.self_attn
    with torch.no_grad():
        ref = mha(emb, emb, emb, need_weights=False)[0]
    proj = mha.out_proj
    torch.testing.assert_close(F.linear(inputs, proj.weight, proj.bias), ref, rtol=1e-5, atol=1e-5)
    assert isinstance(mha.out_proj, nn.Linear)  # put back


def test_packed_projection_and_parent_read_layers_warn_by_name():
    teacher, x = build("transformer")
    cfg = CompressConfig(model="tokens", method="lowrank", shots=8, lowrank_first=True, lowrank_last=True).validate()
    with pytest.warns(CompressionWarning, match=r"block\.self_attn\.q_proj.*block\.self_attn\.out_proj"):
        compress(teacher, FewShot(x, torch.arange(32) % 4, np.arange(32)), cfg, show_progress=False)


@pytest.mark.parametrize("kernel, dilation, padding", [(4, 1, "same"), ((2, 3), 2, "same"), (3, 1, "same"),
                                                       (3, 1, "valid"), (3, 1, (1, 2))])
def test_unfolded_input_reproduces_the_conv_for_any_padding(kernel, dilation, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, kernel, padding=padding, dilation=dilation, bias=False)
    x = torch.randn(2, 3, 7, 8)
    y = conv(x).permute(0, 2, 3, 1).reshape(-1, 5)
    torch.testing.assert_close(unfold(conv, x) @ weight_matrix(conv).T, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, stride, dilation, padding, groups", [
    (4, 1, 1, "same", 1), (3, 2, 1, 1, 1), (3, 1, 2, "same", 2), (3, 1, 1, "valid", 1), (1, 1, 1, 0, 1)])
def test_unfolded_input_reproduces_a_conv1d(kernel, stride, dilation, padding, groups):
    # A Conv1d is solved as the height-1 Conv2d it equals: its columns in (channel, tap) order.
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 6, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=False)
    x = torch.randn(2, 4, 11)
    y = conv(x).permute(0, 2, 1).reshape(-1, 6)
    torch.testing.assert_close(unfold(conv, x) @ dense_weight_matrix(conv).T, y, rtol=1e-5, atol=1e-5)
    assert group_size(conv) == kernel


def test_group_shares_add_up_to_the_layer_count():
    dw = nn.Conv2d(16, 16, 3, groups=16)
    shares = group_shares(dw, 0.5)
    counts = [prune_count(9, s["sparsity"]) for s in shares]
    assert sum(counts) == prune_count(16 * 9, 0.5) and set(counts) == {4, 5}
    assert group_shares(nn.Conv2d(4, 4, 3), 0.5) is None
    # never a whole group: a filter of 9 weights keeps at least one
    assert max(prune_count(9, s["sparsity"]) for s in group_shares(dw, 0.99)) == 8


def test_group_infos_merge():
    merged = merge_group_infos([
        {"bits": 4, "scale": [1.0], "rtn_rows": 1, "sparsity_solved": 0.5, "mask": "obc", "x": 1},
        {"bits": 4, "scale": [2.0], "rtn_rows": 1, "sparsity_solved": 0.25, "mask": "obc", "x": 2},
    ])
    assert merged == {"bits": 4, "scale": [1.0, 2.0], "rtn_rows": 2, "sparsity_solved": 0.375, "mask": "obc",
                      "x": [1, 2]}


class AuxHead(nn.Module):
    """An auxiliary classifier used only in training (as in Inception's): eval never runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.aux = nn.Linear(8, 4)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        y = self.fc(torch.relu(self.c2(h)).mean((2, 3)))
        return y + self.aux(h.mean((2, 3))) if self.training else y


@pytest.mark.parametrize("method, settings, done", [("sparsity", {"sparsity": 0.5}, "pruned"), ("quant", {"bits": 4}, "quantized"),
                                                     ("lowrank", {"rank_ratio": 0.5}, "factorised")])
def test_a_layer_the_forward_never_runs_is_left_as_it_is_and_named(method, settings, done):
    torch.manual_seed(0)
    teacher = AuxHead().eval()
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = CompressConfig(model="aux", method=method, shots=8, **settings).validate()
    with pytest.warns(CompressionWarning, match="never reached by the forward pass in eval mode.*: aux"):
        result = compress(teacher, FewShot(x, torch.arange(32) % 4, np.arange(32)), cfg, show_progress=False)
    entries = {e["name"]: e for e in result.summary[method]["layers"]}
    assert entries["aux"]["status"] == "skipped" and "never reached" in entries["aux"]["reason"]
    assert entries["c2"]["status"] == done
    assert torch.equal(result.student.aux.weight, teacher.aux.weight)


class SharedConv(nn.Module):
    """One conv applied twice (shared weights): its two calls see different inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("capture", ["all", "stream", "disk"])
def test_a_layer_run_twice_is_solved_on_both_calls(capture):
    """Shared weights: the layer's loss is summed over its calls. c1 (the first conv) stays as it
    is, so c2's student inputs are its teacher inputs, and the solve is a least-squares fit on
    the mask over the patches of both calls, which is checked here from hooks on the layer."""
    torch.manual_seed(0)
    teacher = SharedConv().eval()
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = CompressConfig(model="shared", method="sparsity", shots=10, sparsity=0.5, damping=1e-6, batch_size=16,
                         capture=capture).validate()
    result = compress(teacher, FewShot(x, torch.arange(40) % 4, np.arange(40)), cfg, show_progress=False)
    entries = {e["name"]: e for e in result.summary["sparsity"]["layers"]}
    assert entries["c2"]["status"] == "pruned"
    received: list[torch.Tensor] = []
    handle = teacher.c2.register_forward_pre_hook(lambda m, a: received.append(a[0].detach().clone()))
    with torch.no_grad():
        teacher(x)
    handle.remove()
    assert len(received) == 2
    X = torch.cat([unfold(teacher.c2, r) for r in received]).double()
    H = X.T @ X / X.shape[0]
    H += 1e-6 * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    w_t = weight_matrix(teacher.c2).double()
    w = weight_matrix(result.student.c2).double()
    B = w_t @ H
    for r in range(w.shape[0]):
        keep = w[r] != 0
        ls = torch.linalg.solve(H[keep][:, keep], B[r, keep])
        torch.testing.assert_close(w[r, keep], ls, rtol=1e-4, atol=1e-6)


class StandardisedConv(nn.Conv2d):
    """Weight standardisation (as in BiT's StdConv2d): the weight that runs is not `weight`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Five(nn.Module):
    def __init__(self, special: str) -> None:
        super().__init__()
        conv = StandardisedConv if special == "own_forward" else nn.Conv2d
        self.c0, self.c1 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c2, self.c3 = conv(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        if special == "weight_norm":
            torch.nn.utils.parametrizations.weight_norm(self.c2)
        if special == "spectral_norm":
            torch.nn.utils.spectral_norm(self.c2)
        if special == "old_weight_norm":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.nn.utils.weight_norm(self.c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in (self.c0, self.c1, self.c2, self.c3):
            x = torch.relu(c(x))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("special, kind", [("old_weight_norm", "weight_norm"), ("spectral_norm", "spectral_norm")])
def test_a_model_with_torchs_older_weight_norm_is_refused_with_what_to_do(special, kind):
    teacher = Five(special).eval()
    teacher(torch.randn(1, 3, 8, 8))  # a forward leaves the computed weight that deepcopy rejects
    cfg = CompressConfig(model="five", method="sparsity", shots=1).validate()
    with pytest.raises(CrossDistillError, match=rf"layers \['c2'\] use torch.nn.utils.{kind} .*remove_{kind}\(layer\)"):
        compress(teacher, FewShot(torch.randn(4, 3, 8, 8), torch.arange(4), np.arange(4)), cfg, show_progress=False)


@pytest.mark.parametrize("special, reason", [("weight_norm", "computed by a parametrization"),
                                             ("own_forward", "StandardisedConv with a forward of its own")])
def test_a_layer_whose_weight_is_not_what_runs_is_left_whole(special, reason):
    """Writing a solved weight there would not change what runs (weight norm recomputes it), or
    would be solved for the wrong map (weight standardisation)."""
    torch.manual_seed(0)
    teacher = Five(special).eval()
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    few = FewShot(x, torch.arange(32) % 4, np.arange(32))
    cfg = CompressConfig(model="five", method="sparsity", shots=8, sparsity=0.5).validate()
    with pytest.warns(CompressionWarning, match=reason):
        result = compress(teacher, few, cfg, show_progress=False)
    entries = {e["name"]: e for e in result.summary["sparsity"]["layers"]}
    assert entries["c2"]["status"] == "skipped" and reason in entries["c2"]["reason"]
    assert entries["c1"]["status"] == entries["c3"]["status"] == "pruned"
    for (k, v), (_, t) in zip(result.student.c2.state_dict().items(), teacher.c2.state_dict().items()):
        assert torch.equal(v, t), k
    # Channel pruning leaves every group that touches c2 whole, and prunes the others.
    cfg = CompressConfig(model="five", method="channels", shots=8, keep=0.5).validate()
    result = compress(teacher, few, cfg, show_progress=False)
    groups = result.summary["channel_groups"]
    assert any("layer c2" in g["reason"] and reason in g["reason"] for g in groups["left_whole"])
    assert [g["producers"] for g in groups["pruned"]] == [["c0"]]
    with torch.inference_mode():
        assert result.student(x).shape == (32, 4)


class DefinedBackwards(nn.Module):
    """The classifier defined first, the stem conv last, and a training-only head after them:
    module order says nothing about which layer is the first conv or the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(6, 4)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 6), nn.ReLU())
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.aux = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(torch.relu(self.stem(x))))


@pytest.mark.parametrize("method, settings", [("sparsity", {"sparsity": 0.5}), ("lowrank", {"rank_ratio": 0.5}),
                                              ("quant", {"bits": 4, "quant_first": False, "quant_last": False})])
def test_the_first_conv_and_the_classifier_are_found_by_the_forward_pass(method, settings):
    torch.manual_seed(0)
    teacher = DefinedBackwards().eval()
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = CompressConfig(model="backwards", method=method, shots=8, **settings).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        result = compress(teacher, FewShot(x, torch.arange(32) % 4, np.arange(32)), cfg, show_progress=False)
    entries = {e["name"]: e for e in result.summary[method]["layers"]}
    assert "the first conv" in entries["stem"]["reason"] and "the classifier" in entries["classifier"]["reason"]
    assert entries["body.0"]["status"] != "skipped" and entries["body.4"]["status"] != "skipped"
    assert "never reached" in entries["aux"]["reason"]


class FunctionalConv(nn.Module):
    """A conv written as F.conv2d with its own parameters, and a position embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 8, 8, 8) * 0.1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(F.conv2d(torch.relu(self.c1(x)) + self.pos, self.w, padding=1))
        return self.fc(torch.relu(self.c2(h)).mean((2, 3)))


@pytest.mark.parametrize("method, settings", [("sparsity", {"sparsity": 0.5}), ("quant", {"bits": 4}),
                                              ("lowrank", {"rank_ratio": 0.25})])
def test_weights_outside_any_layer_are_named_as_left_alone(method, settings):
    # A weight no Conv2d/Linear holds has no captured input: it stays as it is, and says so.
    torch.manual_seed(0)
    teacher = FunctionalConv().eval()
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = CompressConfig(model="functional", method=method, shots=8, **settings).validate()
    # One reason said once for the weights it covers (a ViT's blocks each repeated it).
    with pytest.warns(CompressionWarning, match=r"left uncompressed: w, pos \(a bare parameter of the model itself"):
        result = compress(teacher, FewShot(x, torch.arange(32) % 4, np.arange(32)), cfg, show_progress=False)
    entries = {e["name"]: e for e in result.summary[method]["layers"]}
    assert entries["w"]["status"] == "skipped" and "F.conv2d" in entries["w"]["reason"]
    assert entries["pos"]["status"] == "skipped"
    assert entries["c2"]["status"] != "skipped"
    assert torch.equal(result.student.w, teacher.w)


def test_a_group_read_by_a_functional_conv_says_so():
    torch.manual_seed(0)
    teacher = FunctionalConv().eval()
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = CompressConfig(model="functional", shots=8, keep=0.5).validate()
    with pytest.raises(CrossDistillError, match=r"c1: .*called as F.conv2d/F.conv1d, not through an nn.Conv2d"):
        compress(teacher, FewShot(x, torch.arange(32) % 4, np.arange(32)), cfg, show_progress=False)


class ParallelStem(nn.Module):
    """Three convs of several widths read the image itself (an Inception stem, a text CNN's
    convs after a wrapper's embedding): each is a first conv."""

    def __init__(self) -> None:
        super().__init__()
        self.b3, self.b5, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 5, padding=2), nn.Conv2d(3, 4, 1)
        self.mix = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.cat([self.b3(x), self.b5(x), self.b1(x)], 1))
        return self.fc(torch.relu(self.mix(h)).mean((2, 3)))


@pytest.mark.parametrize("method, settings, first", [("sparsity", {"sparsity": 0.5}, "prune_first"),
                                                     ("lowrank", {"rank_ratio": 0.5}, "lowrank_first")])
def test_every_conv_that_reads_the_input_is_a_first_conv(method, settings, first):
    # Only b3 was kept dense by default; b5 and b1 read the same raw input.
    torch.manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = CompressConfig(model="stem", method=method, shots=4, **settings).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        result = compress(ParallelStem().eval(), FewShot(x, torch.arange(16) % 4, np.arange(16)), cfg,
                          show_progress=False)
    entries = {e["name"]: e for e in result.summary[method]["layers"]}
    assert entries["b3"]["reason"] == f"the first conv ({first}=False)"
    for n in ("b5", "b1"):
        assert entries[n]["reason"] == f"a first conv: it reads the model's input too ({first}=False)"
    assert entries["mix"]["status"] in ("pruned", "factorised")


def test_the_output_conv_of_a_dense_model_is_kept_like_a_classifier_and_only_stems_are_first_convs():
    import crossdistill

    class Seg(nn.Module):
        """Ends in a 1x1 conv of per-pixel logits: its output layer is a conv, not a Linear."""

        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.c2(torch.relu(self.c1(x)))))

    class Video(nn.Module):
        """A Conv3d reads the input; the Conv2d after it is no stem."""

        def __init__(self) -> None:
            super().__init__()
            self.c3d = nn.Conv3d(3, 8, (2, 3, 3), padding=(0, 1, 1))
            self.c2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.c2(self.c3d(x)[:, :, 0])).mean((2, 3)))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, seg = crossdistill.compress(Seg().eval(), torch.randn(12, 3, 8, 8), n_samples=6, method="sparsity",
                                       sparsity=0.5, show_progress=False)
        _, video = crossdistill.compress(Video().eval(), torch.randn(12, 3, 2, 8, 8), n_samples=6, method="sparsity",
                                         sparsity=0.5, show_progress=False)
    seg_rows = {row["name"]: row for row in seg["sparsity"]["layers"]}
    # The head was sparsified: only "the last Linear" was kept, and this model has none.
    assert seg_rows["head"]["reason"] == "the last layer, the output head (prune_last=False)"
    assert seg_rows["c2"]["status"] != "skipped" and seg_rows["c1"]["reason"] == "the first conv (prune_first=False)"
    video_rows = {row["name"]: row for row in video["sparsity"]["layers"]}
    # c2 was called "the first conv" (the first Conv2d anywhere) and kept dense.
    assert video_rows["c2"]["status"] != "skipped"
    assert video_rows["c3d"]["reason"] == "the first conv (prune_first=False)"


def test_an_unsupported_output_layer_is_not_replaced_by_the_one_before_it_as_the_last():
    """A generator whose output conv is reflect-padded (unsupported): the transposed conv before
    it was kept dense as 'the last layer, the output head'; a reflect-padded stem likewise."""
    class Gen(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
            self.c1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
            self.out = nn.Conv2d(8, 3, 3, padding=1, padding_mode="reflect")

        def forward(self, x):
            h = torch.relu(self.c1(torch.relu(self.stem(x))))
            return torch.tanh(self.out(torch.relu(self.up(h))))

    torch.manual_seed(0)
    rows = _sparsity_rows(Gen().eval(), torch.randn(8, 3, 8, 8))
    assert rows["up"]["status"] == "pruned" and rows["c1"]["status"] == "pruned"
    assert rows["out"]["reason"].startswith("unsupported") and rows["stem"]["reason"].startswith("unsupported")


def test_a_supported_output_head_stays_dense_beside_an_unsupported_one_run_after_it():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
            self.seg = nn.Conv2d(16, 5, 1)
            self.depth = nn.Conv2d(16, 1, 3, padding=1, padding_mode="reflect")

        def forward(self, x):
            h = torch.relu(self.c1(torch.relu(self.c0(x))))
            return torch.cat([self.seg(h), self.depth(h)], 1)

    torch.manual_seed(0)
    rows = _sparsity_rows(TwoHeads().eval(), torch.randn(8, 3, 8, 8))
    assert rows["seg"]["reason"] == "the last layer, the output head (prune_last=False)"
    assert rows["c1"]["status"] == "pruned"


def _sparsity_rows(model: nn.Module, x: torch.Tensor, **settings: object) -> dict[str, dict]:
    """The sparsity report's layer rows, by name, of `model` compressed at 0.5 from all of `x`."""
    import crossdistill

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, report = crossdistill.compress(model, x, n_samples=len(x), method="sparsity", sparsity=0.5,
                                          show_progress=False, **settings)
    return {r["name"]: r for r in report["sparsity"]["layers"]}


@pytest.mark.parametrize("prelude", ["normalise", "in-place", "reshape"])
def test_a_stem_after_the_forwards_own_normalisation_is_still_the_first_conv(prelude):
    """The first conv was the one reading the input tensor itself: a forward that normalised its
    input first (`(x - mean) / std`), or reshaped a latent, had its stem sparsified. A forward
    that changes its input in place (which autograd refuses to follow) is read the plain way."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if prelude == "normalise":
                x = (x - 0.5) / 0.25
            elif prelude == "in-place":
                x.mul_(1.0)
            else:
                x = x.reshape(-1, 3, 8, 8)
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))

    torch.manual_seed(0)
    x = torch.randn(16, 3 * 64) if prelude == "reshape" else torch.randn(16, 3, 8, 8)
    rows = _sparsity_rows(Net().eval(), x)
    assert rows["c1"]["reason"] == "the first conv (prune_first=False)" and rows["c2"]["status"] == "pruned"


@pytest.mark.parametrize("key, kept", [(None, "fc"), ("aux", "aux")])
def test_the_last_layer_kept_dense_is_the_one_making_the_scored_output(key, kept):
    """A model returning {'logits': fc(f), 'aux': aux(f)} runs its auxiliary head last: sparsity
    kept that head dense as 'the classifier' and pruned the real one."""
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.fc, self.aux = nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            f = torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3))
            return {"logits": self.fc(f), "aux": self.aux(f)}

    torch.manual_seed(0)
    rows = _sparsity_rows(TwoHeads().eval(), torch.randn(16, 3, 8, 8), output_key=key)
    other = "aux" if kept == "fc" else "fc"
    assert rows[kept]["reason"] == "the last linear, the classifier (prune_last=False)"
    assert rows[other]["status"] == "pruned"


def test_a_conv_after_a_residual_from_the_input_is_not_a_first_conv():
    """`y = x + c1(x); y = y + c2(y)`: every conv had a layer-free path back to the input and was
    kept dense as 'a first conv', so sparsity found nothing to prune. Only a conv whose input is
    the input alone, through no layer on any path, is a stem."""
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.c3 = (nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x + self.c1(x)
            y = y + self.c2(torch.relu(y))
            y = y + self.c3(torch.relu(y))
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    rows = _sparsity_rows(Residual().eval(), torch.randn(16, 4, 8, 8))
    assert rows["c1"]["reason"] == "the first conv (prune_first=False)"
    assert rows["c2"]["status"] == rows["c3"]["status"] == "pruned"


def test_a_forward_checkpointed_out_of_the_graph_keeps_its_classifier_dense():
    """Layers run inside a reentrant checkpoint leave no graph to follow: the walk from the
    predictions passed them and named the stem 'the last layer'. The output layers are not used
    then, and the last layer is the one run last."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.relu(self.c1(x))
            if torch.is_grad_enabled():
                f = checkpoint(lambda t: torch.relu(self.c2(t)), f, use_reentrant=True)
                return checkpoint(lambda t: self.fc(t.mean((2, 3))), f, use_reentrant=True)
            return self.fc(torch.relu(self.c2(f)).mean((2, 3)))

    torch.manual_seed(0)
    rows = _sparsity_rows(Checkpointed().eval(), torch.randn(16, 3, 8, 8))
    assert rows["fc"]["reason"] == "the last linear, the classifier (prune_last=False)"
    assert rows["c1"]["reason"] == "the first conv (prune_first=False)"
