"""Capture of hidden states: the input a layer sees, and its unfolded (im2col) patches."""
from __future__ import annotations

import itertools
import math
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from crossdistill.attention_projections import later_projections
from crossdistill.layer_lookup import find_layer
from crossdistill.capture_pass import count_calls, inputs_until, merge_calls, on_input
from crossdistill.capture_points import capture_mode, indirect_layers
from crossdistill.capture_replay import ModuleReplay
from crossdistill.errors import CrossDistillError, first_line

# A Conv1d is solved as the Conv2d it equals on maps of height 1, a Conv3d on its own
# unfolded patches (`patches`).
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# A transposed conv is the conv of its flipped kernel over its zero-stuffed input: also `Y = W X`.
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
ALL_CONVS = (*CONVS, *TRANSPOSED)
SOLVABLE = (*ALL_CONVS, nn.Linear)


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The layer named `name`: a submodule, or an attention's q/k/v projection (`<attention>.q_proj`,
    a Linear view of its packed parameters: attention_projections.py)."""
    layer = find_layer(model, name)
    if layer is None:
        raise CrossDistillError(f"model has no layer named {name!r}")
    return layer


def unsupported_reason(module: nn.Module) -> str | None:
    """Why the solvers cannot handle `module` (None when they can): only convs and linears have
    the `Y = W X` form they rely on (a grouped conv is one such problem per group)."""
    if not isinstance(module, SOLVABLE):
        return f"a {type(module).__name__}; only convs (1-3 d, transposed too) and Linear layers can be compressed"
    if isinstance(module, ALL_CONVS) and module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r}; only 'zeros' is supported"
    return own_weight_reason(module)


def own_weight_reason(module: nn.Module) -> str | None:
    """Why a conv's or linear's output is not `W X` with the `weight` tensor it holds (None when
    it is): a weight recomputed from other parameters (weight norm), or a subclass's own forward
    (e.g. weight standardisation). A solved weight written there would not be the one that runs."""
    # weight_g: torch.nn.utils.weight_norm; weight_orig: torch.nn.utils.spectral_norm (both
    # recompute `weight` in a forward pre-hook).
    # Each form has its own undo; naming the wrong one sends the user to a call that raises.
    if parametrize.is_parametrized(module, "weight"):
        return ("its weight is computed by a parametrization (parametrizations.weight_norm, orthogonal, ...); remove it "
                "first: torch.nn.utils.parametrize.remove_parametrizations(layer, 'weight')")
    if hasattr(module, "weight_g"):
        return "its weight is computed by weight norm; remove it first: torch.nn.utils.remove_weight_norm(layer)"
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return ("its weight is weight_orig times the weight_mask of torch.nn.utils.prune; make that permanent first: "
                "torch.nn.utils.prune.remove(layer, 'weight')")
    if hasattr(module, "weight_orig"):
        return "its weight is computed by spectral norm; remove it first: torch.nn.utils.remove_spectral_norm(layer)"
    base: type[nn.Module] = next((c for c in ALL_CONVS if isinstance(module, c)), nn.Linear)
    custom = type(module).forward is not base.forward
    if base in CONVS:
        custom |= type(module)._conv_forward is not base._conv_forward  # type: ignore[attr-defined]
    if custom:
        return f"a {type(module).__name__} with a forward of its own (its output need not be W·x)"
    return None


def tied_weights(named: Iterable[tuple[str, nn.Module]]) -> dict[str, str]:
    """Convs and linears whose weight another module holds too (a language model's output layer
    tied to its embedding table), each with why it is left as it is: solving or slimming it would
    change the other module's table."""
    holders: dict[int, list[str]] = {}
    named = list(named)
    for name, mod in named:
        for pname, p in mod.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append(f"{name}.{pname}" if name else pname)
    tied = {}
    for name, mod in named:
        if isinstance(mod, SOLVABLE) and isinstance(getattr(mod, "weight", None), torch.Tensor):
            others = [h for h in holders.get(id(mod.weight), []) if h != f"{name}.weight"]
            if others:
                tied[name] = (f"its weight is tied to {', '.join(others)} (one tensor): compressing it would change "
                              "that too")
    return tied


def check_solvable(module: nn.Module, name: str, *, channel_pruning: bool = False) -> None:
    reason = unsupported_reason(module)
    if reason is not None:
        if reason.startswith("padding_mode"):
            raise CrossDistillError(f"layer {name!r} uses {reason}")
        raise CrossDistillError(f"layer {name!r}: {reason}" if reason.startswith("its") else f"layer {name!r} is {reason}")
    if channel_pruning and conv_groups(module) != 1:
        # Dropping input channels of one group would leave the groups unequal.
        raise CrossDistillError(f"layer {name!r} is a grouped conv (groups={module.groups}); "
                                "channel pruning of grouped convs is not supported")


