"""Structured channel pruning: which layers lose input channels, how many, and the slimming
that removes them physically so FLOPs and latency really fall."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from crossdistill.capture import CONVS, conv_class, get_module, group_size
from crossdistill.errors import CrossDistillError
from crossdistill.solvers import LayerTask

# The official code's ResNet-56 setting: int(0.5·c)+1 input channels of conv2 in every block,
# except these blocks (0-based), which stay whole (≈ −40 % FLOPs).
PAPER_RESNET56_WHOLE_BLOCKS = frozenset({7, 9, 18, 26})


def keep_count(channels: int, ratio: float) -> int:
    if not 0.0 < ratio <= 1.0:
        raise CrossDistillError(f"keep ratio must lie in (0, 1], got {ratio}")
    return max(1, min(channels, int(round(ratio * channels))))


def channel_pairs(model: nn.Module) -> list:
    if not hasattr(model, "channel_pairs"):
        raise CrossDistillError(
            f"{type(model).__name__} does not declare its prunable channel pairs (channel_pairs())"
        )
    return list(model.channel_pairs())


def _in_channels(model: nn.Module, consumer: str) -> int:
    layer = get_module(model, consumer)
    if not hasattr(layer, "in_channels"):
        # Hand-declared pairs slice conv inputs; a Linear reader is the graph route's to handle.
        raise CrossDistillError(f"channel pair of {type(model).__name__}: its consumer {consumer} is a "
                                f"{type(layer).__name__}; declared channel pairs are read by convs only")
    return int(layer.in_channels)


def plan_channels(model: nn.Module, keep: float | str | Sequence[int]) -> list[LayerTask]:
    """One task per consumer layer. `keep` is a ratio, the preset 'paper' (ResNet-56), or one
    kept-channel count per pair."""
    pairs = channel_pairs(model)
    counts: list[int]
    widths = [_in_channels(model, p.consumer) for p in pairs]
    if isinstance(keep, str):
        if keep != "paper":
            raise CrossDistillError(f"unknown channel preset {keep!r}; use a ratio or 'paper'")
        counts = [paper_counts(model)[p.consumer] for p in pairs]
    elif isinstance(keep, (int, float)):
        counts = [keep_count(w, float(keep)) for w in widths]
    else:
        counts = [int(k) for k in keep]
        if len(counts) != len(pairs):
            raise CrossDistillError(f"{len(counts)} channel counts given for {len(pairs)} prunable layers")
        for c, w, p in zip(counts, widths, pairs):
            if not 1 <= c <= w:
                raise CrossDistillError(f"layer {p.consumer!r}: keep {c} of {w} channels is impossible")
    return [
        LayerTask(name=p.consumer, group=group_size(get_module(model, p.consumer)), keep=c, producer=p.producer, bn=p.bn)
        for p, c in zip(pairs, counts)
    ]


def refit_tasks(model: nn.Module, pruned: Sequence[LayerTask]) -> list[LayerTask]:
    """Tasks that re-solve, without pruning, every other conv whose input can differ between
    teacher and student (all but the first layer the image reaches): only objectives whose
    optimum moves with the student's input (no-cross, soft) change them, absorbing upstream error."""
    done = {t.name for t in pruned}
    layers = [n for n, m in model.named_modules() if isinstance(m, CONVS) and m.groups == 1]
    first = layers[0] if layers else None
    return [
        LayerTask(name=n, group=group_size(m), keep=m.weight.shape[1])
        for n in layers
        if n not in done and n != first
        for m in [get_module(model, n)]
    ]


def paper_counts(model: nn.Module) -> dict[str, int]:
    """The official code's ResNet-56 setting: int(0.5·c)+1 input channels of conv2 in every
    block, except four blocks that stay whole (≈ −40 % FLOPs), by reader name."""
    name = getattr(model, "crossdistill_name", "")
    if name != "resnet56":
        raise CrossDistillError(f"the 'paper' channel preset is defined for resnet56 only, not "
                                f"{name or type(model).__name__}: give a keep ratio (--keep 0.5) or a --flops target")
    counts = {}
    for i, pair in enumerate(channel_pairs(model)):
        width = _in_channels(model, pair.consumer)
        counts[pair.consumer] = width if i in PAPER_RESNET56_WHOLE_BLOCKS else int(0.5 * width) + 1
    return counts


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    # Fresh modules start in training mode; a BatchNorm in training mode would use batch
    # statistics and silently change the outputs.
    new.train(model.get_submodule(name).training)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _slim_out(conv: nn.Module, kept: torch.Tensor) -> nn.Module:
    if isinstance(conv, nn.Linear):
        new = nn.Linear(conv.in_features, len(kept), bias=conv.bias is not None)
    else:
        new = conv_class(conv)(
            conv.in_channels, len(kept), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            bias=conv.bias is not None,
        )
    with torch.no_grad():
        new.weight.copy_(conv.weight[kept])
        if conv.bias is not None:
            new.bias.copy_(conv.bias[kept])
    return new


def _slim_in(conv: nn.Module, kept: torch.Tensor) -> nn.Module:
    if isinstance(conv, nn.Linear):
        new = nn.Linear(len(kept), conv.out_features, bias=conv.bias is not None)
    else:
        new = conv_class(conv)(
            len(kept), conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            bias=conv.bias is not None,
        )
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, kept])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _slim_bn(bn: nn.modules.batchnorm._BatchNorm, kept: torch.Tensor) -> nn.Module:
    new = type(bn)(len(kept), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[kept])
            new.bias.copy_(bn.bias[kept])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[kept])
            new.running_var.copy_(bn.running_var[kept])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def slim_channels(model: nn.Module, kept_by_consumer: dict[str, Sequence[int]]) -> nn.Module:
    """Physically remove, in place, the channels each consumer no longer reads: the producer's
    filters, its BatchNorm entries and the consumer's input columns. Outputs are unchanged
    because the consumer's weights on those channels are already zero."""
    by_consumer = {p.consumer: p for p in channel_pairs(model)}
    for consumer, kept_list in kept_by_consumer.items():
        if consumer not in by_consumer:
            raise CrossDistillError(f"{consumer!r} is not a prunable consumer layer of this model")
        pair = by_consumer[consumer]
        kept = torch.as_tensor(sorted(int(k) for k in kept_list), dtype=torch.long, device="cpu")
        _replace(model, pair.producer, _slim_out(get_module(model, pair.producer), kept))
        if pair.bn:
            _replace(model, pair.bn, _slim_bn(get_module(model, pair.bn), kept))
        _replace(model, consumer, _slim_in(get_module(model, consumer), kept))
    return model

