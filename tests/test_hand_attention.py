"""Attentions written by hand (compression/hand_attention.py): recognised only when their outputs
are a standard attention's, their heads pruned as channel groups, slimmed into a module that
equals the masked one, counted, saved and loaded; the same weights as an nn.MultiheadAttention
give the same student."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crossdistill
from crossdistill.compression.coverage import CompressionWarning
from crossdistill.compression.flops import FlopModel
from crossdistill.compression.graph_channels import channel_groups, mask_groups, slim_groups
from crossdistill.compression import graph_groups
from crossdistill.compression.graph_groups import HEAD_ROWS
from crossdistill.compression.graph_plan import plan_graph_channels
from crossdistill.compression.hand_attention import HandHeadsAttention, hand_attentions
from crossdistill.errors import CrossDistillError
from crossdistill.flop_counter import counting_flops

E, H, T = 24, 4, 6


class Packed(nn.Module):
    """timm's Attention: one qkv Linear, rows (3, heads, d) or, with `per_head`, (heads, 3, d)."""

    def __init__(self, per_head: bool = False, causal: bool = False, scale: float | None = None) -> None:
        super().__init__()
        self.num_heads, self.per_head, self.causal = H, per_head, causal
        self.scale = scale if scale is not None else (E // H) ** -0.5
        self.qkv = nn.Linear(E, 3 * E)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(E, E)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        if self.per_head:
            q, k, v = self.qkv(x).reshape(b, n, h, 3, c // h).permute(3, 0, 2, 1, 4).unbind(0)
        else:
            q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        if self.causal:
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        out = self.attn_drop(scores.softmax(-1)) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Separate(nn.Module):
    """lucidrains' style: to_q/to_k/to_v and a to_out Sequential(Linear, Dropout), heads as `heads`."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = H
        self.to_q, self.to_k, self.to_v = (nn.Linear(E, E, bias=False) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(E, E), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, H, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class MaskBuffer(Packed):
    """GPT's causal attention: the mask a buffer of the module, per-head packed rows."""

    def __init__(self) -> None:
        super().__init__(per_head=True)
        self.register_buffer("tril", torch.ones(T, T, dtype=torch.bool).tril())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, H, 3, c // H).permute(3, 0, 2, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.tril[:n, :n])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class HFSelfAttention(nn.Module):
    """Hugging Face's ViTSelfAttention: query/key/value Linears, the heads returned as they are
    (in a 1-tuple), the output projection in a sibling module (HFSelfOutput)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = H, E // H
        self.query, self.key, self.value = (nn.Linear(E, E) for _ in range(3))
        self.dropout = nn.Dropout(0.0)

    def forward(self, hidden_states: torch.Tensor, head_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, ...]:
        b, n, _ = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, n, self.num_attention_heads, self.attention_head_size).permute(0, 2, 1, 3)

        q, k, v = heads(self.query(hidden_states)), heads(self.key(hidden_states)), heads(self.value(hidden_states))
        probs = self.dropout(torch.softmax(q @ k.transpose(-1, -2) / self.attention_head_size ** 0.5, dim=-1))
        context = (probs @ v).permute(0, 2, 1, 3).contiguous().view(b, n, E)
        return (context, probs) if output_attentions else (context,)


class HFAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = HFSelfAttention()
        self.output = nn.ModuleDict({"dense": nn.Linear(E, E), "dropout": nn.Dropout(0.0)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.attention(x, None, False)[0]
        return self.output["dropout"](self.output["dense"](context))


class Biased(Packed):
    """A relative position bias: a parameter of its own, so not a standard attention."""

    def __init__(self) -> None:
        super().__init__()
        self.bias_table = nn.Parameter(torch.zeros(H, T, T))


class Cosine(Packed):
    """Cosine attention (q and k normalised): no parameter of its own, yet no standard attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, H, c // H).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Net(nn.Module):
    def __init__(self, attn: type[nn.Module] = Packed, depth: int = 2, **kw) -> None:
        super().__init__()
        self.embed = nn.Linear(5, E)
        self.attns = nn.ModuleList(attn(**kw) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(E) for _ in range(depth))
        self.fc1, self.fc2 = nn.Linear(E, 2 * E), nn.Linear(2 * E, E)
        self.head = nn.Linear(E, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for attn, norm in zip(self.attns, self.norms):
            h = h + attn(norm(h))
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h.mean(1))


def net(attn: type[nn.Module] = Packed, **kw) -> Net:
    torch.manual_seed(0)
    model = Net(attn, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def tokens(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, T, 5, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn,kw,names", [
    (Packed, {}, ["qkv"]), (Packed, {"per_head": True}, ["qkv"]), (Packed, {"causal": True}, ["qkv"]),
    (Packed, {"scale": 0.1}, ["qkv"]), (Separate, {}, ["to_q", "to_k", "to_v"]), (MaskBuffer, {}, ["qkv"]),
    (HFAttention, {}, ["attention.query", "attention.key", "attention.value"]),
])
def test_hand_written_attentions_are_recognised_and_slimming_their_heads_is_masking_them(attn, kw, names):
    model, x = net(attn, **kw), tokens()
    hf = attn is HFAttention
    heads = {g.attention: g for g in channel_groups(model, x) if g.attention}
    inner = ".attention" if hf else ""
    assert set(heads) == {f"attns.0{inner}", f"attns.1{inner}"}
    g = heads[f"attns.1{inner}"]
    assert g.prunable and g.width == H
    assert [p.name for p in g.producers] == [f"attns.1.{n}" for n in names]
    proj = {Separate: "to_out.0", HFAttention: "output.dense"}.get(attn, "proj")
    assert [c.name for c in g.consumers] == [f"attns.1.{proj}"] and g.consumers[0].channels[2] == tuple(range(12, 18))
    # The projections' own Torch-Pruning groups (stopped by the reshape) keep their ids, never pruned.
    rows = [grp for grp in channel_groups(model, x) if grp.producers[0].name.startswith("attns.1.")
            and not grp.attention]
    assert rows and all(not r.prunable and r.reason == HEAD_ROWS + f"attns.1{inner}" for r in rows)
    kept = {heads[f"attns.0{inner}"].id: [3], g.id: [0, 2]}
    want = mask_groups(model, channel_groups(model, x), kept)
    slim_groups(model, x, kept)  # checks against the masked model itself too
    attns = [a.attention if hf else a for a in model.attns]
    assert all(type(a) is HandHeadsAttention for a in attns)
    assert attns[1].kept_heads == [0, 2] and attns[0].num_heads == 1
    with torch.no_grad():
        for seed in (2, 3):  # inputs the recognition never saw
            torch.testing.assert_close(model(tokens(seed=seed)), want(tokens(seed=seed)), atol=1e-5, rtol=1e-5)
    # The user's names stay: a slimmed projection is found where it was.
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in want.named_parameters()}
    assert set(model.state_dict()) == set(want.state_dict())  # buffers too


@pytest.mark.parametrize("attn,why", [(Biased, "parameters besides its projections (bias_table)"),
                                      (Cosine, "not a standard attention")])
def test_attentions_that_compute_something_else_keep_their_heads_and_say_why(attn, why):
    model, x = net(attn), tokens()
    groups = channel_groups(model, x)
    assert not any(g.attention for g in groups)
    qkv = next(g for g in groups if [p.name for p in g.producers] == ["attns.0.qkv"])
    assert not qkv.prunable and f"the heads of attns.0 stay whole: it" in qkv.reason and why in qkv.reason


def test_masks_shared_weights_and_single_heads_leave_heads_whole():
    class Masked(Packed):
        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            return super().forward(x)

    class Twice(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            h = h + self.attns[0](h) + self.attns[0](h) + self.attns[1](h)
            return self.head(h.mean(1))

    class WithMask(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            h = h + self.attns[0](h, torch.ones(1)) + self.attns[1](h)
            return self.head(h.mean(1))

    found = hand_attentions(WithMask(Masked).eval(), tokens())
    assert found["attns.0"][0] is None and "a mask, a context?" in found["attns.0"][1] and found["attns.1"][0] is not None
    found = hand_attentions(Twice().eval(), tokens())
    assert found["attns.0"][0] is None and "more than once" in found["attns.0"][1]
    one = net()
    for a in one.attns:
        a.num_heads = 1
    with torch.no_grad():  # one head is a standard attention too, so its form is found; nothing to drop
        groups = [g for g in channel_groups(one, tokens()) if g.attention]
    assert groups and all(not g.prunable and g.reason == "a single head" for g in groups)
    assert hand_attentions(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)), torch.randn(2, 5)) == {}


def test_groups_keep_the_ids_they_had_before_hand_written_heads_were_groups(monkeypatch):
    # A student saved before names its groups by these ids: only new groups may come, at the end.
    model, x = net(), tokens()
    now = channel_groups(model, x)
    monkeypatch.setattr(graph_groups, "hand_attentions", lambda *_: {})
    before = channel_groups(model, x)
    assert len(now) == len(before) + 2 and [g.attention for g in now[len(before):]] == ["attns.0", "attns.1"]
    assert [(g.id, g.producers, g.consumers) for g in now[:len(before)]] == \
        [(g.id, g.producers, g.consumers) for g in before]
    assert [g.prunable for g in now[:len(before)]] == [g.prunable for g in before]
    plan = plan_graph_channels(model, x, lambda g: g.width // 2)
    assert not any(HEAD_ROWS in e["reason"] for e in plan.left_whole)


def test_heads_without_an_output_projection_need_one_linear_reading_them_alone():
    class TwoReaders(HFAttention):
        def __init__(self) -> None:
            super().__init__()
            self.other = nn.Linear(E, E)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            context = self.attention(x)[0]
            return self.output["dense"](context) + self.other(context)

    class AlsoAdded(HFAttention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            context = self.attention(x)[0]
            return self.output["dense"](context) + context  # the heads also join the residual stream

    class WantsWeights(HFAttention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.output["dense"](self.attention(x, None, True)[0])

    found = hand_attentions(net(TwoReaders), tokens())
    assert found["attns.0.attention"][0] is None and "not to one Linear layer alone" in found["attns.0.attention"][1]
    assert "a mask, a context?" in hand_attentions(net(WantsWeights), tokens())["attns.0.attention"][1]
    # One Linear reads the heads, but the residual add reads them too: the slimming check catches it.
    plan = plan_graph_channels(net(AlsoAdded), tokens(), lambda g: g.width // 2)
    assert not any(g.attention for g in plan.groups.values())
    whole = [e for e in plan.left_whole if e["producers"] == ["attns.0.attention.query", "attns.0.attention.key",
                                                              "attns.0.attention.value"]]
    assert whole and "does not reproduce the masked model" in whole[0]["reason"]


def make_hf_net() -> Net:
    return net(HFAttention)


def test_prune_heads_off_leaves_hand_written_heads_whole():
    plan = plan_graph_channels(net(), tokens(), lambda g: g.width // 2, prune_heads=False)
    assert not any(g.attention for g in plan.groups.values())
    assert sum("prune_heads is off" in e["reason"] for e in plan.left_whole) == 2


def test_the_flops_and_parameter_models_count_hand_written_heads():
    model, x = net(), tokens(1)
    groups = {g.id: g for g in channel_groups(model, x) if g.prunable}
    removed = {gid: (g.width // 2 if g.attention else g.width // 4) for gid, g in groups.items()}
    kept = {gid: list(range(g.width - removed[gid])) for gid, g in groups.items()}
    flops, params = FlopModel.of(model, x, groups), FlopModel.params_of(model, groups)
    predicted = flops.flops(removed), params.flops(removed)
    slim_groups(model, x, kept)
    with torch.no_grad(), counting_flops() as counter:
        model(x)
    assert sum(p.numel() for p in model.parameters()) == predicted[1]
    assert abs(counter.get_total_flops() - predicted[0]) <= 0.01 * counter.get_total_flops()


class AsTorch(Net):
    """Net with torch's nn.MultiheadAttention in place of the hand-written ones."""

    def __init__(self) -> None:
        super().__init__()
        self.attns = nn.ModuleList(nn.MultiheadAttention(E, H, batch_first=True) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for attn, norm in zip(self.attns, self.norms):
            n = norm(h)
            h = h + attn(n, n, n, need_weights=False)[0]
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h.mean(1))


def test_the_same_weights_as_torch_attentions_give_the_same_student():
    hand, torch_model = net(), AsTorch().eval()
    state = hand.state_dict()
    for i in range(2):
        for kind in ("weight", "bias"):
            state[f"attns.{i}.in_proj_{kind}"] = state.pop(f"attns.{i}.qkv.{kind}")
            state[f"attns.{i}.out_proj.{kind}"] = state.pop(f"attns.{i}.proj.{kind}")
    torch_model.load_state_dict(state)
    x, y = torch.randn(30, T, 5), torch.arange(30) % 3
    with torch.no_grad():
        torch.testing.assert_close(hand(x), torch_model(x), atol=1e-5, rtol=1e-5)
    students = []
    for model in (hand, torch_model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompressionWarning)
            students.append(crossdistill.compress(model, x, labels=y, shots=6, keep=0.5, show_progress=False))
    (a, ra), (b, rb) = students
    assert [m.kept_heads for m in a.attns] == [m.kept_heads for m in b.attns]
    assert all(len(m.kept_heads) == H // 2 for m in a.attns)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-4, rtol=1e-4)
    heads = sorted(g["heads_of"] for g in ra["channel_groups"]["pruned"] if "heads_of" in g)
    assert heads == ["attns.0", "attns.1"]


def make_net() -> Net:
    return net()


@pytest.mark.parametrize("factory_name", ["make_net", "make_hf_net"])
def test_a_student_with_hand_written_heads_pruned_saves_loads_and_prunes_again(tmp_path, factory_name):
    factory = tmp_path / "handnet.py"
    factory.write_text(f"import sys\nsys.path.insert(0, {str(tmp_path.parent)!r})\n"
                       f"from {__name__} import {factory_name}\n")
    teacher = globals()[factory_name]()
    teacher.crossdistill_factory = f"{factory}:{factory_name}"
    x, y = torch.randn(30, T, 5), torch.arange(30) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        once, _ = crossdistill.compress(teacher, x, labels=y, shots=6, keep=0.5, show_progress=False)
        twice, _ = crossdistill.compress(once, x, labels=y, shots=6, keep=0.5, show_progress=False)

    def heads(model: Net) -> list[nn.Module]:
        return [a.attention if factory_name == "make_hf_net" else a for a in model.attns]

    assert [m.num_heads for m in heads(twice)] == [1, 1]
    assert set(heads(twice)[0].kept_heads) <= set(heads(once)[0].kept_heads)
    for student in (once, twice):
        loaded = crossdistill.load(crossdistill.save(student, tmp_path / "s.safetensors"))
        assert [m.kept_heads for m in heads(loaded)] == [m.kept_heads for m in heads(student)]
        with torch.inference_mode():
            assert torch.equal(loaded(x[:5]), student(x[:5]))


def test_a_head_pruned_attention_takes_its_input_alone():
    model = net()
    slim_groups(model, tokens(), {g.id: [0, 1] for g in channel_groups(model, tokens()) if g.attention})
    with pytest.raises(CrossDistillError, match="input tensor alone"):
        model.attns[0](torch.randn(2, T, E), torch.ones(T, T))
    with pytest.raises(CrossDistillError, match="batch, tokens, features"):
        model.attns[0](torch.randn(T, E))
    model.attns[0](torch.randn(2, T, E), None)  # a None mask is no mask


def test_the_fine_tune_trains_a_hand_written_pruned_attention_with_its_dropout():
    model = net()
    for a in model.attns:
        a.attn_drop.p = 0.5
    slim_groups(model, tokens(), {g.id: [0, 1] for g in channel_groups(model, tokens()) if g.attention})
    attn = copy.deepcopy(model.attns[0]).train()
    x = torch.randn(2, T, E, requires_grad=True)
    torch.manual_seed(0)
    first = attn(x)
    torch.manual_seed(1)
    assert not torch.allclose(first, attn(x))  # attention dropout applies in training mode
    first.sum().backward()
    assert attn.qkv.weight.grad is not None and attn.proj.weight.grad is not None


def test_a_module_with_one_linear_of_three_times_the_width_is_no_attention():
    class Head(nn.Module):  # a classifier of 30 classes in a module of its own
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(E, 30)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    model = nn.Sequential(nn.Linear(5, E), Head())
    assert hand_attentions(model, torch.randn(2, T, 5)) == {}
    assert all("heads of" not in g.reason for g in channel_groups(model, torch.randn(2, T, 5)))


def test_a_causal_attention_seen_on_one_token_is_told_from_a_plain_one():
    # With one token, causal and not give the same output: a longer probe tells them apart.
    model = net(Packed, causal=True)
    one = torch.randn(3, 1, 5)
    forms = {n: f for n, (f, _) in hand_attentions(model, one).items()}
    assert forms["attns.0"].causal and forms["attns.1"].causal

    class OneLength(Packed):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] != 1:
                raise RuntimeError("made for one token")
            return super().forward(x)

    found = hand_attentions(net(OneLength), one)
    assert found["attns.0"][0] is None and "one token only" in found["attns.0"][1]


@pytest.mark.parametrize("names,weights,after", [
    (("attn_drop", "proj_drop"), "attn_drop", "proj_drop"),          # timm
    (("attn_dropout", "resid_dropout"), "attn_dropout", "resid_dropout"),  # nanoGPT
    (("dropout", None), "dropout", ""),                             # lucidrains, Hugging Face
    (("drop_a", "drop_b"), "", ""),                                 # names that say nothing
])
def test_dropout_roles_come_from_their_names(names, weights, after):
    class Named(Packed):
        def __init__(self) -> None:
            super().__init__()
            del self.attn_drop, self.proj_drop
            for n in names:
                if n:
                    self.add_module(n, nn.Dropout(0.0))
            for own in ("attn_drop", "proj_drop"):  # what the forward calls, when not among the names
                if own not in names:
                    self.add_module(own, nn.Identity())

    form = hand_attentions(net(Named), tokens())["attns.0"][0]
    assert (form.attn_drop, form.out_drop) == (weights, after)


def test_a_projection_shared_by_two_attentions_keeps_their_heads():
    model = net()
    model.attns[1].qkv = model.attns[0].qkv
    heads = [g for g in channel_groups(model, tokens()) if g.attention]
    assert heads and all(not g.prunable and "runs more than once" in g.reason for g in heads)


def test_an_attention_returning_its_weights_says_so():
    class WithWeights(Packed):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return super().forward(x), torch.zeros(1)

    class Caller(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            for attn in self.attns:
                h = h + attn(h)[0]
            return self.head(h.mean(1))

    found = hand_attentions(Caller(WithWeights).eval(), tokens())
    assert found["attns.0"][0] is None and "returns more than its output" in found["attns.0"][1]
