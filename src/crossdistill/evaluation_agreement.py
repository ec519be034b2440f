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

from crossdistill.device import module_device
from crossdistill.errors import CrossDistillError
from crossdistill.model_inputs import for_model
from crossdistill.model_outputs import IGNORE, batch_slices, flat, per_sample, predicted, predictions, scored_positions
from crossdistill.train_flags import eval_mode


# Test images per forward: the predictions are the same at any batch size (bit for bit on the
# CPU), and on one CPU thread 64 CIFAR images ran a ResNet-56 1.3x faster than 256, whose
# activations (16 MB a layer) no longer fit the caches.
EVAL_BATCH = 64


def _chunks(x: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    return (x[s] for s in batch_slices(x.shape[0], batch_size))


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, output: str | None = None, kind: str = "classes",
         batch_size: int = EVAL_BATCH) -> float:
    """Top-1 in percent: per input, or for 'dense' predictions per labelled position."""
    return scores(model, x, y, output=output, kind=kind, batch_size=batch_size)["top1"]


def scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, output: str | None = None, kind: str = "classes",
           batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """`top1` (percent of inputs, or of positions for 'dense' and 'sequence' predictions); for those also
    `miou`, the mean over classes of intersection / union in percent (classes absent from both
    labels and predictions left out), the figure segmentation results are compared by. Positions
    labelled IGNORE (255: void, object borders, as in VOC and Cityscapes masks) are not scored."""
    counts = Scores(kind)
    with eval_mode(model), torch.no_grad():
        for xb, yb in zip(_chunks(x, batch_size), _chunks(y, batch_size)):
            counts.add(predictions(model(for_model(model, xb)), output), yb)
    return counts.result()


class Scores:
    """`scores`, summed batch by batch from the prediction tensor and the labels."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.correct = self.total = 0
        self.confusion: torch.Tensor | None = None

    def add(self, scored: torch.Tensor, yb: torch.Tensor, pred: torch.Tensor | None = None) -> None:
        """`pred`: predicted(scored, kind), when the caller has it already."""
        pred = predicted(scored, self.kind) if pred is None else pred
        yb = yb.to(pred.device)
        if self.kind in ("dense", "sequence"):
            keep = scored_positions(yb)
            yb, pred = yb[keep], pred[keep]
            c = scored.shape[1] if self.kind == "dense" else scored.shape[2]
            if yb.numel() and int(yb.max()) >= c:
                raise CrossDistillError(f"label {int(yb.max())} is not a class of the model, which has {c} outputs "
                                        f"({IGNORE} or a negative label marks positions not scored)")
            counts = torch.bincount(yb * c + pred, minlength=c * c).reshape(c, c)
            self.confusion = counts if self.confusion is None else self.confusion + counts
        self.correct += int((pred == yb).sum())
        self.total += yb.numel()

    def result(self) -> dict[str, float]:
        if self.total == 0:
            raise CrossDistillError("no label to score: every position is marked not scored (255 or negative)")
        out = {"top1": 100.0 * self.correct / self.total}
        if self.confusion is not None:
            hit = self.confusion.diag().double()
            union = self.confusion.sum(0).double() + self.confusion.sum(1).double() - hit
            present = union > 0
            out["miou"] = float((hit[present] / union[present]).mean() * 100) if bool(present.any()) else 0.0
        return out


class Agreement:
    """`agreement`, summed batch by batch from both models' outputs."""

    def __init__(self, output: str | None, kind: str) -> None:
        self.output, self.kind = output, kind
        self.same = self.total = 0
        # Per output (the pooled figure is their sum): a small head beside large logits weighs
        # nothing in the pooled one (a regression head's error of 0.47 showed as 0.016 overall).
        self.errs: dict[int, list[float]] = {}

    def add(self, t_out: Any, s_out: Any, batch: int,
            preds: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """`preds`: both models' predicted classes, when the caller has them already."""
        for i, (t, s) in enumerate(zip(flat(t_out), flat(s_out))):
            if not (per_sample(t, batch) and per_sample(s, batch)) or not t.is_floating_point():
                continue  # a scalar (an auxiliary loss), or integers (an argmax): not a model's values
            sums = self.errs.setdefault(i, [0.0, 0.0])
            sums[0] += float((s.to(t.device, torch.float64) - t.double()).pow(2).sum())
            sums[1] += float(t.double().pow(2).sum())
        if self.kind != "values":
            tp, sp = preds if preds is not None else (predicted(predictions(t_out, self.output), self.kind),
                                                      predicted(predictions(s_out, self.output), self.kind))
            self.same += int((tp == sp.to(tp.device)).sum())
            self.total += tp.numel()

    def result(self) -> dict[str, Any]:
        err, ref = (sum(v[j] for v in self.errs.values()) for j in (0, 1))
        out: dict[str, Any] = {"output_error": _relative(err, ref),
                               "top1_agreement": 100.0 * self.same / self.total if self.total else None}
        if len(self.errs) > 1:  # several outputs: each its own, by its place in model_outputs.flat
            out["output_errors"] = {str(i): _relative(e, r) for i, (e, r) in sorted(self.errs.items())}
        return out


def _relative(err: float, ref: float) -> float:
    return err / ref if ref > 0 else float(err > 0)


def agreement(teacher: nn.Module, student: nn.Module, batches: Iterable[torch.Tensor], *,
              output: str | None = None, kind: str = "classes") -> dict[str, Any]:
    """`output_error`: Σ‖student − teacher‖² / Σ‖teacher‖² over every float output tensor and input
    (0 for a copy, 1 for outputs of zeros, ≈ 1 or more for an unrelated model); with several
    outputs, `output_errors` the same per output (keyed by its place among them); `top1_agreement`
    (percent of inputs, or positions, with the same predicted class; None for 'values')."""
    counts = Agreement(output, kind)
    with eval_mode(teacher), eval_mode(student), torch.no_grad():
        for xb in batches:
            counts.add(teacher(for_model(teacher, xb)), student(for_model(student, xb)), len(xb))
    return counts.result()


def compare(teacher: nn.Module, student: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], *,
            output: str | None = None, kind: str = "classes", progress: Any = None
            ) -> tuple[dict[str, float] | None, dict[str, float] | None, dict[str, Any]]:
    """The teacher's `scores`, the student's and their `agreement` from one forward pass of each
    model per batch (a test set is run through each model once, not once per figure); the scores
    are None when the batches carry no labels. `progress` (a bar) is advanced by each batch's size."""
    t_scores, s_scores, agree = Scores(kind), Scores(kind), Agreement(output, kind)
    labelled = False
    t_device, s_device = module_device(teacher), module_device(student)
    with eval_mode(teacher), eval_mode(student), torch.no_grad():
        for xb, yb in batches:
            t_out = teacher(for_model(teacher, xb.to(t_device)))
            s_out = student(for_model(student, xb.to(s_device)))
            preds = None
            if kind != "values":  # one argmax per model and batch, for the scores and the agreement
                t_pred, s_pred = (predicted(predictions(o, output), kind) for o in (t_out, s_out))
                preds = (t_pred, s_pred)
            if yb is not None:
                labelled = True
                t_scores.add(predictions(t_out, output), yb, preds[0] if preds else None)
                s_scores.add(predictions(s_out, output), yb, preds[1] if preds else None)
            agree.add(t_out, s_out, len(xb), preds)
            if progress is not None:
                progress.update(len(xb))
    if not labelled:
        return None, None, agree.result()
    return t_scores.result(), s_scores.result(), agree.result()