def conv_class(module: nn.Module) -> type[nn.Conv1d] | type[nn.Conv2d] | type[nn.Conv3d]:
    """nn.Conv1d, nn.Conv2d or nn.Conv3d, whichever `module` is (for new layers of its kind; a
    subclass's own forward is refused before any is made: own_weight_reason)."""
    return next(c for c in CONVS if isinstance(module, c))


def conv_groups(module: nn.Module) -> int:
    """Independent row blocks of the layer: output rows of conv group g see only group g's input
    channels, so each group is its own quadratic problem (1 for a linear or an ungrouped conv)."""
    return module.groups if isinstance(module, ALL_CONVS) else 1


def forward_calls(model: nn.Module, example: torch.Tensor, input_readers: list[str] | None = None,
                  input_shapes: dict[str, set[tuple[int, ...]]] | None = None,
                  output_layers: list[str] | None = None, output: str | None = None) -> dict[str, int]:
    """How many times one forward pass runs each conv and linear, in the order it first runs them
    (a layer that its parent applies without calling it, e.g. an attention's out_proj, when the
    parent runs). A layer the pass never runs is absent. `input_readers`, when given, receives
    the convs that read the model's input through no other layer (the stems of parallel
    branches, also after the forward's own normalisation), `input_shapes` each layer's input shapes, and
    `output_layers` the layers that produce the predictions (`output`: the output key), from the
    same pass."""
    watched = [(mod, name) for name, mod in model.named_modules() if isinstance(mod, SOLVABLE)]
    readers: list[str] | None = [] if input_readers is not None else None
    calls = count_calls(model, example, watched + [(parent, name) for parent, name in indirect_layers(model)],
                        readers, input_shapes, output_layers, output)
    if input_readers is not None and readers is not None:
        modules = dict(model.named_modules())
        input_readers.extend(n for n in readers if isinstance(modules.get(n), ALL_CONVS))
    return calls


def forward_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the convs and linears in the order a forward pass runs them (forward_calls)."""
    return list(forward_calls(model, example))


def layer_inputs(model: nn.Module, name: str, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield, batch by batch, the input tensor of layer `name` (the forward stops there)."""
    get_module(model, name)  # a missing layer named as such
    return _inputs_through(model, name, model, batches, where="the forward pass")


