"""Settings whose best value depends on how many few-shot images there are.

Chosen on a validation split (train[49000:], never the test images) by the sweep
configs/objective_defaults_val.yaml; the measurements are in docs/results/objective_defaults.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from crossdistill.errors import CrossDistillError

# Damping = ridge towards the teacher's weights, as a fraction of mean diag(H). With K images per
# class the moments are averages over K·classes images, so their noise falls like 1/K and the
# pull towards the teacher should too. ResNet-56, keep 0.5, validation top-1 (2 draws):
# no-cross K=1: 85.3 / 86.0 / 87.0 / 85.4 % at 0.001 / 0.03 / 0.1 / 0.3; K=5: 91.5 / 91.9 / 91.9 /
# 90.6 %; the old fixed 0.001 lost 1.7 points at K=1.
DAMPING_AT_ONE_SHOT = 0.1
MAX_DAMPING = 1.0


def images_per_class(n_images: int, num_classes: int) -> float:
    return n_images / max(num_classes, 1)


def auto_damping(shots: float) -> float:
    """0.1 at K = 1, 0.02 at K = 5, 0.01 at K = 10 (capped at 1 below one image per class)."""
    if shots <= 0:
        raise ValueError(f"images per class must be positive, got {shots}")
    return min(MAX_DAMPING, DAMPING_AT_ONE_SHOT / shots)


def resolve_damping(setting: float | None, labels: torch.Tensor | Sequence[int]) -> float:
    """The damping a run uses, the one policy for every caller of the engine: `setting` when
    given (a fixed fraction of mean diag H), else auto_damping of the draw's images per class.
    Classes are counted in the draw's own `labels`, not taken from the model: any model works,
    and a K-per-class draw gives exactly K."""
    if setting is not None:
        value = float(setting)
        if not math.isfinite(value) or value < 0:
            raise CrossDistillError(f"damping must be a finite number >= 0, got {setting}")
        return value
    # Labels are bookkeeping: on the CPU whatever device the run computes on.
    labels = torch.as_tensor(labels, device="cpu")
    if labels.numel() == 0:
        raise CrossDistillError("automatic damping needs the few-shot labels; the draw is empty")
    return auto_damping(images_per_class(labels.numel(), int(torch.unique(labels).numel())))
