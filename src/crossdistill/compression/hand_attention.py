"""Attentions written by hand (a `qkv` Linear reshaped into heads, or `q`/`k`/`v` Linears, then
an output Linear), recognised so that their heads are pruned as an `nn.MultiheadAttention`'s are.

The head count of such an attention lives in its forward's own reshape, which no trace can
change: slimming one means replacing it. So a module is taken for a standard attention only
when its outputs say so: every parameter it holds belongs to its projections, it is called
once with one (batch, tokens, features) tensor, and on that input and on a random one its
output equals softmax(q·kᵀ·scale)·v through its output projection, for one of a few readings
(packed rows q|k|v or per head, causal or not, 1/√d or its own `scale`). Anything else (a
relative position bias, q/k norms, rotary embeddings, masks passed in) fails that test and
keeps its heads whole, with the reason in the report.

A recognised attention becomes a `HandHeadsAttention` holding the same children under the same
names, its projections cut to the kept heads: `blocks.0.attn.qkv` stays `blocks.0.attn.qkv`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.errors import CrossDistillError

HEAD_ATTRS = ("num_heads", "n_heads", "heads", "nhead", "n_head", "num_attention_heads")
HEAD_DIM_ATTRS = ("head_dim", "dim_head", "d_head", "attention_head_size")
RTOL = 1e-4  # float32 attention against its reading; a wrong reading is off by O(1)


@dataclass(frozen=True)
class AttentionForm:
    """How a hand-written attention computes: `qkv` (one packed Linear, rows in `layout` 'qkv'
    = (3, heads, d) or 'head' = (heads, 3, d)) or `q`, `k`, `v` (one Linear each), then `out`,
    the direct child applied to the concatenated heads (the output Linear `proj`, or a
    Sequential holding it with parameter-free layers such as Dropout). Names are relative to
    the attention, but for `reader`: when the attention returns the concatenated heads
    themselves (`proj` empty, Hugging Face's SelfAttention), the model's Linear that reads them
    (its SelfOutput's `dense`). `returns_tuple`: the output is wrapped in a 1-tuple."""

    heads: int
    head_dim: int
    proj: str
    out: str
    qkv: str = ""
    layout: str = "qkv"
    q: str = ""
    k: str = ""
    v: str = ""
    causal: bool = False
    scale: float | None = None          # None: 1/√head_dim
    attn_drop: str = ""                 # a Dropout child applied to the attention weights
    out_drop: str = ""                  # a Dropout child applied after `out`
    reader: str = ""                    # the model's Linear reading the heads, when `proj` is empty
    returns_tuple: bool = False

    @property
    def projections(self) -> tuple[str, ...]:
        return (self.qkv,) if self.qkv else (self.q, self.k, self.v)

    def rows(self, heads: Sequence[int]) -> list[tuple[int, ...]]:
        """Per projection, the output rows of `heads` (in the order given)."""
        d, h = self.head_dim, self.heads
        if not self.qkv:
            return [tuple(r for i in heads for r in range(i * d, (i + 1) * d))] * 3
        if self.layout == "qkv":
            return [tuple(p * h * d + r for p in range(3) for i in heads for r in range(i * d, (i + 1) * d))]
        return [tuple(r for i in heads for r in range(i * 3 * d, (i + 1) * 3 * d))]

    def unit_rows(self, head: int) -> list[tuple[int, ...]]:
        """Per projection, the rows of one head (the producers' share of a unit)."""
        return self.rows([head])


def _attend(mod: nn.Module, form: AttentionForm, x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    d = form.head_dim
    if form.qkv:
        packed = mod.get_submodule(form.qkv)(x)
        if form.layout == "qkv":
            q, k, v = packed.reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = packed.reshape(b, n, heads, 3, d).permute(3, 0, 2, 1, 4).unbind(0)
    else:
        q, k, v = (mod.get_submodule(p)(x).reshape(b, n, heads, d).transpose(1, 2) for p in (form.q, form.k, form.v))
    drop = mod.get_submodule(form.attn_drop).p if form.attn_drop and mod.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=form.causal,
                                         scale=form.scale if form.scale is not None else 1.0 / math.sqrt(d))
    out = out.transpose(1, 2).reshape(b, n, heads * d)
    if not form.proj:
        return out
    out = mod.get_submodule(form.out)(out)
    return mod.get_submodule(form.out_drop)(out) if form.out_drop else out


class HandHeadsAttention(nn.Module):
    """A hand-written attention with some heads removed: the original's children under their
    own names (projections cut to the kept heads), computing what the original computed on
    the heads it kept. Called with the (batch, tokens, features) tensor alone (other arguments
    None or False, as Hugging Face passes its head mask and output_attentions)."""

    def __init__(self, original: nn.Module, form: AttentionForm, kept_heads: Sequence[int]) -> None:
        super().__init__()
        kept = sorted(int(h) for h in kept_heads)
        if not kept or kept[0] < 0 or kept[-1] >= form.heads or len(set(kept)) != len(kept):
            raise CrossDistillError(f"kept heads {list(kept_heads)} must be distinct, within 0..{form.heads - 1}")
        for name, child in original.named_children():
            self.add_module(name, child)
        for name, buf in original.named_buffers(recurse=False):  # a causal mask kept as a buffer, say
            self.register_buffer(name, buf, persistent=name not in original._non_persistent_buffers_set)
        self.form = AttentionForm(**{**form.__dict__, "heads": len(kept)})
        self.kept_heads, self.original_heads = kept, form.heads
        self.num_heads, self.head_dim = len(kept), form.head_dim
        for name, rows in zip(form.projections, form.rows(kept)):
            _cut(self, name, torch.tensor(rows, dtype=torch.long), "out")
        if form.proj:  # else the model's reader of the heads loses its columns (slim_hand_heads)
            _cut(self, form.proj, head_columns(form.head_dim, kept), "in")
        self.train(original.training)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if any(not _absent(a) for a in (*args, *kwargs.values())):
            raise CrossDistillError("this head-pruned attention takes its input tensor alone (it was recognised from "
                                    "calls without masks or other arguments)")
        if x.dim() != 3:
            raise CrossDistillError(f"this attention takes (batch, tokens, features) inputs, got shape {tuple(x.shape)}")
        out = _attend(self, self.form, x, self.num_heads)
        return (out,) if self.form.returns_tuple else out

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads} (heads {self.kept_heads} of {self.original_heads}), head_dim={self.head_dim}"


def head_columns(head_dim: int, heads: Sequence[int]) -> torch.Tensor:
    """The columns of the concatenated heads that `heads` fill."""
    return torch.tensor([r for i in heads for r in range(i * head_dim, (i + 1) * head_dim)], dtype=torch.long)


def _absent(arg: Any) -> bool:
    """None, or False: an argument that asks for nothing (no mask, no attention weights)."""
    return arg is None or arg is False


def _cut(parent: nn.Module, name: str, idx: torch.Tensor, side: str) -> None:
    """Replace Linear `name` under `parent` by one keeping rows (`side` 'out') or columns ('in') `idx`."""
    with torch.no_grad():
        _cut_weights(parent, name, idx, side)


def _cut_weights(parent: nn.Module, name: str, idx: torch.Tensor, side: str) -> None:
    old = parent.get_submodule(name)
    w = old.weight
    idx = idx.to(w.device)
    if side == "out":
        new = nn.Linear(old.in_features, len(idx), bias=old.bias is not None, device=w.device, dtype=w.dtype)
        new.weight.copy_(w[idx])
        if old.bias is not None:
            new.bias.copy_(old.bias[idx])
    else:
        new = nn.Linear(len(idx), old.out_features, bias=old.bias is not None, device=w.device, dtype=w.dtype)
        new.weight.copy_(w[:, idx])
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.train(old.training)
    owner, _, leaf = name.rpartition(".")
    setattr(parent.get_submodule(owner) if owner else parent, leaf, new)


def _linears(mod: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in mod.named_modules() if n and type(m) is nn.Linear and n.count(".") <= 1}


def _shapes(mod: nn.Module) -> list[dict[str, Any]]:
    """The ways `mod`'s Linear layers could be an attention's projections: an output Linear (a
    child, or in a child Sequential) reading `inner` features, and one packed Linear writing 3 ×
    `inner` or three writing `inner` each from the same input."""
    lin = _linears(mod)
    if not 1 <= len(lin) <= 4:
        return []
    children = dict(mod.named_children())
    found: list[dict[str, Any]] = []
    # No output projection: the heads go out as they are, to a Linear of the model (`reader`).
    if len(lin) == 1 and next(iter(lin.values())).out_features % 3 == 0:
        found += [{"proj": "", "out": "", "qkv": next(iter(lin)), "layout": lay} for lay in ("qkv", "head")]
    if len(lin) == 3 and len({(m.in_features, m.out_features) for m in lin.values()}) == 1:
        found += [{"proj": "", "out": "", "q": a, "k": b, "v": c} for a, b, c in itertools.permutations(lin)]
    for proj, layer in lin.items():
        top = proj.split(".")[0]
        if "." in proj and not isinstance(children[top], nn.Sequential):
            continue
        inner, rest = layer.in_features, [n for n in lin if n != proj]
        if len(rest) == 1 and lin[rest[0]].out_features == 3 * inner:
            found += [{"proj": proj, "out": top, "qkv": rest[0], "layout": lay} for lay in ("qkv", "head")]
        if len(rest) == 3 and len({(lin[n].in_features, lin[n].out_features) for n in rest} | {(0, inner)}) == 2:
            found += [{"proj": proj, "out": top, "q": a, "k": b, "v": c} for a, b, c in itertools.permutations(rest)]
    return found


def _after_output(name: str) -> bool:
    """A Dropout named for the output (timm's proj_drop, nanoGPT's resid_dropout)."""
    words = name.lower().split("_")
    return bool({"proj", "resid", "out", "output"} & set(words)) or words[0].startswith("out")


def _inner(lin: dict[str, nn.Linear], shape: dict[str, Any]) -> int:
    """The width of the concatenated heads under `shape`."""
    if shape["proj"]:
        return lin[shape["proj"]].in_features
    return lin[shape["qkv"]].out_features // 3 if shape.get("qkv") else lin[shape["q"]].out_features


def _head_counts(mod: nn.Module, inner: int) -> list[int]:
    """Head counts the module states (an attribute such as `num_heads`, or `head_dim`)."""
    heads = {int(getattr(mod, a)) for a in HEAD_ATTRS if isinstance(getattr(mod, a, None), int)}
    heads |= {inner // int(getattr(mod, a)) for a in HEAD_DIM_ATTRS
              if isinstance(getattr(mod, a, None), int) and getattr(mod, a) > 0 and inner % getattr(mod, a) == 0}
    return sorted(h for h in heads if 1 <= h <= inner and inner % h == 0)


def _readings(mod: nn.Module, width: int) -> Iterator[AttentionForm]:
    """Every way `mod` could be a standard attention over a `width`-feature input."""
    lin = _linears(mod)
    children = dict(mod.named_children())
    scales = [None] + ([float(mod.scale)] if isinstance(getattr(mod, "scale", None), float) else [])
    # Dropout is the identity in eval mode, where the readings are tested: names are what tells
    # training mode (the fine-tune) where the forward applies it.
    after = [n for n, m in children.items() if isinstance(m, nn.Dropout) and _after_output(n)]
    drops = [n for n, m in children.items() if isinstance(m, nn.Dropout) and not _after_output(n)
             and (n.lower() in ("dropout", "drop") or {"attn", "attention"} & set(n.lower().split("_")))]
    for shape in _shapes(mod):
        if lin[shape.get("qkv") or shape["q"]].in_features != width:
            continue
        inner = _inner(lin, shape)
        for h, causal, scale in itertools.product(_head_counts(mod, inner), (False, True), scales):
            yield AttentionForm(heads=h, head_dim=inner // h, causal=causal, scale=scale,
                                attn_drop=drops[0] if len(drops) == 1 else "",
                                out_drop=after[0] if len(after) == 1 else "", **shape)


def recognise(mod: nn.Module, x: torch.Tensor, y: Any, reader: str = "") -> tuple[AttentionForm | None, str]:
    """The form of `mod` when it computes a standard attention (its call on `x` gave `y`), or
    None and why not. `reader`: the model's only Linear reading `y` ('' when there is none),
    for an attention without an output projection. `mod` must be in eval mode."""
    if isinstance(mod, HandHeadsAttention):
        return mod.form, ""
    lin = _linears(mod)
    owned = {id(p) for m in lin.values() for p in m.parameters()}
    extra = [n for n, p in mod.named_parameters() if id(p) not in owned]
    if extra:
        return None, f"it holds parameters besides its projections ({', '.join(extra[:3])})"
    if not any(_head_counts(mod, _inner(lin, s)) for s in _shapes(mod)):
        return None, f"it names no head count (an attribute {HEAD_ATTRS[0]}, {HEAD_ATTRS[1]} or {HEAD_DIM_ATTRS[0]})"
    wrapped = isinstance(y, tuple) and len(y) == 1
    if isinstance(y, (tuple, list)) and len(y) > 1:
        return None, "it returns more than its output (its attention weights?)"
    y = y[0] if wrapped else y
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 3 and isinstance(y, torch.Tensor)
            and y.dim() == 3 and y.shape[:2] == x.shape[:2]):
        return None, "it is not called with one (batch, tokens, features) tensor giving one"
    gen = torch.Generator(device=x.device).manual_seed(0)
    cases = [(x, y)]
    # A random input, and one of other length: with a single token, causal and not are one.
    for length in (x.shape[1], x.shape[1] + 3):
        probe = torch.randn((x.shape[0], length, x.shape[2]), generator=gen, device=x.device, dtype=x.dtype)
        probe = probe * x.std().clamp_min(1e-3) + x.mean()
        with torch.no_grad():
            try:
                out = mod(probe)
            except Exception:  # noqa: BLE001 - a forward made for one length only
                if x.shape[1] == 1:
                    return None, "it was seen on one token only and takes no other length: causal or not is unknown"
                continue
        cases.append((probe, out[0] if wrapped and isinstance(out, tuple) else out))
    with torch.no_grad():
        for form in _readings(mod, x.shape[-1]):
            if not form.proj and not reader:
                continue
            try:
                if all(_close(_attend(mod, form, a, form.heads), b) for a, b in cases):
                    return replace(form, reader="" if form.proj else reader, returns_tuple=wrapped), ""
            except RuntimeError:
                continue
    if not reader and all(not s["proj"] for s in _shapes(mod)):
        return None, "its heads go out without an output projection, and not to one Linear layer alone"
    return None, ("its output is not a standard attention's over its projections (q/k norms, a position bias "
                  "or rotary embedding, another scale?)")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= RTOL * b.abs().max().clamp_min(1e-6))


