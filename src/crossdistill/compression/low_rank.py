"""Low-rank factorisation as a compression method (`--prune lowrank`).

A k×k conv (out × in) becomes a k×k conv with r output channels (same stride, padding and
dilation) followed by a 1×1 conv r → out that carries the original bias (a transposed conv: a
transposed conv to r channels, then the 1×1 conv; a call's `output_size=` goes to the first
factor); a Linear becomes
Linear(in → r, no bias) then Linear(r → out). A conv of G groups is G independent layers
(solved group by group, crossdistill/layer_solve.py): each group gets rank r, and the factors
are a k×k conv in → G·r and a 1×1 conv G·r → out, both of G groups (a depthwise conv has rank
1 per group already, so it never gets cheaper and stays dense). The solver (`svd` under the
objective's metric, or `svd-plain`) writes the rank-r weight W = U V into the dense layer, so
the layers solved after it see the factorised layer's real output; `finalize` then splits W by
an exact SVD into balanced factors U √Σ, √Σ V and swaps the module.

Rank per layer (per conv group): `rank_ratio` of min(out, in·k²), or `flops_ratio`: the
factorised layer's multiply-accumulates, r·(in·k² + out) per output position, at most that
fraction of the dense layer's out·in·k² (a uniform per-layer budget, so the network's FLOPs in
the factorised layers fall by the same fraction). A layer whose rank would not make it cheaper
is left dense and is not solved. By default the first conv (3 input channels: little to gain,
much to lose) and the final linear stay dense (`lowrank_first`, `lowrank_last`). A layer whose
parent reads its `weight` directly (an attention's out_proj, a TransformerEncoderLayer's
linear1/linear2, which its fused fast path reads) is never replaced: the factor module has no
`weight` and the parent would fail. The report lists every layer and why it was left
(`summary()["lowrank"]["layers"]`).

Persistence: after `finalize` the model carries
    model.crossdistill_lowrank = {layer_name: {"rank": r, "kind": "conv" | "linear"}}
(r per conv group; a grouped conv's factors take their groups from the dense layer, so the
entry also says "groups": G for the reader's information)
Module names of the factors are `{layer}.0` (k×k or in → r) and `{layer}.1` (1×1 or r → out),
so state-dict keys are `{layer}.0.weight`, `{layer}.1.weight`, `{layer}.1.bias`. To load: build
the dense model (`create_model(name, **model.spec())` still works: the factorised module keeps
`in_channels`/`out_channels`/`in_features`/`out_features`), call
`restore_lowrank(model, metadata)`, then load the state dict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from crossdistill.capture import (CONVS, SOLVABLE, TRANSPOSED, conv_class, conv_groups, get_module, group_size,
                                  set_weight_matrix, weight_matrix)
from crossdistill.capture_points import parent_reads_weight
from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.channels import _replace
from crossdistill.compression.coverage import Coverage, survey
from crossdistill.compression.quantization import model_size_bytes
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError
from crossdistill.params import param
from crossdistill.solvers import LayerTask

LOWRANK_ATTR = "crossdistill_lowrank"


class LowRankLayer(nn.Sequential):
    """Two factors in sequence that stand in for one conv or linear; exposes the replaced
    layer's shape attributes so code that reads them (e.g. `model.spec()`) keeps working."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__(first, second)

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        # A transposed conv may be called with output_size= (`up(x, output_size=skip.shape)`):
        # its first factor has the same stride and padding, so the size goes to it.
        if output_size is not None:
            return self[1](self[0](x, output_size=output_size))
        return self[1](self[0](x))

    @property
    def rank(self) -> int:
        """The rank of the whole layer (groups × the rank per group)."""
        f = self[0]
        return f.out_features if isinstance(f, nn.Linear) else f.out_channels

    @property
    def in_channels(self) -> int:
        return self[0].in_channels

    @property
    def out_channels(self) -> int:
        return self[1].out_channels

    @property
    def in_features(self) -> int:
        return self[0].in_features

    @property
    def out_features(self) -> int:
        return self[1].out_features


