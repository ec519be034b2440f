"""Attention heads as channel groups: an `nn.MultiheadAttention`'s heads are pruned like any
other units, and the attention is replaced by a `HeadPrunedAttention` with fewer heads.

Head i of an attention is rows i·d..(i+1)·d of its q, k and v projections (d the head width)
and the same columns of `out_proj`'s weight; nothing outside the attention reads those
channels. Zeroing a head's `out_proj` columns removes it from the output exactly, so a head is
a unit of d channels with three producers (the q/k/v projections, `attention_projections`) and
one reader (`out_proj`), chosen and re-solved like a conv's input channels: the out_proj
problem on the attention outputs of all heads decides which heads stay. The residual stream
around the attention stays whole (its LayerNorms normalise over it).

`nn.MultiheadAttention` cannot hold fewer heads than its `embed_dim` implies (its heads are
`embed_dim // num_heads` wide and its projections `embed_dim` tall), so slimming replaces it
with `HeadPrunedAttention`: the same call signature, masks and outputs, with q/k/v/out_proj as
`nn.Linear` layers of the kept heads' width.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.errors import CrossDistillError


class HeadPrunedAttention(nn.Module):
    """An `nn.MultiheadAttention` that kept `kept_heads` of its heads: called and answering as
    the attention it replaces (query/key/value, `key_padding_mask`, `attn_mask` of shape (L, S)
    or (N·heads, L, S) with the original head count, `need_weights`, `average_attn_weights`,
    `batch_first`, unbatched inputs), with its q, k, v and out projections as Linear layers.

    `in_proj_weight`/`in_proj_bias` are None and `_qkv_same_embed_dim` False, which is what
    keeps `nn.TransformerEncoderLayer` off its fused fast path (that kernel needs the packed
    projections of a full attention)."""

    in_proj_weight = None
    in_proj_bias = None
    bias_k = None
    bias_v = None
    add_zero_attn = False
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, kept_heads: Sequence[int], head_dim: int, *, kdim: int | None = None,
                 vdim: int | None = None, bias: bool = True, dropout: float = 0.0, batch_first: bool = False,
                 original_heads: int | None = None) -> None:
        super().__init__()
        if not kept_heads:
            raise CrossDistillError("an attention must keep at least one head")
        self.embed_dim, self.head_dim = embed_dim, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.kept_heads = [int(h) for h in kept_heads]
        self.num_heads = len(self.kept_heads)
        self.original_heads = original_heads or max(self.kept_heads) + 1
        self.dropout, self.batch_first = dropout, batch_first
        inner = self.num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_attention(cls, attention: nn.MultiheadAttention, kept_heads: Sequence[int]) -> "HeadPrunedAttention":
        """The heads `kept_heads` of `attention`, with its weights (on its device and dtype)."""
        if not isinstance(attention, nn.MultiheadAttention):
            raise CrossDistillError(f"a {type(attention).__name__} is not an nn.MultiheadAttention")
        reason = head_pruning_reason(attention)
        if reason:
            raise CrossDistillError(f"cannot prune the heads of this attention: {reason}")
        kept = sorted(int(h) for h in kept_heads)
        if not kept or kept[0] < 0 or kept[-1] >= attention.num_heads or len(set(kept)) != len(kept):
            raise CrossDistillError(f"kept heads {list(kept_heads)} must be distinct, within 0..{attention.num_heads - 1}")
        e = attention.embed_dim
        if attention.in_proj_weight is not None:
            weights = [attention.in_proj_weight[i * e:(i + 1) * e] for i in range(3)]
        else:
            weights = [attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight]
        b = attention.in_proj_bias
        biases = [None if b is None else b[i * e:(i + 1) * e] for i in range(3)]
        return cls._copied(attention, kept, kept, attention.num_heads, weights, biases)

    def keep(self, kept_heads: Sequence[int]) -> "HeadPrunedAttention":
        """The heads `kept_heads` (numbered among this attention's `num_heads`) of this attention:
        a student pruned again."""
        kept = sorted(int(h) for h in kept_heads)
        if not kept or kept[0] < 0 or kept[-1] >= self.num_heads or len(set(kept)) != len(kept):
            raise CrossDistillError(f"kept heads {list(kept_heads)} must be distinct, within 0..{self.num_heads - 1}")
        projs = (self.q_proj, self.k_proj, self.v_proj)
        return self._copied(self, kept, [self.kept_heads[h] for h in kept], self.original_heads,
                            [p.weight for p in projs], [p.bias for p in projs])

    @classmethod
    def _copied(cls, source: nn.Module, rows_of: list[int], kept: list[int], original: int,
                weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> "HeadPrunedAttention":
        """A HeadPrunedAttention of `source`'s heads `rows_of` (its own numbering), which are the
        original attention's heads `kept`; `weights`/`biases`: its q, k, v projections."""
        d, out = source.head_dim, source.out_proj
        new = cls(source.embed_dim, kept, d, kdim=source.kdim, vdim=source.vdim, bias=out.bias is not None,
                  dropout=source.dropout, batch_first=source.batch_first, original_heads=original)
        new.to(device=out.weight.device, dtype=out.weight.dtype)
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in rows_of]).to(out.weight.device)
        with torch.no_grad():
            for proj, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                proj.weight.copy_(w[rows])
                if b is not None:
                    proj.bias.copy_(b[rows])
            new.out_proj.weight.copy_(out.weight[:, rows])
            if out.bias is not None:
                new.out_proj.bias.copy_(out.bias)
        new.train(source.training)
        return new

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, n: int, length: int,
              source: int, dtype: torch.dtype, batched: bool) -> torch.Tensor | None:
        """One additive mask broadcastable to (N, kept heads, L, S), or None."""
        mask = None
        if attn_mask is not None:
            m = _additive(attn_mask, dtype, "attn_mask")
            if m.dim() == 2:
                if tuple(m.shape) != (length, source):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(m.shape)}, but should be "
                                       f"{(length, source)}.")
                mask = m[None, None]
            elif m.dim() == 3:
                if m.shape[0] == n * self.original_heads and tuple(m.shape[1:]) == (length, source):
                    # One mask per head of the original attention, batch-major: keep the kept heads'.
                    mask = m.reshape(n, self.original_heads, length, source)[:, self.kept_heads]
                elif m.shape[0] == n * self.num_heads and tuple(m.shape[1:]) == (length, source):
                    # Made for this attention's own head count (`expand(n * attn.num_heads, ...)`).
                    mask = m.reshape(n, self.num_heads, length, source)
                else:
                    raise RuntimeError(
                        f"The shape of the 3D attn_mask is {tuple(m.shape)}, but should be "
                        f"{(n * self.original_heads, length, source)} (one mask per head of the original "
                        f"{self.original_heads}) or {(n * self.num_heads, length, source)} (one per kept head).")
            else:
                raise RuntimeError(f"attn_mask's dimension {m.dim()} is not supported")
        if key_padding_mask is not None:
            kpm = _additive(key_padding_mask if batched else key_padding_mask.unsqueeze(0), dtype, "key_padding_mask")
            if tuple(kpm.shape) != (n, source):
                raise RuntimeError(f"key_padding_mask has shape {tuple(kpm.shape)}, expected {(n, source)}")
            kpm = kpm[:, None, None, :]
            mask = kpm if mask is None else mask + kpm
        return mask

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            # As nn.MultiheadAttention: is_causal is a hint about attn_mask, not a mask.
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise RuntimeError(f"query, key and value must be 2-d (unbatched) or 3-d (batched), got "
                               f"{query.dim() - (not batched)}-d, {key.dim() - (not batched)}-d and "
                               f"{value.dim() - (not batched)}-d")
        if key.shape[:2] != value.shape[:2]:
            raise RuntimeError(f"key shape {tuple(key.shape)} does not match value shape {tuple(value.shape)}")
        n, length, source = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(n, length, h, d).transpose(1, 2)
        k = self.k_proj(key).view(n, source, h, d).transpose(1, 2)
        v = self.v_proj(value).view(n, source, h, d).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, n, length, source, q.dtype, batched)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if p > 0:
                weights = F.dropout(weights, p)  # torch returns the weights after dropout too
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, h * d))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads} (heads {self.kept_heads} of "
                f"{self.original_heads}), head_dim={self.head_dim}, batch_first={self.batch_first}")


