"""Attention heads as channel groups (compression/attention_heads.py): a HeadPrunedAttention with
every head is the nn.MultiheadAttention it replaces, one with fewer heads is the attention with
those heads' out_proj columns zeroed, and channel pruning finds, prunes, saves and counts heads."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.compression.attention_heads import HeadPrunedAttention, slim_heads
from crossdistill.compression.coverage import CompressionWarning
from crossdistill.compression.flops import FlopModel
from crossdistill.compression.graph_channels import channel_groups, mask_groups, slim_groups
from crossdistill.compression.graph_plan import plan_graph_channels
from crossdistill.errors import CrossDistillError
from crossdistill.flop_counter import counting_flops

E, H, L, S, N = 24, 4, 5, 7, 3


def attention(batch_first: bool = True, **kw) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first, **kw).eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.3)  # biases too: torch starts them at zero, which would hide a lost bias
    return mha


def inputs(batch_first: bool, kdim: int = E, vdim: int = E, batched: bool = True):
    gen = torch.Generator().manual_seed(1)
    shape = (lambda n, t, d: (n, t, d) if batch_first else (t, n, d)) if batched else (lambda n, t, d: (t, d))
    return (torch.randn(shape(N, L, E), generator=gen), torch.randn(shape(N, S, kdim), generator=gen),
            torch.randn(shape(N, S, vdim), generator=gen))


def masks(kind: str, batched: bool = True):
    gen = torch.Generator().manual_seed(2)
    n = N if batched else 1
    if kind == "none":
        return {}
    if kind == "bool2d":
        m = torch.rand(L, S, generator=gen) > 0.7
        m[:, 0] = False  # every query sees a key: no all-masked row (NaN in torch too)
        return {"attn_mask": m}
    if kind == "float2d":
        return {"attn_mask": torch.randn(L, S, generator=gen)}
    if kind == "per_head":
        # One mask per (sample, head): slicing the wrong heads' masks changes the output.
        m = torch.rand(n * H, L, S, generator=gen) > 0.5
        m[..., 0] = False
        return {"attn_mask": m}
    if kind == "padding":
        kpm = torch.zeros(n, S, dtype=torch.bool)
        kpm[:, -2:] = True
        return {"key_padding_mask": kpm if batched else kpm[0]}
    if kind == "float_padding":
        return {"key_padding_mask": torch.randn(n, S, generator=gen) if batched else torch.randn(S, generator=gen)}
    raise AssertionError(kind)


CASES = [
    # (batch_first, kdim/vdim, bias, mask kind, need_weights, average, batched)
    (True, None, True, "none", False, True, True),
    (False, None, True, "bool2d", True, True, True),
    (True, None, False, "float2d", True, False, True),
    (True, (10, 12), True, "per_head", False, True, True),
    (False, (10, 12), True, "padding", True, True, True),
    (True, None, True, "float_padding", False, True, True),
    (True, None, True, "per_head", True, False, False),
    (True, None, True, "padding", False, True, False),
]


def zeroed(mha: nn.MultiheadAttention, kept: list[int]) -> nn.MultiheadAttention:
    """The attention with the dropped heads' out_proj columns zeroed: what mask_groups makes."""
    out = attention(mha.batch_first, kdim=mha.kdim, vdim=mha.vdim, bias=mha.out_proj.bias is not None)
    out.load_state_dict(mha.state_dict())
    d = mha.head_dim
    with torch.no_grad():
        for h in range(mha.num_heads):
            if h not in kept:
                out.out_proj.weight[:, h * d:(h + 1) * d] = 0
    return out


