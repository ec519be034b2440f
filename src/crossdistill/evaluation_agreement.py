"""Scores on tensors for any kind of predictions (model_outputs): top-1 against labels, and how
closely a student follows its teacher, which needs no labels at all.

The agreement is what a user without labelled test data (or with a model that predicts no
classes: a regression, an embedding) can still trust: the share of inputs (or positions) on
which both models predict the same class, and the relative squared error of the student's
outputs (all of them) against the teacher's.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from crossdistill.model_outputs import flat, predicted, predictions
from crossdistill.train_flags import eval_mode


def _chunks(x: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    return (x[i : i + batch_size] for i in range(0, x.shape[0], batch_size))


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, output: str | None = None, kind: str = "classes",
         batch_size: int = 256) -> float:
    """Top-1 in percent: per input, or for 'dense' predictions per labelled position."""
    correct = total = 0
    with eval_mode(model), torch.no_grad():
        for xb, yb in zip(_chunks(x, batch_size), _chunks(y, batch_size)):
            pred = predicted(predictions(model(xb), output), kind)
            correct += int((pred == yb).sum())
            total += yb.numel()
    return 100.0 * correct / max(1, total)


def agreement(teacher: nn.Module, student: nn.Module, batches: Iterable[torch.Tensor], *,
              output: str | None = None, kind: str = "classes") -> dict[str, Any]:
    """`output_error`: Σ‖student − teacher‖² / Σ‖teacher‖² over every output tensor and input
    (0 for a copy, ≈ 1 or more for an unrelated model); `top1_agreement` (percent of inputs, or
    positions, with the same predicted class; None for 'values')."""
    err = ref = 0.0
    same = total = 0
    with eval_mode(teacher), eval_mode(student), torch.no_grad():
        for xb in batches:
            t_out, s_out = teacher(xb), student(xb)
            for t, s in zip(flat(t_out), flat(s_out)):
                err += float((s.double() - t.double()).pow(2).sum())
                ref += float(t.double().pow(2).sum())
            if kind != "values":
                tp = predicted(predictions(t_out, output), kind)
                sp = predicted(predictions(s_out, output), kind)
                same += int((tp == sp).sum())
                total += tp.numel()
    return {"output_error": err / ref if ref > 0 else float(err > 0),
            "top1_agreement": 100.0 * same / total if total else None}
