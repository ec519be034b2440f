"""The layers of a student that its compression changed: what the fine-tune's `trainable
'pruned'` trains, and where its 'layers' and 'blocks' hints are placed (hints.py).

A registered model declares them (the consumers of its channel_pairs(), as every published
result of this package was measured). Any other model is compared with its teacher, layer by
layer under the same name: a conv or linear is changed when it reads fewer input channels (the
readers of a pruned channel group), when it was replaced (low-rank factors) or when its weight
differs at the same shape (sparsity, quantization, a re-solve). A layer that only lost output
channels (a producer whose kept filters were left as they were) is not; an attention whose
packed q/k/v were compressed is changed as a whole module."""
from __future__ import annotations

import torch
from torch import nn

from crossdistill.capture import SOLVABLE
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
    if student.weight.shape != teacher.weight.shape:
        return False  # only its output channels were dropped: its kept filters are the teacher's
    return not torch.equal(student.weight.detach(), teacher.weight.detach().to(student.weight.device))


def _weight_changed(student_w: torch.Tensor | None, teacher_w: torch.Tensor | None) -> bool:
    if student_w is None or teacher_w is None:
        return False
    if student_w.dim() > 1 and student_w.shape[1] < teacher_w.shape[1]:
        return True  # reads fewer channels (a packed attention projection's columns)
    if student_w.shape != teacher_w.shape:
        return False  # only its output channels were dropped: its kept filters are the teacher's
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
    if not names:
        raise CrossDistillError(
            f"no layer of the {type(student).__name__} student differs from its teacher's, so there are no "
            "compressed layers to train or hint: use the fine-tune's trainable 'all' and hints 'penultimate'")
    return names