def _additive(mask: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    """A boolean mask (True: not attended) as -inf/0, a float one as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise RuntimeError(f"only bool and floating types of {what} are supported, got {mask.dtype}")
    return mask.to(dtype)


def head_pruning_reason(attention: nn.Module) -> str:
    """Why this attention's heads cannot be pruned ('' when they can)."""
    if attention.num_heads < 2:
        return "a single head"
    if attention.bias_k is not None or attention.add_zero_attn:
        return "add_bias_kv or add_zero_attn (an extra key slot shared by all heads)"
    return ""


def slim_heads(model: nn.Module, attention: str, kept_heads: Sequence[int]) -> None:
    """Replace the attention named `attention` in `model` by its `HeadPrunedAttention`."""
    old = model.get_submodule(attention)
    if isinstance(old, HeadPrunedAttention):
        new = old.keep(kept_heads)
    elif isinstance(old, nn.MultiheadAttention):
        new = HeadPrunedAttention.from_attention(old, kept_heads)
    else:
        raise CrossDistillError(f"{attention!r} is a {type(old).__name__}, not an nn.MultiheadAttention")
    parent_name, _, leaf = attention.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
    for mod in model.modules():
        # TransformerEncoder turns padded batches into nested tensors when its layers could run
        # the fused kernel; a pruned attention cannot, and takes dense tensors only.
        if isinstance(mod, nn.TransformerEncoder) and any(new is m for m in mod.modules()):
            mod.use_nested_tensor = False