@pytest.mark.parametrize("batch_first,dims,bias,mask,need_weights,average,batched", CASES)
@pytest.mark.parametrize("kept", [[0, 1, 2, 3], [1, 3]])
def test_pruned_attention_is_the_attention_with_its_dropped_heads_zeroed(batch_first, dims, bias, mask, need_weights,
                                                                          average, batched, kept):
    kdim, vdim = dims or (None, None)
    mha = attention(batch_first, kdim=kdim, vdim=vdim, bias=bias)
    q, k, v = inputs(batch_first, kdim or E, vdim or E, batched)
    kw = {**masks(mask, batched), "need_weights": need_weights, "average_attn_weights": average}
    reference = zeroed(mha, kept)
    pruned = HeadPrunedAttention.from_attention(mha, kept)
    assert pruned.num_heads == len(kept) and pruned.q_proj.out_features == len(kept) * E // H
    with torch.no_grad():
        want, want_w = reference(q, k, v, **kw)
        got, got_w = pruned(q, k, v, **kw)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if need_weights and len(kept) == H:
        torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-5)
    elif need_weights:
        with torch.no_grad():  # the kept heads' weights, averaged over those heads alone
            per_head = reference(q, k, v, **{**kw, "average_attn_weights": False})[1][..., kept, :, :]
        torch.testing.assert_close(got_w, per_head.mean(-3) if average else per_head, atol=1e-6, rtol=1e-5)
    else:
        assert got_w is None


def test_pruned_attention_trains_through_its_linears_with_dropout():
    mha = attention(dropout=0.5).train()
    pruned = HeadPrunedAttention.from_attention(mha, [0, 2]).train()
    q, k, v = inputs(True)
    torch.manual_seed(3)
    a = pruned(q, k, v, need_weights=False)[0]
    torch.manual_seed(4)
    b = pruned(q, k, v, need_weights=False)[0]
    assert not torch.allclose(a, b)  # dropout on the attention weights is on in training mode
    a.sum().backward()
    assert pruned.q_proj.weight.grad is not None and pruned.out_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        pruned.eval()
        torch.testing.assert_close(pruned(q, k, v)[0], zeroed(mha.eval(), [0, 2])(q, k, v)[0], atol=1e-5, rtol=1e-5)


def test_bad_head_lists_and_unprunable_attentions_are_refused():
    with pytest.raises(CrossDistillError, match="distinct, within 0..3"):
        HeadPrunedAttention.from_attention(attention(), [0, 4])
    with pytest.raises(CrossDistillError, match="distinct"):
        HeadPrunedAttention.from_attention(attention(), [1, 1])
    with pytest.raises(CrossDistillError, match="add_bias_kv"):
        HeadPrunedAttention.from_attention(attention(add_bias_kv=True), [0])


