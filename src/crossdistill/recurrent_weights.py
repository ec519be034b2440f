"""The weights of `nn.RNN`, `nn.LSTM` and `nn.GRU` as Linear layers the solvers can reach.

Layer k of a recurrent module computes its gates, per direction and time step, from two maps:
`W_ih x_t + b_ih` on its input and `W_hh h_{t-1} + b_hh` on its previous hidden state (torch
keeps them as `weight_ih_l{k}[_reverse]` and `weight_hh_l{k}[_reverse]`). Each is a `Y = W X`
whose samples are the time steps, so each is one quadratic problem like a Linear on tokens.
They are solved as two problems rather than one on [x_t; h_{t-1}]: a GRU's candidate gate
multiplies `W_hn h + b_hn` by its reset gate, so only the two maps apart are linear for all
three kinds. Layers are named `<rnn>.ih_l0`, `<rnn>.hh_l0`, `<rnn>.ih_l0_reverse`, ...

The module runs as one fused kernel, which shows neither a deeper layer's input nor the hidden
states of every step: `recurrent_inputs` re-runs the recurrence step by step from the module's
own parameters (eval mode: no dropout between layers) and checks that it ends where the
module's own forward does. The hidden state that `W_hh` reads at step t is the one the
recurrence has then, under the weights the module has now, so a student's `hh` map is solved
on the states its already solved `ih` map produces. An LSTM's projection (`proj_size`,
`weight_hr_l{k}`) reads a state the kernel does not return and is left as it is.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.weight_views import WeightView

PARTS = ("ih", "hh")
_KINDS = (nn.RNN, nn.LSTM, nn.GRU)


def _suffix(direction: int) -> str:
    return "_reverse" if direction else ""


def supported_reason(rnn: nn.Module) -> str | None:
    """Why the weights of recurrent module `rnn` cannot be solved (None when they can)."""
    base = next((k for k in _KINDS if isinstance(rnn, k)), None)
    if base is None:
        return f"a {type(rnn).__name__}: only torch's RNN, LSTM and GRU are solved"
    if type(rnn).forward is not base.forward:
        return f"a {type(rnn).__name__} with a forward of its own (its gates need not be W·x + W·h)"
    return None


class RecurrentWeight(WeightView):
    """Map `part` ('ih' or 'hh') of layer `layer`, direction `direction` of `rnn`, as a Linear."""

    def __init__(self, rnn: nn.RNNBase, part: str, layer: int, direction: int) -> None:
        weight = getattr(rnn, f"weight_{part}_l{layer}{_suffix(direction)}")
        super().__init__(rnn, weight.shape[1], weight.shape[0])
        self.part, self.layer, self.direction = part, layer, direction

    @property
    def rnn(self) -> nn.RNNBase:
        return self.owner  # type: ignore[return-value]

    def _param_name(self, what: str) -> str:
        return f"{what}_{self.part}_l{self.layer}{_suffix(self.direction)}"

    def storage(self) -> tuple[nn.Parameter, slice]:
        return getattr(self.rnn, self._param_name("weight")), slice(None)

    @property  # type: ignore[override]
    def weight(self) -> torch.Tensor:
        return self.storage()[0]

    @property  # type: ignore[override]
    def bias(self) -> torch.Tensor | None:
        return getattr(self.rnn, self._param_name("bias"), None) if self.rnn.bias else None

    def storage_key(self, name: str) -> str:
        parent = name.rpartition(".")[0]
        return f"{parent}.{self._param_name('weight')}" if parent else self._param_name("weight")

    def read_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        inputs, states = recurrent_inputs(self.rnn, args, kwargs)
        return (inputs if self.part == "ih" else states)[(self.layer, self.direction)]

    def kind(self) -> str:
        return f"Linear ({type(self.rnn).__name__} {self._param_name('weight')})"

    def why_not_replaceable(self) -> str:
        return f"its weight is the {type(self.rnn).__name__}'s own parameter {self._param_name('weight')}"

    def extra_repr(self) -> str:
        return f"{self._param_name('weight')} of a {type(self.rnn).__name__}, in_features={self.in_features}, " \
               f"out_features={self.out_features}"


def layer_names(name: str, rnn: nn.RNNBase) -> list[tuple[str, str, int, int]]:
    """(layer name, part, layer, direction) of every map of the recurrent module named `name`, in
    the order its forward applies them (layer by layer; per layer each direction's ih, then hh)."""
    prefix = f"{name}." if name else ""
    return [(f"{prefix}{part}_l{k}{_suffix(d)}", part, k, d) for k in range(rnn.num_layers)
            for d in range(2 if rnn.bidirectional else 1) for part in PARTS]


def recurrent_weight(model: nn.Module, name: str) -> RecurrentWeight | None:
    """The recurrent map named `name` (e.g. 'encoder.lstm.hh_l1_reverse'), or None if `name` is not one."""
    parent_name, _, leaf = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        return None
    if not isinstance(parent, nn.RNNBase):
        return None
    for layer, part, k, d in layer_names("", parent):
        if layer == leaf:
            return RecurrentWeight(parent, part, k, d)
    return None


def recurrent_layers(model: nn.Module) -> list[tuple[str, RecurrentWeight]]:
    """(name, view) of every map of every supported recurrent module of `model`, in module order."""
    return [(layer, RecurrentWeight(m, part, k, d)) for name, m in model.named_modules()
            if isinstance(m, nn.RNNBase) and supported_reason(m) is None
            for layer, part, k, d in layer_names(name, m)]


def recurrent_modules(model: nn.Module) -> list[tuple[str, nn.RNNBase]]:
    """(name, module) of every recurrent module of `model`, supported or not."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]


def _call_args(rnn: nn.RNNBase, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if isinstance(x, nn.utils.rnn.PackedSequence):
        raise CrossDistillError(
            f"a {type(rnn).__name__} is given a PackedSequence: its weights are solved on padded batches only "
            "(pad the sequences to one length, or leave the model's recurrent layers out)")
    if not isinstance(x, torch.Tensor):
        raise CrossDistillError(f"a {type(rnn).__name__} is called without a tensor input")
    return x, hx


def recurrent_inputs(rnn: nn.RNNBase, args: tuple[Any, ...], kwargs: dict[str, Any]
                     ) -> tuple[dict[tuple[int, int], torch.Tensor], dict[tuple[int, int], torch.Tensor]]:
    """For a call `rnn(*args, **kwargs)`: per (layer, direction), the input its `ih` map reads and
    the previous hidden states its `hh` map reads, each (batch, steps, features); a module
    called without a batch axis gets one of size 1."""
    x, hx = _call_args(rnn, args, kwargs)
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(1)
    elif rnn.batch_first:
        x = x.transpose(0, 1)
    steps, n = x.shape[0], x.shape[1]
    dirs = 2 if rnn.bidirectional else 1
    h_size = rnn.proj_size if getattr(rnn, "proj_size", 0) else rnn.hidden_size
    is_lstm = isinstance(rnn, nn.LSTM)
    h0, c0 = (hx if is_lstm else (hx, None)) if hx is not None else (None, None)
    if h0 is None:
        h0 = x.new_zeros(rnn.num_layers * dirs, n, h_size)
    elif not batched:
        h0 = h0.unsqueeze(1)
    if is_lstm:
        c0 = x.new_zeros(rnn.num_layers * dirs, n, rnn.hidden_size) if c0 is None else (c0 if batched else c0.unsqueeze(1))
    inputs: dict[tuple[int, int], torch.Tensor] = {}
    states: dict[tuple[int, int], torch.Tensor] = {}
    layer_in = x
    for k in range(rnn.num_layers):
        outs = []
        for d in range(dirs):
            i = k * dirs + d
            seq, prev = _run_direction(rnn, k, d, layer_in, h0[i], c0[i] if is_lstm else None)
            inputs[(k, d)] = layer_in.transpose(0, 1)
            states[(k, d)] = prev.transpose(0, 1)
            outs.append(seq)
        layer_in = torch.cat(outs, dim=-1)
    _check_ends_as_module(rnn, args, kwargs, layer_in, batched)
    return inputs, states


def _run_direction(rnn: nn.RNNBase, k: int, d: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer k, direction d over x (steps, batch, features): its outputs (steps, batch, H) in
    time order, and the state each step read (the same shape, in the order the steps ran)."""
    sfx = _suffix(d)
    w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}{sfx}"), getattr(rnn, f"weight_hh_l{k}{sfx}")
    b_ih = getattr(rnn, f"bias_ih_l{k}{sfx}") if rnn.bias else None
    b_hh = getattr(rnn, f"bias_hh_l{k}{sfx}") if rnn.bias else None
    w_hr = getattr(rnn, f"weight_hr_l{k}{sfx}") if getattr(rnn, "proj_size", 0) else None
    from_input = nn.functional.linear(x, w_ih, b_ih)  # all steps at once
    order = range(x.shape[0] - 1, -1, -1) if d else range(x.shape[0])
    outs: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
    prev = []
    for t in order:
        prev.append(h)
        gi, gh = from_input[t], nn.functional.linear(h, w_hh, b_hh)
        if isinstance(rnn, nn.LSTM):
            i, f, g, o = (gi + gh).chunk(4, dim=-1)
            assert c is not None
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            if w_hr is not None:
                h = nn.functional.linear(h, w_hr)
        elif isinstance(rnn, nn.GRU):
            ir, iz, i_n = gi.chunk(3, dim=-1)
            hr, hz, h_n = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
        else:
            h = torch.tanh(gi + gh) if rnn.nonlinearity == "tanh" else torch.relu(gi + gh)
        outs[t] = h
    return torch.stack(outs), torch.stack(prev)


def _check_ends_as_module(rnn: nn.RNNBase, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor,
                          batched: bool) -> None:
    """The step-by-step recurrence must give the module's own output, else the inputs read from
    it are not what the module's maps see. `forward` is called directly so that the module's
    hooks do not fire again."""
    theirs = type(rnn).forward(rnn, *args, **kwargs)[0]
    if not batched:
        theirs = theirs.unsqueeze(1)
    elif rnn.batch_first:
        theirs = theirs.transpose(0, 1)
    scale = theirs.abs().max().clamp_min(1.0)
    if theirs.shape != out.shape or (theirs - out).abs().max() > 1e-3 * scale:
        raise CrossDistillError(
            f"the {type(rnn).__name__}'s step-by-step recurrence does not reproduce its output "
            "(dropout between layers in training mode?), so its weights cannot be solved on it")