def _candidate(mod: nn.Module) -> bool:
    """Shaped like an attention: projections around an output Linear, or, without one (weaker
    evidence: one Linear of 3·n outputs, three alike), projections beside a stated head count."""
    lin = _linears(mod)
    return any(s["proj"] or _head_counts(mod, _inner(lin, s)) for s in _shapes(mod))


def hand_attentions(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[AttentionForm | None, str]]:
    """Each module of `model` shaped like a hand-written attention (Linear layers holding all its
    parameters, two to four of them), with its form or why it was not recognised. One eval-mode
    forward on `example`, only when there is such a module."""
    found = {n: m for n, m in model.named_modules()
             if n and not isinstance(m, (nn.Linear, nn.Sequential, nn.ModuleList, nn.MultiheadAttention))
             and (isinstance(m, HandHeadsAttention) or _candidate(m))}
    if not found:
        return {}
    seen: dict[str, list[tuple[Any, Any]]] = {n: [] for n in found}
    read: list[tuple[str, Any]] = []  # (Linear, its input): which layer reads an attention's heads

    def hook(name: str):
        def record(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            extra = [a for a in (*args[1:], *kwargs.values()) if not _absent(a)]
            seen[name].append((args[0] if args and not extra else None, out))
        return record

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in found.items()]
    handles += [m.register_forward_pre_hook(lambda _m, args, n=n: read.append((n, args[0] if args else None)))
                for n, m in model.named_modules() if type(m) is nn.Linear]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    out: dict[str, tuple[AttentionForm | None, str]] = {}
    for name in sorted(found, key=lambda n: -n.count(".")):  # innermost first: a wrapper is not the attention
        if any(o.startswith(name + ".") and f for o, (f, _) in out.items()):
            continue
        calls = seen[name]
        if not calls:
            out[name] = (None, "did not run in the traced forward")
        elif len(calls) > 1:
            out[name] = (None, "runs more than once (shared weights)")
        elif calls[0][0] is None:
            out[name] = (None, "called with more than its input tensor (a mask, a context?)")
        else:
            mod = found[name]
            y = calls[0][1][0] if isinstance(calls[0][1], tuple) and calls[0][1] else calls[0][1]
            readers = [n for n, t in read if t is y and not n.startswith(name + ".")]
            was = mod.training
            mod.eval()
            try:
                out[name] = recognise(mod, calls[0][0], calls[0][1], readers[0] if len(readers) == 1 else "")
            finally:
                mod.train(was)
    return {n: out[n] for n in found if n in out}


def slim_hand_heads(model: nn.Module, name: str, form: AttentionForm, kept_heads: Sequence[int]) -> None:
    """Replace the hand-written attention `name` of `model` by its `HandHeadsAttention`."""
    old = model.get_submodule(name)
    if isinstance(old, HandHeadsAttention):
        # Pruned again: heads are numbered among those it kept.
        kept = [old.kept_heads[i] for i in kept_heads]
        base = AttentionForm(**{**old.form.__dict__, "heads": old.num_heads})
        new = HandHeadsAttention(old, base, sorted(kept_heads))
        new.kept_heads, new.original_heads = sorted(kept), old.original_heads
    else:
        new = HandHeadsAttention(old, form, kept_heads)
    if form.reader:  # numbered among the heads the reader reads now
        _cut(model, form.reader, head_columns(form.head_dim, sorted(int(h) for h in kept_heads)), "in")
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
