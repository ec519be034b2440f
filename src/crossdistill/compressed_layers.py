"""The layers of a student that its compression changed: what the fine-tune's `trainable
'pruned'` trains, and where its 'layers' and 'blocks' hints are placed (hints.py).

A registered model declares them (the consumers of its channel_pairs(), as every published
result of this package was measured). Any other model is compared with its teacher, layer by
layer under the same name: a conv or linear is changed when it reads fewer input channels (the
readers of a pruned channel group), when it was replaced (low-rank factors) or when its weight
differs at the same shape (sparsity, quantization, a re-solve). A layer that only lost output
channels is changed when some filter it kept is not one of the teacher's (quantized or sparsified
after pruning), not when its kept filters were left as they were; an attention whose packed q/k/v
were compressed, and an RNN, LSTM or GRU whose gate weights were, is changed as a whole module, and the q/k/v projections of an attention whose
heads were pruned (`HeadPrunedAttention`) are compared with the teacher's rows as layers of their
own."""
from __future__ import annotations

import torch
from torch import nn

from crossdistill.layer_lookup import find_layer
from crossdistill.capture import SOLVABLE
from crossdistill.compression.attention_heads import HeadPrunedAttention
from crossdistill.errors import CrossDistillError

_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _inputs(layer: nn.Module) -> int | None:
    return getattr(layer, "in_channels", getattr(layer, "in_features", None))


def _layer_changed(student: nn.Module, teacher: nn.Module) -> bool:
    if type(student) is not type(teacher):
        return True  # replaced: low-rank factors
    # By the input count, not the weight's second axis: a transposed conv keeps (in, out, k…).
    if _inputs(student) is not None and _inputs(teacher) is not None and _inputs(student) < _inputs(teacher):
        return True  # reads fewer channels: a reader of a pruned group, re-solved
    axis = 1 if getattr(teacher, "transposed", False) else 0  # a transposed conv's outputs: its second axis
    return _weight_changed(student.weight, teacher.weight, axis)


def _filters_kept(student_w: torch.Tensor, teacher_w: torch.Tensor, axis: int = 0) -> bool:
    """Whether every output filter of `student_w` is one of `teacher_w`'s, bit for bit."""
    def rows(w: torch.Tensor) -> list[bytes]:
        flat = w.detach().movedim(axis, 0).reshape(w.shape[axis], -1).to("cpu", torch.float64).contiguous()
        return [r.numpy().tobytes() for r in flat]

    theirs = set(rows(teacher_w))
    return all(r in theirs for r in rows(student_w))


def _weight_changed(student_w: torch.Tensor | None, teacher_w: torch.Tensor | None, axis: int = 0) -> bool:
    if student_w is None or teacher_w is None:
        return False
    if student_w.dim() > 1 and axis == 0 and student_w.shape[1] < teacher_w.shape[1]:
        return True  # reads fewer channels (a packed attention projection's columns)
    if student_w.shape != teacher_w.shape:
        return not _filters_kept(student_w, teacher_w, axis)  # output channels dropped: were the rest kept?
    return not torch.equal(student_w.detach(), teacher_w.detach().to(student_w.device))


def compressed_layers(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Names of the student's changed layers (see the module docstring), in module order."""
    if hasattr(student, "channel_pairs"):
        return list(dict.fromkeys(p.consumer for p in student.channel_pairs()))
    mine = dict(student.named_modules())
    names: list[str] = []
    for name, t in teacher.named_modules():
        s = mine.get(name)
        if s is None or not name:
            continue
        if isinstance(t, SOLVABLE):
            if _layer_changed(s, t):
                names.append(name)
        elif isinstance(t, nn.MultiheadAttention) and isinstance(s, nn.MultiheadAttention):
            if any(_weight_changed(getattr(s, w), getattr(t, w)) for w in _ATTENTION_WEIGHTS):
                names.append(name)
        elif isinstance(t, nn.RNNBase) and isinstance(s, nn.RNNBase):
            if any(_weight_changed(getattr(s, w), getattr(t, w, None)) for w in s._flat_weights_names):
                names.append(name)
        elif isinstance(t, nn.MultiheadAttention) and isinstance(s, HeadPrunedAttention):
            # Its projections are Linear layers now; the teacher's are rows of its packed weights.
            names += [f"{name}.{p}" for p in ("q_proj", "k_proj", "v_proj")
                      if _weight_changed(s.get_submodule(p).weight, find_layer(teacher, f"{name}.{p}").weight)]
    if not names:
        raise CrossDistillError(
            f"no layer of the {type(student).__name__} student differs from its teacher's, so there are no "
            "compressed layers to train or hint: use the fine-tune's trainable 'all' and hints 'penultimate'")
    return names
