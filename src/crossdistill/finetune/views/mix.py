"""Mixup and CutMix of a batch with a random permutation of itself."""
from __future__ import annotations

import math

import numpy as np
import torch


def mix(x: torch.Tensor, mixup: float, cutmix: float, gen: torch.Generator, rng: np.random.Generator
        ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Mixup (per-image λ ~ Beta(mixup, mixup)) or CutMix (one box per batch, λ = the share of the
    image kept, 1 − λ ~ Beta(cutmix, cutmix); for signals N×C×L one stretch of time); with both
    > 0, one of them per batch, 50/50.
    Returns (images, λ per image or None, partner index or None); (x, None, None) when off.
    λ comes from numpy's `rng` because torch's Beta takes no generator; the permutation from `gen`."""
    use_mixup, use_cutmix = mixup > 0, cutmix > 0
    if len(x) < 2 or not (use_mixup or use_cutmix):
        return x, None, None
    if use_mixup and use_cutmix:
        use_cutmix = bool(rng.random() < 0.5)
    partner = torch.randperm(len(x), generator=gen).to(x.device)
    if not use_cutmix:
        # With ten images, the teacher's answers on their mixtures are most of the data.
        lam = torch.as_tensor(rng.beta(mixup, mixup, len(x)), dtype=x.dtype, device=x.device)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return lam.view(shape) * x + (1 - lam.view(shape)) * x[partner], lam, partner
    if x.dim() == 3:
        # Signals (N, C, L): one stretch of time from the partner, in every channel (a box over
        # (C, L) would swap some sensor axes for others'). 1 − λ is the stretch's share.
        length = x.shape[-1]
        seg = int(round(length * (1.0 - float(rng.beta(cutmix, cutmix)))))
        centre = int(rng.integers(length))
        t0, t1 = max(centre - seg // 2, 0), min(centre + (seg + 1) // 2, length)
        out = x.clone()
        out[..., t0:t1] = x[partner][..., t0:t1]
        lam = torch.full((len(x),), 1.0 - (t1 - t0) / length, dtype=x.dtype, device=x.device)
        return out, lam, partner
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - float(rng.beta(cutmix, cutmix)))
    ch, cw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[partner][..., y0:y1, x0:x1]
    lam = torch.full((len(x),), 1.0 - (y1 - y0) * (x1 - x0) / (h * w), dtype=x.dtype, device=x.device)
    return out, lam, partner
