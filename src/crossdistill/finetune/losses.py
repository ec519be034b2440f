"""The fine-tune's losses: distillation of every output of the teacher (+ cross-entropy on the
few labels), and the losses on the un-augmented few-shot images that the report shows before
and after.

A model may return several outputs and predictions of several kinds (crossdistill.model_outputs).
The predictions are distilled as logits (KL at a temperature, per position for dense ones; a
binary logit as the two-class logits (0, z)); any other output, and predictions that are plain
values, by their squared error relative to the teacher's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.model_outputs import batched, check_kind, flat, kind_of, per_sample, position


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(p_teacher ‖ p_student) at temperature T over dim 1, mean over the batch (and over
    the positions of dense logits); T² keeps the gradient scale independent of T, as Hinton et al."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits / t, dim=1)
    log_t = F.log_softmax(teacher_logits / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    return kl.mean() * (t * t)


def relative_error(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """‖s − t‖² / ‖t‖²: scale-free, so outputs of any size weigh alike."""
    return (student_out - teacher_out).pow(2).sum() / teacher_out.pow(2).sum().clamp_min(1e-12)


def class_logits(pred: torch.Tensor, kind: str) -> torch.Tensor:
    """Predictions as logits with the classes on dim 1 (a binary logit z becomes (0, z))."""
    if kind == "binary":
        z = pred.reshape(-1, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)
    if kind == "sequence":
        return pred.transpose(1, 2)  # (batch, C, L): classes on dim 1, per token
    return pred


@dataclass(frozen=True)
class Distillation:
    """How the fine-tune compares the student's outputs with the teacher's: where the
    predictions sit among the outputs (`position` in model_outputs.flat), their kind, the
    temperature."""

    position: int
    kind: str
    temperature: float

    @classmethod
    def of(cls, teacher: nn.Module, probe: torch.Tensor, output: str | None, temperature: float,
           kind: str = "auto") -> "Distillation":
        """From the teacher's outputs on `probe` (two samples or more: a model that squeezes its
        output would hide the batch dimension of one)."""
        with torch.no_grad():
            out = teacher(probe)
        pos = position(out, output)
        pred = flat(out)[pos]
        tokens = probe.shape[1] if not probe.is_floating_point() and probe.dim() == 2 else None
        return cls(pos, kind_of(pred, tokens) if kind == "auto" else check_kind(pred, kind), temperature)

    @property
    def has_classes(self) -> bool:
        """Whether the few-shot labels are classes of the predictions (one label per image)."""
        return self.kind in ("classes", "binary")

    def kd(self, student_outs: list[torch.Tensor], teacher_outs: list[torch.Tensor | None]) -> torch.Tensor:
        """Outputs that are not one row per input (a scalar auxiliary loss) are left out."""
        batch = student_outs[self.position].reshape(-1).shape[0] if self.kind == "binary" else \
            student_outs[self.position].shape[0]
        loss = student_outs[self.position].new_zeros(())
        for i, (s, t) in enumerate(zip(student_outs, teacher_outs)):
            if i != self.position and not (per_sample(t, batch) and per_sample(s, batch) and t.is_floating_point()):
                continue  # a scalar loss, or integers (an argmax) with no gradient
            if i == self.position and self.kind != "values":
                loss = loss + kd_loss(class_logits(s, self.kind), class_logits(t, self.kind), self.temperature)
            else:
                loss = loss + relative_error(s, t)
        return loss

    def loss(self, student_outs: list[torch.Tensor], teacher_outs: list[torch.Tensor], labels: torch.Tensor | None,
             lam: torch.Tensor | None, partner: torch.Tensor | None, kd_weight: float) -> torch.Tensor:
        """kd_weight · KD + (1 − kd_weight) · CE; on a mixed batch (λ per image, partner index) the
        CE is the λ-weighted mix of the CE against both images' labels. Labels are needed only
        when kd_weight < 1."""
        loss = kd_weight * self.kd(student_outs, teacher_outs)
        if kd_weight < 1.0:
            logits = class_logits(student_outs[self.position], self.kind)
            if lam is None:
                ce = F.cross_entropy(logits, labels)
            else:
                ce = (lam * F.cross_entropy(logits, labels, reduction="none")
                      + (1 - lam) * F.cross_entropy(logits, labels[partner], reduction="none")).mean()
            loss = loss + (1.0 - kd_weight) * ce
        return loss

    @torch.no_grad()
    def few_shot_losses(self, student: nn.Module, teacher_outs: list[torch.Tensor], images: torch.Tensor,
                        labels: torch.Tensor | None, batch_size: int) -> dict[str, Any]:
        """KD loss (and with labels CE and training top-1) of the student on the un-augmented images."""
        outs = batched(student, images, batch_size)
        info: dict[str, Any] = {"kd": float(self.kd(outs, teacher_outs))}
        if labels is not None and self.has_classes:
            logits = class_logits(outs[self.position], self.kind)
            info["ce"] = float(F.cross_entropy(logits, labels))
            info["train_top1"] = float((logits.argmax(1) == labels).float().mean() * 100)
        return info


def few_shot_losses(student: nn.Module, teacher_logits: torch.Tensor, images: torch.Tensor,
                    labels: torch.Tensor | None, temperature: float, batch_size: int) -> dict[str, Any]:
    """The losses of a classifier's student (one tensor of logits) on the un-augmented images."""
    return Distillation(0, "classes", temperature).few_shot_losses(student, [teacher_logits], images, labels,
                                                                    batch_size)
