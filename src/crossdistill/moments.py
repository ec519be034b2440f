"""Second moments of the unfolded layer inputs, accumulated batch by batch.

Every cross-distillation loss is quadratic in the student weight, so these three matrices are
all the data a layer's solve needs; memory does not grow with the number of samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill.capture import patches

# float64 for the sums and the solves: with few samples the moments are nearly singular.
DTYPE = torch.float64


@dataclass
class Moments:
    """C_tt = E[x_t x_tᵀ], C_ss = E[x_s x_sᵀ], C_ts = E[x_t x_sᵀ] over all patches."""

    tt: torch.Tensor
    ss: torch.Tensor
    ts: torch.Tensor
    count: int

    @property
    def st(self) -> torch.Tensor:
        return self.ts.T


class MomentAccumulator:
    """Add paired (teacher, student) layer inputs batch by batch, then `finish()`."""

    def __init__(self, module: nn.Module, chunk_images: int = 16) -> None:
        self.module = module
        self.chunk = chunk_images
        self._tt: torch.Tensor | None = None
        self._ss: torch.Tensor | None = None
        self._ts: torch.Tensor | None = None
        self.count = 0

    def add(self, x_teacher: torch.Tensor, x_student: torch.Tensor) -> None:
        if x_teacher.shape != x_student.shape:
            raise ValueError(f"teacher input {tuple(x_teacher.shape)} != student input {tuple(x_student.shape)}")
        # Chunks of images: one huge unfold of a whole batch is the slow, memory-hungry part.
        for start in range(0, x_teacher.shape[0], self.chunk):
            pt = patches(self.module, x_teacher[start : start + self.chunk].float())
            ps = patches(self.module, x_student[start : start + self.chunk].float())
            if self._tt is None:
                d = pt.shape[-2]
                self._tt = torch.zeros(d, d, dtype=DTYPE)
                self._ss = torch.zeros(d, d, dtype=DTYPE)
                self._ts = torch.zeros(d, d, dtype=DTYPE)
            # A chunk's products in float32 (fast), the running sums in float64 (exact enough
            # however many chunks are added).
            self._tt += _gram(pt, pt)
            self._ss += _gram(ps, ps)
            self._ts += _gram(pt, ps)
            self.count += pt.shape[0] * pt.shape[2]

    def finish(self) -> Moments:
        if self._tt is None or self.count == 0:
            raise ValueError("no samples were accumulated")
        n = float(self.count)
        return Moments(tt=self._tt / n, ss=self._ss / n, ts=self._ts / n, count=self.count)


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over images of a_n b_nᵀ, as float64."""
    n, d, positions = a.shape
    if positions > d:
        # Many positions per image (early, large feature maps): per-image products avoid
        # copying the patches into one (patches, D) matrix.
        return torch.bmm(a, b.transpose(1, 2)).sum(0, dtype=DTYPE)
    flat_a = a.transpose(1, 2).reshape(-1, d)
    flat_b = flat_a if b is a else b.transpose(1, 2).reshape(-1, d)
    return (flat_a.T @ flat_b).to(DTYPE)