class Encoder(nn.Module):
    """An encoder whose padding mask lets torch.nn.TransformerEncoder run its nested-tensor path."""

    def __init__(self, share: bool = False, **attn) -> None:
        super().__init__()
        self.embed = nn.Linear(6, E)
        layer = nn.TransformerEncoderLayer(E, H, 2 * E, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.extra = nn.MultiheadAttention(E, H, batch_first=True, **attn)
        self.share = share
        self.head = nn.Linear(E, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        pad[:, -3:] = True
        h = self.enc(self.embed(x), src_key_padding_mask=pad)
        # The padded positions are zeros on the nested-tensor path and not on the others, so a
        # model that reads them (no key_padding_mask here) would differ between the two in torch too.
        h = h + self.extra(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        if self.share:
            h = h + self.extra(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return self.head(h[:, 0])


def encoder(**kw) -> Encoder:
    torch.manual_seed(0)
    model = Encoder(**kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def saveable_encoder(tmp_path) -> Encoder:
    """`encoder()` with a factory file, so that its students can be saved."""
    teacher = encoder()
    factory = tmp_path / "enc.py"
    factory.write_text(f"import sys\nsys.path.insert(0, {str(tmp_path.parent)!r})\n"
                       f"from {__name__} import encoder\n\ndef make():\n    return encoder()\n")
    teacher.crossdistill_factory = f"{factory}:make"
    return teacher


def test_heads_are_channel_groups_and_slimming_them_is_masking_them():
    model, x = encoder(), torch.randn(4, 10, 6)
    heads = {g.attention: g for g in channel_groups(model, x) if g.attention}
    assert set(heads) == {"enc.layers.0.self_attn", "enc.layers.1.self_attn", "extra"}
    g = heads["enc.layers.1.self_attn"]
    assert g.prunable and g.width == H and g.exact
    assert [p.name for p in g.producers] == [f"enc.layers.1.self_attn.{p}_proj" for p in "qkv"]
    assert [c.name for c in g.consumers] == ["enc.layers.1.self_attn.out_proj"]
    assert g.consumers[0].channels[2] == tuple(range(12, 18))  # head 2: columns 2d..3d
    kept = {heads["enc.layers.0.self_attn"].id: [3], g.id: [0, 2], heads["extra"].id: [1, 2, 3]}
    groups = channel_groups(model, x)
    with torch.no_grad():
        want = mask_groups(model, groups, kept)(x)
    slim_groups(model, x, kept)  # compares with the masked model itself too
    assert [type(model.enc.layers[i].self_attn) for i in (0, 1)] == [HeadPrunedAttention] * 2
    assert model.enc.layers[1].self_attn.kept_heads == [0, 2] and model.extra.num_heads == 3
    assert model.enc.use_nested_tensor is False  # its layers take dense tensors now
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)


def test_attentions_whose_heads_cannot_go_say_why():
    for kw, why in (({"share": True}, "runs more than once"), ({"add_bias_kv": True}, "add_bias_kv")):
        model, x = encoder(**kw), torch.randn(2, 10, 6)
        extra = next(g for g in channel_groups(model, x) if g.attention == "extra")
        assert not extra.prunable and why in extra.reason
    model, x = encoder(), torch.randn(2, 10, 6)
    plan = plan_graph_channels(model, x, lambda g: g.width // 2, prune_heads=False)
    assert not any(g.attention for g in plan.groups.values())
    assert sum("prune_heads is off" in e["reason"] for e in plan.left_whole) == 3


def test_the_flops_and_parameter_models_count_what_slimming_removes():
    model, x = encoder(), torch.randn(1, 10, 6)
    groups = {g.id: g for g in channel_groups(model, x) if g.prunable}
    removed = {gid: (g.width // 2 if g.attention else g.width // 4) for gid, g in groups.items()}
    kept = {gid: list(range(g.width - removed[gid])) for gid, g in groups.items()}
    flops, params = FlopModel.of(model, x, groups), FlopModel.params_of(model, groups)
    predicted = flops.flops(removed), params.flops(removed)
    slim_groups(model, x, kept)
    with torch.no_grad(), counting_flops() as counter:
        model(x)
    counted = counter.get_total_flops(), sum(p.numel() for p in model.parameters())
    assert counted[1] == predicted[1]
    # The attention's out_proj bias add and softmax are not per head: within a percent.
    assert abs(counted[0] - predicted[0]) <= 0.01 * counted[0]


def test_compress_prunes_heads_saves_and_loads_the_student(tmp_path):
    teacher = saveable_encoder(tmp_path)
    x, y = torch.randn(40, 10, 6), torch.arange(40) % 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        student, report = crossdistill.compress(teacher, x, labels=y, shots=8, keep=0.5, show_progress=False)
    attn = student.enc.layers[0].self_attn
    assert isinstance(attn, HeadPrunedAttention) and attn.num_heads == H // 2
    heads = [g for g in report["channel_groups"]["pruned"] if "heads_of" in g]
    assert sorted(g["heads_of"] for g in heads) == ["enc.layers.0.self_attn", "enc.layers.1.self_attn", "extra"]
    assert all(g["kept"] == H // 2 and g["channels_per_unit"] == E // H for g in heads)
    out_proj = {r["name"]: r for r in report["layers"]}["extra.out_proj"]
    assert len(out_proj["kept"]) == E // 2  # its columns of the two kept heads, re-solved
    path = crossdistill.save(student, tmp_path / "s.safetensors")
    loaded = crossdistill.load(path)
    assert isinstance(loaded.extra, HeadPrunedAttention) and loaded.extra.kept_heads == student.extra.kept_heads
    with torch.inference_mode():
        assert torch.equal(loaded(x[:5]), student(x[:5]))
    # Readers of format 2 and before do not know head groups: they must refuse the file by its
    # version, not fail on "no channel group N" as if it were damaged.
    from crossdistill.persistence import read_info

    assert read_info(path).format_version == 3


def test_an_attention_sharing_its_packed_projections_keeps_its_heads():
    model, x = encoder(), torch.randn(2, 10, 6)
    model.extra.in_proj_weight = model.enc.layers[1].self_attn.in_proj_weight
    heads = {g.attention: g for g in channel_groups(model, x) if g.attention}
    for name, other in (("extra", "enc.layers.1.self_attn"), ("enc.layers.1.self_attn", "extra")):
        assert not heads[name].prunable and f"in_proj_weight is shared with {other}.in_proj_weight" in heads[name].reason
    assert heads["enc.layers.0.self_attn"].prunable


class CrossDecoder(nn.Module):
    """torch's TransformerDecoder: self-attention, and cross-attention to a memory of another length."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mem = nn.Linear(6, E), nn.Linear(6, E)
        self.dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(E, H, 2 * E, dropout=0.0, batch_first=True), 1)
        self.head = nn.Linear(E, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dec(self.embed(x[:, :4]), self.mem(x)).mean(1))


def test_decoder_self_and_cross_attention_heads_slim_and_are_counted():
    torch.manual_seed(0)
    model, x = CrossDecoder().eval(), torch.randn(1, 10, 6)
    groups = {g.id: g for g in channel_groups(model, x) if g.prunable}
    assert sorted(g.attention for g in groups.values() if g.attention) == ["dec.layers.0.multihead_attn",
                                                                           "dec.layers.0.self_attn"]
    removed = {gid: (2 if g.attention else g.width // 4) for gid, g in groups.items()}
    flops, params = FlopModel.of(model, x, groups), FlopModel.params_of(model, groups)
    predicted = flops.flops(removed), params.flops(removed)
    masked = mask_groups(model, list(groups.values()), {gid: list(range(g.width - removed[gid])) for gid, g in groups.items()})
    slim_groups(model, x, {gid: list(range(g.width - removed[gid])) for gid, g in groups.items()})
    with torch.no_grad(), counting_flops() as counter:
        got = model(x)
    torch.testing.assert_close(got, masked(x), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == predicted[1]
    assert abs(counter.get_total_flops() - predicted[0]) <= 0.01 * counter.get_total_flops()


def test_a_pruned_attention_pruned_again_is_the_original_with_those_heads_zeroed():
    mha = attention()
    again = HeadPrunedAttention.from_attention(mha, [0, 2, 3]).keep([0, 2])
    assert again.kept_heads == [0, 3] and again.original_heads == H
    q, k, v = inputs(True)
    kw = masks("per_head")  # one mask per original head: heads 0 and 3 must take theirs
    with torch.no_grad():
        torch.testing.assert_close(again(q, k, v, **kw)[0], zeroed(mha, [0, 3])(q, k, v, **kw)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(CrossDistillError, match="within 0..2"):
        HeadPrunedAttention.from_attention(mha, [0, 2, 3]).keep([3])


def test_slim_heads_names_a_layer_that_is_no_attention():
    with pytest.raises(CrossDistillError, match="not an nn.MultiheadAttention"):
        slim_heads(encoder(), "head", [0])


def test_masks_made_for_the_kept_head_count_and_bad_calls_are_named():
    pruned = HeadPrunedAttention.from_attention(attention(), [0, 2])
    q, k, v = inputs(True)
    per_kept = masks("per_head")["attn_mask"][: N * 2]  # a model's `expand(n * attn.num_heads, ...)`
    with torch.no_grad():
        got = pruned(q, k, v, attn_mask=per_kept)[0]
        # The same masks, placed at the kept heads of an original-sized stack, give the same output.
        full = torch.zeros(N, H, L, S, dtype=torch.bool)
        full[:, [0, 2]] = per_kept.reshape(N, 2, L, S)
        torch.testing.assert_close(got, pruned(q, k, v, attn_mask=full.reshape(N * H, L, S))[0])
    with pytest.raises(RuntimeError, match=r"should be \(12, 5, 7\) .* or \(6, 5, 7\)"):
        pruned(q, k, v, attn_mask=torch.zeros(5, L, S, dtype=torch.bool))
    with pytest.raises(RuntimeError, match=r"2D attn_mask is \(5, 5\), but should be \(5, 7\)"):
        pruned(q, k, v, attn_mask=torch.zeros(L, L))
    with pytest.raises(RuntimeError, match="only bool and floating types of attn_mask"):
        pruned(q, k, v, attn_mask=torch.zeros(L, S, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"key_padding_mask has shape \(3, 5\), expected \(3, 7\)"):
        pruned(q, k, v, key_padding_mask=torch.zeros(N, L, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="does not match value shape"):
        pruned(q, k, v[:, :3])
    with pytest.raises(CrossDistillError, match="a Linear is not an nn.MultiheadAttention"):
        HeadPrunedAttention.from_attention(nn.Linear(4, 4), [0])


def test_the_attention_weights_are_returned_after_dropout_as_torch_does():
    pruned = HeadPrunedAttention.from_attention(attention(dropout=0.5), [1, 3]).train()
    q, k, v = inputs(True)
    torch.manual_seed(0)
    out, weights = pruned(q, k, v, average_attn_weights=False)
    dropped = weights == 0
    assert dropped.any() and not torch.allclose(weights.sum(-1), torch.ones(()))
    # The output is made from exactly these weights.
    vh = pruned.v_proj(v).view(N, S, 2, pruned.head_dim).transpose(1, 2)
    torch.testing.assert_close(out, pruned.out_proj((weights @ vh).transpose(1, 2).reshape(N, L, -1)))


class Tagged(nn.Module):
    """An attention beside a layer the forward never runs, a tied out_proj or a forward that reads
    the attention weights: which of these keep the heads whole."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.inp, self.attn, self.head = nn.Linear(6, E), nn.MultiheadAttention(E, H, batch_first=True), nn.Linear(E, 5)
        self.unused = nn.Linear(E, 5)  # never run: it might read any E-wide tensor, but not a head
        if kind == "tied":
            self.mirror = nn.Linear(E, E)
            self.mirror.weight = self.attn.out_proj.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, w = self.attn(h, h, h, need_weights=self.kind == "weights")
        h = h + a
        if self.kind == "tied":
            h = h + self.mirror(h)
        out = self.head(h.mean(1))
        if self.kind == "weights":
            out = out + w.amax((1, 2)).unsqueeze(1)
        return out


@pytest.mark.parametrize("kind,why", [
    ("unused", ""),  # a layer that never ran cannot read a head: only out_proj does
    ("tied", "its weight is tied to mirror.weight"),
    ("weights", "the forward uses more of attention attn than its output"),
])
def test_which_forwards_keep_the_heads_whole(kind, why):
    torch.manual_seed(0)
    model, x = Tagged(kind).eval(), torch.randn(2, 7, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        plan = plan_graph_channels(model, x, lambda g: g.width // 2)
    heads = [g for g in plan.groups.values() if g.attention == "attn"]
    whole = [e["reason"] for e in plan.left_whole if "attn.q_proj" in e["producers"]]
    if why:
        assert not heads and len(whole) == 1 and why in whole[0]
    else:
        assert len(heads) == 1 and not whole


def test_a_student_pruned_twice_loads_as_it_was_saved(tmp_path):
    teacher = saveable_encoder(tmp_path)
    x, y = torch.randn(40, 10, 6), torch.arange(40) % 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        once, _ = crossdistill.compress(teacher, x, labels=y, shots=8, keep=0.5, show_progress=False)
        twice, _ = crossdistill.compress(once, x, labels=y, shots=8, keep=0.5, show_progress=False)
    assert len(twice.crossdistill_slim["then"]) == 1
    # Heads pruned again: numbered among the kept ones, recorded among the original ones.
    for name in ("extra", "enc.layers.0.self_attn"):
        first, second = once.get_submodule(name), twice.get_submodule(name)
        assert second.num_heads == 1 and set(second.kept_heads) <= set(first.kept_heads)
        assert second.original_heads == H
    path = crossdistill.save(twice, tmp_path / "twice.safetensors")
    loaded = crossdistill.load(path)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in twice.parameters())
    with torch.inference_mode():
        assert torch.equal(loaded(x[:5]), twice(x[:5]))
    assert crossdistill.save(loaded, tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("then", ["x", [{"input_size": [0], "kept": {"1": [0]}}], [{"input_size": [4], "kept": {"a": [0]}}]])
def test_a_damaged_stage_list_in_a_file_is_named(then):
    from crossdistill.persistence.codecs.base import DocumentError
    from crossdistill.persistence.codecs.slim import SlimCodec

    good = {"input_size": [10, 6], "kept": {"0": [1]}}
    assert SlimCodec().validate({**good, "then": [{"input_size": [10, 6], "kept": {"3": [0, 2]}}]})["then"]
    with pytest.raises(DocumentError, match="channel_groups"):
        SlimCodec().validate({**good, "then": then})
