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

from crossdistill.errors import CrossDistillError
from crossdistill.model_outputs import IGNORE, batch_slices, flat, per_sample, predicted, predictions, scored_positions
from crossdistill.train_flags import eval_mode


def _chunks(x: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    return (x[s] for s in batch_slices(x.shape[0], batch_size))


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, output: str | None = None, kind: str = "classes",
         batch_size: int = 256) -> float:
    """Top-1 in percent: per input, or for 'dense' predictions per labelled position."""
    return scores(model, x, y, output=output, kind=kind, batch_size=batch_size)["top1"]


def scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, output: str | None = None, kind: str = "classes",
           batch_size: int = 256) -> dict[str, float]:
    """`top1` (percent of inputs, or of positions for 'dense' and 'sequence' predictions); for those also
    `miou`, the mean over classes of intersection / union in percent (classes absent from both
    labels and predictions left out), the figure segmentation results are compared by. Positions
    labelled IGNORE (255: void, object borders, as in VOC and Cityscapes masks) are not scored."""
    correct = total = 0
    confusion: torch.Tensor | None = None
    with eval_mode(model), torch.no_grad():
        for xb, yb in zip(_chunks(x, batch_size), _chunks(y, batch_size)):
            scored = predictions(model(xb), output)
            pred = predicted(scored, kind)
            if kind in ("dense", "sequence"):
                keep = scored_positions(yb)
                yb, pred = yb[keep], pred[keep]
                c = scored.shape[1] if kind == "dense" else scored.shape[2]
                if yb.numel() and int(yb.max()) >= c:
                    raise CrossDistillError(f"label {int(yb.max())} is not a class of the model, which has {c} outputs "
                                            f"({IGNORE} or a negative label marks positions not scored)")
            correct += int((pred == yb).sum())
            total += yb.numel()
            if kind in ("dense", "sequence"):
                counts = torch.bincount(yb * c + pred, minlength=c * c).reshape(c, c)
                confusion = counts if confusion is None else confusion + counts
    if total == 0:
        raise CrossDistillError("no label to score: every position is marked not scored (255 or negative)")
    out = {"top1": 100.0 * correct / total}
    if confusion is not None:
        hit = confusion.diag().double()
        union = confusion.sum(0).double() + confusion.sum(1).double() - hit
        present = union > 0
        out["miou"] = float((hit[present] / union[present]).mean() * 100) if bool(present.any()) else 0.0
    return out


def agreement(teacher: nn.Module, student: nn.Module, batches: Iterable[torch.Tensor], *,
              output: str | None = None, kind: str = "classes") -> dict[str, Any]:
    """`output_error`: Σ‖student − teacher‖² / Σ‖teacher‖² over every float output tensor and input
    (0 for a copy, ≈ 1 or more for an unrelated model); `top1_agreement` (percent of inputs, or
    positions, with the same predicted class; None for 'values')."""
    err = ref = 0.0
    same = total = 0
    with eval_mode(teacher), eval_mode(student), torch.no_grad():
        for xb in batches:
            t_out, s_out = teacher(xb), student(xb)
            for t, s in zip(flat(t_out), flat(s_out)):
                if not (per_sample(t, len(xb)) and per_sample(s, len(xb))) or not t.is_floating_point():
                    continue  # a scalar (an auxiliary loss), or integers (an argmax): not a model's values
                err += float((s.double() - t.double()).pow(2).sum())
                ref += float(t.double().pow(2).sum())
            if kind != "values":
                tp = predicted(predictions(t_out, output), kind)
                sp = predicted(predictions(s_out, output), kind)
                same += int((tp == sp).sum())
                total += tp.numel()
    return {"output_error": err / ref if ref > 0 else float(err > 0),
            "top1_agreement": 100.0 * same / total if total else None}


def agreement_on(teacher: nn.Module, student: nn.Module, data: Any, info: Any, batch_size: int = 256) -> dict[str, Any]:
    """`agreement` on stored test data (ImageArrays: uint8 images or float signals), normalised as
    the model's info says, chunk by chunk (a float copy of a whole split would cost 4x its size)."""
    from crossdistill.data.transforms import to_tensor

    batches = (to_tensor(data.x[s], info.mean, info.std) for s in batch_slices(len(data.x), batch_size))
    return {**agreement(teacher, student, batches, output=info.output, kind=info.kind), "n_eval": int(len(data.x))}
