"""Feature hints for the few-shot fine-tune (FinetuneConfig mode 'hints', `hint_weight` > 0): the
student's intermediate outputs are pulled towards the teacher's on the same (augmented, mixed) images.

Hint points (FinetuneConfig `hints`, whose choices are HINT_POINTS):
  'blocks'      — the output of every block that holds a pruned layer (a layer the compression
                  changed: compressed_layers.py): for a ResNet the block's
                  output after the residual add and ReLU (the signal the next block reads), for a
                  model whose pruned layers sit directly in a Sequential or the root (VGG,
                  TinyNet) the pruned layer's own output;
  'layers'      — the pruned layers' own outputs (before BatchNorm, as the FitNet baseline);
  'penultimate' — the input of the linear layer the forward runs last (the pooled features, as MiR);
  'blocks+penultimate', 'layers+penultimate' — both.
Loss: mean over hint points of ‖f_s − f_t‖² / ‖f_t‖² (relative, so that deep layers with large
activations do not drown shallow ones). A hint point whose student output has another shape
than the teacher's (its own channels were slimmed) is skipped; the names used are reported.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from crossdistill.compressed_layers import compressed_layers
from crossdistill.errors import CrossDistillError

HINT_POINTS = ("blocks", "layers", "penultimate", "blocks+penultimate", "layers+penultimate")
PENULTIMATE = "<penultimate>"


def _linears(model: nn.Module) -> list[nn.Linear]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CrossDistillError(f"{type(model).__name__} has no linear layer: no penultimate features to hint")
    return linears


def _block_points(student: nn.Module, teacher: nn.Module, layers: bool = False) -> list[str]:
    modules = dict(student.named_modules())
    points: list[str] = []
    for name in compressed_layers(student, teacher):
        parent = name.rpartition(".")[0]
        own = layers or not parent or isinstance(modules[parent], nn.Sequential)
        point = name if own else parent
        if point not in points:
            points.append(point)
    return points


def hint_points(student: nn.Module, teacher: nn.Module, which: str) -> list[str]:
    """Module names whose outputs are hinted; PENULTIMATE stands for the final linear's input.
    'layers' and 'blocks' are placed at the layers the compression changed (compressed_layers.py)."""
    # Also checked here, not only by FinetuneConfig: the substring tests below would read a
    # name that is not a choice as some other choice.
    if which not in HINT_POINTS:
        raise CrossDistillError(f"hint points must be one of {list(HINT_POINTS)}, got {which!r}")
    points = _block_points(student, teacher, layers="layers" in which) if which != "penultimate" else []
    if "penultimate" in which:
        points.append(PENULTIMATE)
    return points


@contextmanager
def capture(model: nn.Module, points: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Outputs of the named modules in the most recent forward pass (with their graph)."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in points:
        if name == PENULTIMATE:
            # Every linear writes its input here: what is left is the input of the one the forward
            # ran last (the classifier), whatever order the model defines its modules in.
            handles += [lin.register_forward_pre_hook(lambda m, i: store.__setitem__(PENULTIMATE, i[0]))
                        for lin in _linears(model)]
        else:
            handles.append(model.get_submodule(name).register_forward_hook(
                lambda m, i, o, n=name: store.__setitem__(n, o)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def matching_points(student: nn.Module, teacher: nn.Module, points: Sequence[str], probe: torch.Tensor) -> list[str]:
    """The hint points whose student and teacher outputs have the same shape on `probe`."""
    with torch.no_grad(), capture(student, points) as s, capture(teacher, points) as t:
        student(probe)
        teacher(probe)
    # An attention returns a tuple: no hint at its output (its changed projections are trained).
    kept = [p for p in points if isinstance(s.get(p), torch.Tensor) and isinstance(t.get(p), torch.Tensor)
            and s[p].shape == t[p].shape]
    if not kept:
        raise CrossDistillError(f"no hint point has the same shape in student and teacher (tried {list(points)}); "
                                "match elsewhere (--finetune-hints penultimate) or the logits (--finetune-mode kd)")
    return kept


def hint_loss(student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor],
              points: Sequence[str]) -> torch.Tensor:
    terms = [(student_feats[p] - teacher_feats[p]).pow(2).sum() / teacher_feats[p].pow(2).sum().clamp_min(1e-12)
             for p in points]
    return torch.stack(terms).mean()