def empty_factorisation(layer: nn.Module, rank: int) -> LowRankLayer:
    """Factor modules of the right shapes (weights uninitialised in meaning, to be filled);
    `rank` per conv group."""
    has_bias = layer.bias is not None
    where = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, CONVS):
        g, conv = layer.groups, conv_class(layer)
        first = conv(layer.in_channels, g * rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                     groups=g, bias=False, **where)
        second = conv(g * rank, layer.out_channels, 1, groups=g, bias=has_bias, **where)
    elif isinstance(layer, TRANSPOSED):
        # The transposed conv to `rank` channels per group, then a pointwise conv: a pointwise map
        # commutes with the stuffing and flipping that make a transposed conv a conv.
        g = layer.groups
        kind = next(c for c in TRANSPOSED if isinstance(layer, c))
        first = kind(layer.in_channels, g * rank, layer.kernel_size, layer.stride, layer.padding,
                     layer.output_padding, groups=g, bias=False, dilation=layer.dilation, **where)
        second = CONVS[TRANSPOSED.index(kind)](g * rank, layer.out_channels, 1, groups=g, bias=has_bias, **where)
    elif isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False, **where)
        second = nn.Linear(rank, layer.out_features, bias=has_bias, **where)
    else:
        raise CrossDistillError(f"cannot factorise a {type(layer).__name__}")
    return LowRankLayer(first, second)


def factorise(layer: nn.Module, rank: int) -> LowRankLayer:
    """Exact split of a layer whose weight has rank ≤ `rank` per conv group (else its best
    rank-`rank` part): group g's rows W_g = U_g V_g, with V_g the first factor's filters of
    group g and U_g the second factor's rows of group g."""
    W = weight_matrix(layer).to(torch.float64)
    Us, Vs = [], []
    for W_g in W.chunk(conv_groups(layer), 0):
        P, s, Qt = torch.linalg.svd(W_g, full_matrices=False)
        root = s[:rank].sqrt()
        Us.append(P[:, :rank] * root)  # (out/G, r)
        Vs.append(root[:, None] * Qt[:rank])  # (r, in/G·k²)
    U, V = torch.cat(Us, 0), torch.cat(Vs, 0)
    new = empty_factorisation(layer, rank)
    dtype = layer.weight.dtype
    set_weight_matrix(new[0], V)
    with torch.no_grad():
        new[1].weight.copy_(U.reshape(new[1].weight.shape).to(dtype))
        if layer.bias is not None:
            new[1].bias.copy_(layer.bias.detach())
    return new


def rank_for(out: int, d: int, rank_ratio: float | None, flops_ratio: float | None) -> int:
    """The rank of an (out, d) weight (of one conv group) under the budget."""
    full = min(out, d)
    if flops_ratio is not None:
        r = math.floor(flops_ratio * out * d / (out + d))
    else:
        r = round(float(rank_ratio) * full)
    return max(1, min(full, int(r)))


def _check_ratio(name: str, v: float | None, upper_inclusive: bool = True) -> float | None:
    if v is None:
        return None
    v = float(v)
    ok = 0.0 < v <= 1.0 if upper_inclusive else 0.0 < v < 1.0
    if not ok:
        raise CrossDistillError(f"{name} must lie in (0, 1{']' if upper_inclusive else ')'}, got {v}")
    return v