def all_layer_inputs(model: nn.Module, names: Iterable[str], batches: Iterable[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """One forward pass per batch, keeping the inputs of every named layer (for the teacher,
    which never changes, so its hidden states are computed once for all layers)."""
    names = list(names)
    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    received: dict[str, list[torch.Tensor]] = {n: [] for n in names}  # this batch's calls
    for n in names:
        get_module(model, n)  # a missing layer named as such
    # Cloned: the pass goes on, and may write into a layer's input after the layer read it.
    handles = on_input(model, names, lambda n, read: received[n].append(read().clone()))
    try:
        with capture_mode():
            for batch in batches:
                model(batch)
                for n in names:
                    # A layer run several times per pass (shared weights): its calls as one input.
                    store[n].append(merge_calls(model, n, received[n]))
                    received[n] = []
    finally:
        for h in handles:
            h.remove()
    return store


def inputs_per_batch(model: nn.Module, names: Sequence[str], batches: Iterable[torch.Tensor]
                     ) -> Iterator[dict[str, torch.Tensor]]:
    """Batch by batch, the inputs of every named layer from one forward that stops once all are
    captured: several readers of one channel group cost one pass, and only a batch is held."""
    names = list(names)
    for n in names:
        get_module(model, n)  # a missing layer named as such
    return inputs_until(model, names, model, batches, "the forward pass")


def patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(images, D, positions): the im2col columns of each image, D in (c, kh, kw) order as
    weight.flatten(1). A Linear's input is one "image" whose positions are its rows. This layout
    is what F.unfold returns, so the moments' per-image products need no transposing copy."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    if isinstance(module, TRANSPOSED):
        return _patches_transposed(module, x)
    assert isinstance(module, CONVS)
    if isinstance(module, nn.Conv3d):
        return _windows(F.pad(x, pad_arg(spatial_padding(module))), module.kernel_size, module.dilation,
                        module.stride).flatten(1, 4).flatten(2)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
    kernel, dilation, stride = (_as_2d(getattr(module, k)) for k in ("kernel_size", "dilation", "stride"))
    (top, bottom), (left, right) = zero_padding(module)
    if kernel == (1, 1) and stride == (1, 1) and (top, bottom, left, right) == (0, 0, 0, 0):
        # A pointwise conv's columns are its input's pixels: F.unfold's copy of them (bit for bit
        # the same values) cost 12 % of ResNet-50's moments.
        return x.flatten(2)
    if (top, left) != (bottom, right):
        # F.unfold pads both sides alike: an uneven 'same' padding is applied beforehand.
        x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
    return F.unfold(
        x,
        kernel_size=kernel,
        dilation=dilation,
        padding=(top, left),
        stride=stride,
    )


def _windows(x: torch.Tensor, kernel: Sequence[int], dilation: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """(N, C, *kernel, *out): the kernel taps of every output position of a padded N×C×… input,
    any number of spatial dims (F.unfold is 2-d only)."""
    n = len(kernel)
    for dim, (k, d, st) in enumerate(zip(kernel, dilation, stride)):
        # The window spans (k-1)·d+1 positions of which every d-th is a kernel tap.
        x = x.unfold(2 + dim, (k - 1) * d + 1, st)[..., ::d]
    # unfold appends each window dim last: (N, C, *out, *kernel) → (N, C, *kernel, *out).
    return x.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))


def pad_arg(pads: Sequence[tuple[int, int]]) -> list[int]:
    """F.pad's argument for (before, after) per spatial dim: the last dim first."""
    return [p for lo_hi in reversed(pads) for p in lo_hi]


def _patches_transposed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`patches` of a transposed conv, columns in (c, k…) order of its own, unflipped kernel
    (weight_matrix): the windows of the conv it equals, over the input with stride−1 zeros
    between samples and d·(k−1)−p zeros around (output_padding more after), kernel reversed."""
    n = len(module.kernel_size)
    size = [(s_ - 1) * st + 1 for s_, st in zip(x.shape[2:], module.stride)]
    stuffed = x.new_zeros(*x.shape[:2], *size)
    stuffed[(slice(None), slice(None), *(slice(None, None, st) for st in module.stride))] = x
    pads = [(d * (k - 1) - p, d * (k - 1) - p + op) for k, d, p, op in
            zip(module.kernel_size, module.dilation, module.padding, module.output_padding)]
    # A padding beyond d·(k−1) crops instead (F.pad takes negative amounts).
    win = _windows(F.pad(stuffed, pad_arg(pads)), module.kernel_size, module.dilation, (1,) * n)
    win = win.flip(list(range(2, 2 + n)))
    return win.flatten(1, 1 + n).flatten(2)


def _as_2d(size: tuple[int, ...], height: int = 1) -> tuple[int, int]:
    """A Conv1d's kernel, stride or dilation (height 1) or padding (height 0) as its height-1
    Conv2d's."""
    return (height, size[0]) if len(size) == 1 else (size[0], size[1])


def spatial_padding(module: nn.Module) -> list[tuple[int, int]]:
    """(before, after) zeros the conv pads each spatial dim of its input with, in its order
    (depth, height, width), also for padding='valid' and 'same' (where torch puts the odd one
    after)."""
    dims = len(module.kernel_size)
    if module.padding == "valid":
        return [(0, 0)] * dims
    if module.padding == "same":
        totals = [d * (k - 1) for k, d in zip(module.kernel_size, module.dilation)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in module.padding]


def zero_padding(module: nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) of a Conv1d or Conv2d (spatial_padding); a Conv1d's as
    its height-1 Conv2d's (no rows padded)."""
    pads = spatial_padding(module)
    return ((0, 0), pads[0]) if len(pads) == 1 else (pads[0], pads[1])


def unfold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows are patches, columns the layer's flattened input (c, kh, kw order, as weight.flatten(1))."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = patches(module, x)  # (N, C*kh*kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def transposed_groups(module: nn.Module) -> int:
    """A transposed conv's groups (its weight's output channels run along dim 1); 0 for any other layer."""
    return int(module.groups) if isinstance(module, TRANSPOSED) else 0


def rows_of(w: torch.Tensor, transposed: int = 0) -> torch.Tensor:
    """A tensor of a weight's shape as (out, in·k…), a row per output channel; `transposed`: the
    groups of a transposed conv, whose weight is (in, out/groups, k…), so each group is transposed."""
    if not transposed:
        return w.reshape(w.shape[0], -1)
    g = transposed
    return w.reshape(g, w.shape[0] // g, w.shape[1], -1).transpose(1, 2).reshape(g * w.shape[1], -1)


def unrows(matrix: torch.Tensor, shape: Sequence[int], transposed: int = 0) -> torch.Tensor:
    """The inverse of `rows_of`: the matrix back in the weight's `shape`."""
    if not transposed:
        return matrix.reshape(shape)
    g = transposed
    return matrix.reshape(g, shape[1], shape[0] // g, -1).transpose(1, 2).reshape(shape)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as the (out, in·k…) matrix W of `Y = W X`, a row per output channel
    (per conv group: a grouped conv's rows see in/groups channels; a norm's, its scale). A transposed conv keeps its weight as (in, out/groups,
    k…): its matrix is that transposed within each group."""
    return rows_of(module.weight.detach(), transposed_groups(module))


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    """Write the (out, in·k…) matrix of `weight_matrix` into the layer's weight."""
    w = module.weight
    with torch.no_grad():
        w.copy_(unrows(matrix, w.shape, transposed_groups(module)).to(w.dtype))


def dense_weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as the (out, in·kh·kw) matrix of the equivalent ungrouped layer: a grouped
    conv's group blocks on the diagonal, zeros elsewhere (channel c at columns c·kh·kw…)."""
    w = weight_matrix(module)
    groups = conv_groups(module)
    if groups == 1:
        return w
    return torch.block_diag(*w.chunk(groups, 0))


def in_channel_rows(module: nn.Module) -> torch.Tensor:
    """(in channels, …): each input channel's weights (an ungrouped layer's)."""
    assert conv_groups(module) == 1, "a grouped conv's input channels see only their group's filters"
    w = module.weight.detach()
    if isinstance(module, TRANSPOSED):
        return w.reshape(w.shape[0], -1)
    return w.transpose(0, 1).reshape(w.shape[1], -1)


def group_size(module: nn.Module) -> int:
    """Columns of the weight matrix that belong to one input channel."""
    if isinstance(module, ALL_CONVS):
        return math.prod(module.kernel_size)
    return 1


Unit = tuple[str, Callable[[torch.Tensor], torch.Tensor]]


def _owns(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class ActivationStore:
    """The batches of one cached front (an activation per image), re-readable: in memory, or,
    with a `directory`, one file per batch there (capture='disk'), so that only the batch at hand
    is in memory, however many images there are. It starts as the images themselves (never
    written out: the caller holds them already)."""

    _tags = itertools.count()

    def __init__(self, batches: Sequence[torch.Tensor], directory: str | None = None) -> None:
        self._memory: list[torch.Tensor] | None = list(batches)
        self._files: list[str] = []
        self.directory = directory
        # Files hold CPU tensors (readable anywhere); a batch is read back onto the images' device.
        self.device = self._memory[0].device if self._memory else torch.device("cpu")

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._memory is not None:
            yield from self._memory
            return
        for path in list(self._files):
            yield torch.load(path, weights_only=True, map_location=self.device)

    def advance(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every batch x by fn(x) (the front moves one unit on)."""
        if self.directory is None:
            assert self._memory is not None
            self._memory = [fn(x) for x in self._memory]
            return
        tag = next(self._tags)
        files: list[str] = []
        try:
            for i, x in enumerate(self):
                path = os.path.join(self.directory, f"front-{tag}-{i}.pt")
                files.append(path)
                _save_front(fn(x).contiguous().cpu(), path)
        except BaseException:
            self._remove(files)
            raise
        self._remove(self._files)
        self._files, self._memory = files, None

    @staticmethod
    def _remove(paths: Sequence[str]) -> None:
        for path in paths:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


class StudentInputs:
    """Inputs of the student's layers, asked for in forward order, without re-running the front.

    A full forward per solved layer costs O(L²) over a network of L layers. A model that
    exposes `forward_units()` — (module-name prefix, callable) pairs whose composition is its
    forward — lets the front be run once: the output of every unit before the asked layer's unit
    is cached, and those units never change again because the layers are solved front to back.
    Models without units replay each layer's enclosing modules from what they received
    (capture_replay.py; read lazily, or for a layer outside every unit: a full forward).
    With `spill_dir` the cached front lives on disk, a file per batch (ActivationStore; the
    caller owns the folder and removes it).
    """

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor], *, incremental: bool = True,
                 spill_dir: str | None = None, calls: Mapping[str, int] | None = None) -> None:
        self.model = model
        self.batches = list(batches)
        # Layers one pass runs several times (shared weights): each is waited for that many times.
        self.calls = {n: c for n, c in (calls or {}).items() if c > 1}
        # Without units, a layer's input (unless read lazily) is replayed from what its enclosing
        # modules received (capture_replay.py) rather than run from the images.
        self.replay = incremental
        self._replay: ModuleReplay | None = None
        self.units: list[Unit] | None = None
        if incremental and callable(getattr(model, "forward_units", None)):
            self.units = list(model.forward_units())
            self._check_units()
        self._cursor = 0  # index of the unit whose input `_cached` holds
        self._cached = ActivationStore(self.batches, spill_dir)
        self._siblings: dict[str, list[torch.Tensor]] = {}  # captured with an attention's q (see `of`)

    def _check_units(self) -> None:
        # A units list that does not compose to the forward would silently feed wrong inputs.
        assert self.units is not None
        x = self.batches[0][:2]
        with capture_mode():
            y = x
            for _, fn in self.units:
                y = fn(y)
            ref = self.model(x)
        if y.shape != ref.shape or not torch.allclose(y, ref, rtol=1e-4, atol=1e-5):
            raise CrossDistillError(f"{type(self.model).__name__}.forward_units() does not reproduce its forward")

    def _unit_of(self, name: str) -> int | None:
        assert self.units is not None
        for i, (prefix, _) in enumerate(self.units):
            if _owns(prefix, name):
                return i
        return None

    def of(self, name: str, *, lazy: bool = False) -> Iterable[torch.Tensor]:
        """The student's input to layer `name`, batch by batch, under its current weights: a list,
        or with `lazy` a one-pass iterator that holds one batch at a time.

        An attention's q, k and v read its arguments, which none of the three changes: asked for
        q (not lazily), the pass captures k's and v's inputs too, and they are handed out when
        asked for next (one forward instead of three; dropped once another layer is asked for)."""
        if name in self._siblings:
            return self._siblings.pop(name)
        self._siblings.clear()
        shared = name in self.calls  # run several times per pass: every call, from the images
        names = [name] + (later_projections(self.model, name) if not (lazy or shared) else [])
        unit = self._unit_of(name) if self.units is not None else None
        if self.units is None and self.replay and not (lazy or shared):
            if self._replay is None:
                self._replay = ModuleReplay(self.model, self.batches)
            found_all = self._replay.inputs(names)
            self._siblings = {n: found_all[n] for n in names[1:]}
            return found_all[name]
        if unit is None:
            fn: Callable[[torch.Tensor], torch.Tensor] = self.model
            inputs: Iterable[torch.Tensor] = self.batches
            where = "the forward pass"
        else:
            get_module(self.model, name)
            if unit < self._cursor:
                raise CrossDistillError(f"layer {name!r} asked for after a later layer: layers must go front to back")
            with capture_mode():
                while self._cursor < unit:
                    self._cached.advance(self.units[self._cursor][1])
                    self._cursor += 1
            fn, inputs, where = self.units[unit][1], self._cached, "its forward unit"
        if len(names) == 1:
            found = _inputs_through(self.model, name, fn, inputs, where=where, calls=self.calls)
            return found if lazy else list(found)
        per_batch = list(inputs_until(self.model, names, fn, inputs, where))
        self._siblings = {n: [box[n] for box in per_batch] for n in names[1:]}
        return [box[name] for box in per_batch]


def _inputs_through(
    model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor], inputs: Iterable[torch.Tensor],
    *, where: str = "its forward unit", calls: Mapping[str, int] | None = None,
) -> Iterator[torch.Tensor]:
    """Run `fn` on each input until layer `name` of `model` is reached (all its `calls`);
    yield what it would have received."""
    found = inputs_until(model, [name], fn, inputs, where, calls)
    try:
        for box in found:
            yield box[name]
    finally:
        found.close()  # its hooks come off with it


def _save_front(x: torch.Tensor, path: str) -> None:
    """torch.save of one cached batch; a write that fails (a full disk surfaces from torch as
    "unexpected pos 704 vs 598") is said in the user's terms."""
    try:
        torch.save(x, path)
    except (OSError, RuntimeError) as exc:
        raise CrossDistillError(f"cannot write the capture's temporary files in {os.path.dirname(path)} "
                                f"({first_line(exc)}): "
                                "is that disk full? free space there, or give --capture-dir on another disk") from None
