"""Which conv and linear layers a compression method takes, and why it leaves each of the others.

Every conv and linear of the model gets one entry in the method's report (`summary()` →
report.json `<method>.layers`), and so does each q/k/v projection of an `nn.MultiheadAttention`
(`<attention>.q_proj`, ...: attention_projections.py), each gate map of an RNN, LSTM or GRU
(`<rnn>.ih_l0`, `<rnn>.hh_l0`, ...: recurrent_weights.py) and every other weight matrix (a parameter
of two or more dimensions outside those layers, listed as skipped): nothing is left out silently.
Layers left out by a setting (the first conv, the classifier) or for having nothing to gain are
only listed; layers left out for a reason no setting controls (an unsupported type, a parent
that reads the weight itself) also raise one `CompressionWarning` naming them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import nn

from crossdistill.attention_projections import packed_layers
from crossdistill.recurrent_weights import RecurrentWeight, layer_names, supported_reason
from crossdistill.capture import ALL_CONVS, tied_weights, unsupported_reason
from crossdistill.errors import outside_stacklevel

PLANNED, SKIPPED = "planned", "skipped"
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)


class CompressionWarning(UserWarning):
    """A layer the method could not compress (the CLI prints it as one line)."""


def layer_kind(module: nn.Module) -> str:
    """A short description for the report: 'Conv2d 3x3 depthwise', 'Conv1d 5', 'Linear'."""
    if isinstance(module, ALL_CONVS):
        kind = f"{type(module).__name__} {'x'.join(map(str, module.kernel_size))}"
        if module.groups > 1:
            kind += " depthwise" if module.groups == module.in_channels else f" groups={module.groups}"
        return kind
    return type(module).__name__


@dataclass
class Coverage:
    """The per-layer status list of one method on one model, in module order."""

    method: str
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, kind: str) -> None:
        self.entries[name] = {"name": name, "type": kind, "status": PLANNED}

    def skip(self, name: str, reason: str, *, warn: bool = False) -> None:
        self.entries[name].update(status=SKIPPED, reason=reason)
        if warn:
            self.entries[name]["warned"] = True

    def done(self, name: str, status: str, **details: Any) -> None:
        """Record what was done to a planned layer (e.g. status 'pruned', sparsity=0.9)."""
        self.entries[name].update(status=status, **details)

    @property
    def planned(self) -> list[str]:
        return [n for n, e in self.entries.items() if e["status"] == PLANNED]

    def warn(self) -> None:
        """One warning that names every layer left out for a reason no setting controls."""
        by_reason: dict[str, list[str]] = {}  # a reason said once for all its layers: a ViT repeats one per block
        for n, e in self.entries.items():
            if e.get("warned"):
                by_reason.setdefault(e["reason"], []).append(n)
        if by_reason:
            left = [f"{', '.join(names)} ({reason})" for reason, names in by_reason.items()]
            warnings.warn(f"{self.method}: left uncompressed: " + "; ".join(left), CompressionWarning,
                          stacklevel=outside_stacklevel())

    def report(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "warned"} for e in self.entries.values()]


def bare_weights(model: nn.Module) -> list[tuple[str, str]]:
    """Weight matrices outside any conv, linear or attention (a module's forward that runs
    `F.conv2d(x, self.w)` itself, an embedding table, a position embedding), with why they are
    left as they are: no layer module holds them, so no input to solve them on is captured."""
    modules = dict(model.named_modules())
    out = []
    for name, p in model.named_parameters():
        owner_name = name.rpartition(".")[0]
        owner = modules.get(owner_name)
        if p.dim() < 2 or ".parametrizations." in f".{name}" or isinstance(owner, _LAYERS):
            continue
        if isinstance(owner, (nn.Embedding, nn.EmbeddingBag)):
            reason = "an Embedding table: a lookup, not a W·x layer"
        elif isinstance(owner, nn.RNNBase):
            leaf = name.rpartition(".")[2]
            if supported_reason(owner) is None and leaf.startswith(("weight_ih_", "weight_hh_")):
                continue  # a layer of its own (`<rnn>.ih_l0`, ...): recurrent_weights.py
            reason = (f"an LSTM's projection (proj_size): it reads the cell's output before projection, which the "
                      "fused kernel does not return" if leaf.startswith("weight_hr_")
                      else f"a recurrent layer's weights: {supported_reason(owner)}")
        else:
            where = f"of {type(owner).__name__}" if owner_name else "of the model itself"
            reason = (f"a bare parameter {where}, which its forward uses itself (a class token, a position "
                      "embedding, or a weight in F.conv2d(x, self.weight)); only the weights of torch's "
                      "conv and nn.Linear layers are compressed")
        out.append((name, reason))
    return out


def survey(model: nn.Module, method: str, *, first: bool, last: bool, first_setting: str, last_setting: str,
           order: Sequence[str] | None = None, input_readers: Sequence[str] | None = None,
           output_layers: Sequence[str] | None = None) -> Coverage:
    """Every conv and linear of `model` (and every attention's q/k/v projection) in module order,
    planned unless unsupported, unless it is a first conv (one that reads the model's input; kept
    unless `first`) or the last layer (of `output_layers`, those making the predictions, else of
    all, the one its forward runs last: a classifier or an output conv; kept unless `last`). First and last are by `order`, the order a forward pass runs the
    layers, when given (a classifier defined before other linears, or an auxiliary head defined
    after it, is still found); else by module order (the last Linear), which is the forward order
    of the registered models."""
    cov = Coverage(method)
    convs: list[str] = []
    linears: list[str] = []
    layers: list[str] = []  # supported or not: which one runs first or last is a fact of the model
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.MultiheadAttention, nn.RNNBase)):
            # Never the classifier: not entered in `linears`.
            views = packed_layers(mod) if isinstance(mod, nn.MultiheadAttention) else \
                [] if supported_reason(mod) is not None else \
                [(layer, RecurrentWeight(mod, part, k, d)) for layer, part, k, d in layer_names("", mod)]
            for leaf, view in views:
                cov.add(f"{name}.{leaf}" if name else leaf, view.kind())
        if not isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        cov.add(name, layer_kind(mod))
        layers.append(name)
        reason = unsupported_reason(mod)
        if reason is not None:
            cov.skip(name, f"unsupported: {reason}", warn=True)
        elif isinstance(mod, ALL_CONVS):
            convs.append(name)
        else:
            linears.append(name)
    for name, reason in bare_weights(model):
        cov.add(name, "Parameter")
        cov.skip(name, reason, warn=True)
    if order is not None:
        rank = {n: i for i, n in enumerate(order)}
        convs = sorted((n for n in convs if n in rank), key=rank.__getitem__)
        linears = sorted((n for n in linears if n in rank), key=rank.__getitem__)
        layers = sorted((n for n in layers if n in rank), key=rank.__getitem__)
    if not first and convs:
        # Every conv that reads the raw input is a first conv (parallel stem branches). Where the
        # forward was traced and no conv reads the input (an embedding or a Linear does),
        # there is none: the first Conv2d deep inside is not a stem.
        all_convs = [n for n in layers if isinstance(model.get_submodule(n), ALL_CONVS)]
        stems = [n for n in input_readers if n in convs] if input_readers is not None else \
            [n for n in all_convs[:1] if n in convs]  # an unsupported first conv is skipped already
        for n in stems:
            cov.skip(n, f"the first conv ({first_setting}=False)" if n == stems[0] else
                     f"a first conv: it reads the model's input too ({first_setting}=False)")
    if not last and order is not None and (convs or linears):
        # The layer the forward runs last is the output layer: the classifier, or the conv head of
        # a segmentation net, a decoder, a generator (whose Linear, if any, runs first: a
        # projection of the latent, not a classifier), or of a net with Linear layers inside (SE).
        heads = [n for n in output_layers or () if n in convs or n in linears]
        # Without heads named: the layer run last, and where it is unsupported (skipped already)
        # none, rather than the one before it.
        final = max(heads or layers, key=rank.__getitem__)
        if final in convs or final in linears:
            cov.skip(final, f"the last linear, the classifier ({last_setting}=False)" if final in linears
                     else f"the last layer, the output head ({last_setting}=False)")
    elif not last and linears:
        cov.skip(linears[-1], f"the last linear, the classifier ({last_setting}=False)")
    # After first/last: a tied output layer is still the model's last linear, not the one before it.
    for name, reason in tied_weights(model.named_modules()).items():
        if name in cov.entries:
            cov.skip(name, reason, warn=True)
    return cov