@dataclass
class LowRank(CompressionMethod):
    name = "lowrank"
    solver_family = "lowrank"
    default_solver = "svd"

    rank_ratio: float | None = param(None, "rank = ratio x min(out, in*k^2) per layer (default 0.5)",
                                     low=0, low_open=True, high=1)
    flops_ratio: float | None = param(None, "instead of rank_ratio, keep at most this share of each "
                                      "layer's FLOPs", low=0, low_open=True, high=1, high_open=True)
    lowrank_first: bool = param(False, "factorise the first layer too", show=False)
    lowrank_last: bool = param(False, "factorise the last layer too", show=False)

    def check(self) -> None:
        if self.rank_ratio is not None and self.flops_ratio is not None:
            raise CrossDistillError("give either rank_ratio or flops_ratio for low rank, not both")
        if self.rank_ratio is None and self.flops_ratio is None:
            self.rank_ratio = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        self._coverage: Coverage | None = None

    def plan(self, model: nn.Module) -> list[LayerTask]:
        cov = survey(model, "lowrank", first=self.lowrank_first, last=self.lowrank_last,
                     first_setting="lowrank_first", last_setting="lowrank_last", order=self.layer_order,
                     input_readers=self.input_readers, output_layers=self.output_layers)
        self._coverage = cov
        tasks = []
        too_costly = 0
        for name in cov.planned:
            reason = parent_reads_weight(model, name)
            if reason is not None:
                cov.skip(name, f"not factorised: {reason}", warn=True)
                continue
            layer = get_module(model, name)
            groups = conv_groups(layer)
            rows, d = weight_matrix(layer).shape
            out = rows // groups  # one group's weight is out x d
            r = rank_for(out, d, self.rank_ratio, self.flops_ratio)
            if r * (out + d) >= out * d:  # the factors would cost as much as the dense layer
                per = " per group" if groups > 1 else ""
                cov.skip(name, f"rank {r}{per} of a {out}x{d} weight would not make it cheaper")
                too_costly += 1
                continue
            tasks.append(LayerTask(name=name, group=group_size(layer), params={"rank": r}))
        cov.warn()
        if not tasks and too_costly:
            raise CrossDistillError(
                f"no layer gets cheaper at {self.describe()}: lower the rank or FLOPs ratio"
            )
        if not tasks:  # no ratio helps: say why each layer is out
            left = [f"{e['name']} ({e['reason']})" for e in cov.report() if e.get("reason")]
            more = f"; and {len(left) - 6} more" if len(left) > 6 else ""
            raise CrossDistillError("low rank: no layer of this model can be factorised, whatever the rank: "
                                    + "; ".join(left[:6]) + more)
        return tasks

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        meta = dict(getattr(model, LOWRANK_ATTR, {}) or {})
        for rec in records:
            if "rank" not in rec.info:
                continue
            layer = get_module(model, rec.name)
            r = int(rec.info["rank"])
            _replace(model, rec.name, factorise(layer, r))
            meta[rec.name] = {"rank": r, "kind": "linear" if isinstance(layer, nn.Linear) else "conv"}
            if conv_groups(layer) > 1:
                meta[rec.name]["groups"] = conv_groups(layer)
            if self._coverage is not None and rec.name in self._coverage.entries:
                self._coverage.done(rec.name, "factorised", rank=r)
        setattr(model, LOWRANK_ATTR, meta)
        return model

    def summary(self, model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {"model_size": model_size_bytes(model)}
        if self._coverage is not None:
            out["lowrank"] = {"layers": self._coverage.report()}
        return out

    def describe(self) -> str:
        # Only the budget that is in force: the other one is None by construction.
        budget = f"rank_ratio={self.rank_ratio:g}" if self.flops_ratio is None else f"flops_ratio={self.flops_ratio:g}"
        return f"lowrank({budget})"


def lowrank_metadata(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {n: dict(v) for n, v in (getattr(model, LOWRANK_ATTR, None) or {}).items()}


def restore_lowrank(model: nn.Module, metadata: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Swap the named dense layers of a freshly built model for factor modules of the saved
    ranks, so that the saved state dict loads into it."""
    for name, m in metadata.items():
        layer = get_module(model, name)
        if isinstance(layer, LowRankLayer):
            continue
        if not isinstance(layer, SOLVABLE):
            raise CrossDistillError(f"low-rank layer {name!r}: the model has a {type(layer).__name__} there")
        r = int(m["rank"])
        rows, d = weight_matrix(layer).shape
        if not 1 <= r <= min(rows // conv_groups(layer), d):
            raise CrossDistillError(f"low-rank layer {name!r}: rank {r} does not fit its shape")
        _replace(model, name, empty_factorisation(layer, r))
    setattr(model, LOWRANK_ATTR, {n: dict(v) for n, v in metadata.items()})
    return model
