"""What one compression run takes and gives: the few-shot draw and the result. Their own module,
so that the pipeline and the modules it uses (output writing) share them without importing
each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill.engine import LayerRecord


@dataclass
class FewShot:
    images: torch.Tensor  # normalised NCHW
    labels: torch.Tensor
    indices: np.ndarray  # into the training data, sorted
    labelled: bool = True  # False: the data had none, `labels` are placeholders (no cross-entropy on them)


@dataclass
class CompressionResult:
    student: nn.Module
    records: list[LayerRecord]
    seconds: float
    objective: str
    solver: str
    method: str
    finetune: dict[str, Any] | None = None  # what the optional fine-tune did
    summary: dict[str, Any] = field(default_factory=dict)  # method.summary(student), e.g. sparsity
