"""Random views of a batch of images, per image, drawn from a CPU generator.

The random numbers always come from the CPU generator whatever the images' device, so the same
seed gives the same views on every device.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def shift_1d(x: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Signals (N, C, L): a random window of length L after zero padding both ends by `pad`,
    per signal, i.e. a shift within ±pad. No flip: time reversed is another signal."""
    if pad <= 0:
        return x
    n, _, length = x.shape
    padded = F.pad(x, (pad, pad))
    start = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    idx = (start[:, None] + torch.arange(length, device=x.device)[None, :])[:, None, :].expand(-1, x.shape[1], -1)
    return padded.gather(2, idx).contiguous()


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding, and a random horizontal flip, per image; a signal
    (N, C, L) is shifted within ±L/8 instead (pad 4 is 1/8 of a 32-pixel side)."""
    if x.dim() == 3:
        return shift_1d(x, gen, x.shape[2] // 8)
    if x.dim() != 4 or pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    out[flip] = out[flip].flip(3)
    return out.contiguous()


def affine_views(x: torch.Tensor, gen: torch.Generator, zoom: float = 0.35, degrees: float = 15.0,
                 shift: float = 0.15, jitter: float = 0.2) -> torch.Tensor:
    """Wider views than crop-flip: per image a random zoom in [1, 1 + zoom] (a crop of 55–100 % of
    the area), rotation within ±degrees, shift within ±shift of the size, horizontal flip, edges
    reflected; then contrast and brightness scaled by up to ±jitter (in the normalised units).
    The teacher labels the same view, so the views need not keep the class, only stay image-like.
    A signal (N, C, L) is shifted within ±shift of its length (shift_1d)."""
    if x.dim() == 3:
        return shift_1d(x, gen, round(shift * x.shape[2]))
    if x.dim() != 4:
        return x
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:  # drawn on the CPU generator, as in crop_flip
        return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=x.dtype)

    scale = 1.0 / uniform(1.0, 1.0 + zoom)
    angle = uniform(-degrees, degrees) * (math.pi / 180.0)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(x.dtype)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-2 * shift, 2 * shift), uniform(-2 * shift, 2 * shift)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    shape = (n, 1, 1, 1)
    contrast = uniform(1.0 - jitter, 1.0 + jitter).view(shape).to(x.device)
    brightness = uniform(-jitter, jitter).view(shape).to(x.device)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).contiguous()


# The augment policies (FinetuneConfig.views): name → view function.
VIEWS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "crop-flip": crop_flip, "affine": affine_views}
AUGMENT_POLICIES = tuple(VIEWS)
