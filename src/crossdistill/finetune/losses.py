"""The fine-tune's losses: logit distillation (+ cross-entropy on the few labels), and the
losses on the un-augmented few-shot images that the report shows before and after."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(p_teacher ‖ p_student) at temperature T, mean over the batch (T² keeps the gradient
    scale independent of T, as Hinton et al.)."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits / t, dim=1)
    log_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


def logit_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
               lam: torch.Tensor | None, partner: torch.Tensor | None, kd_weight: float,
               temperature: float) -> torch.Tensor:
    """kd_weight · KD + (1 − kd_weight) · CE; on a mixed batch (λ per image, partner index) the CE
    is the λ-weighted mix of the CE against both images' labels. Labels are needed only when
    kd_weight < 1."""
    loss = kd_weight * kd_loss(logits, teacher_logits, temperature)
    if kd_weight < 1.0:
        if lam is None:
            ce = F.cross_entropy(logits, labels)
        else:
            ce = (lam * F.cross_entropy(logits, labels, reduction="none")
                  + (1 - lam) * F.cross_entropy(logits, labels[partner], reduction="none")).mean()
        loss = loss + (1.0 - kd_weight) * ce
    return loss


@torch.no_grad()
def batched_logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's logits on all images, `batch_size` at a time, in the model's current mode."""
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])


@torch.no_grad()
def few_shot_losses(student: nn.Module, teacher_logits: torch.Tensor, images: torch.Tensor,
                    labels: torch.Tensor | None, temperature: float, batch_size: int) -> dict[str, float]:
    """KD loss (and with labels CE and training top-1) of the student on the un-augmented images."""
    logits = batched_logits(student, images, batch_size)
    out = {"kd": float(kd_loss(logits, teacher_logits, temperature))}
    if labels is not None:
        out["ce"] = float(F.cross_entropy(logits, labels))
        out["train_top1"] = float((logits.argmax(1) == labels).float().mean() * 100)
    return out
