"""The Gram matrix of a 'same' stride-1 convolution's unfolded inputs, without unfolding.

For a kh×kw conv with zero padding (kh−1)/2, (kw−1)/2, the entry of Σ patches·patchesᵀ for
input channels (c, c') at kernel offsets (i, j), (i', j') is a sum of a_c(q)·b_c'(q + δ) over
the output grid shifted by (i, j), with δ = (i'−i, j'−j). Over the whole map it depends on δ
alone: (2kh−1)(2kw−1) channel×channel products (25 for 3×3) instead of the 81 blocks that the
unfolded (C·9)² product computes. Each block is then that full-map sum minus the rows and
columns its shifted window leaves out (at most (kh−1)/2 rows, (kw−1)/2 columns: a few
percent of the work on large maps). Exact in real arithmetic; in float32 the sums run in
another order than the unfolded product's (tests/test_conv_gram.py compares them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# Below this map size the strips that the shifted windows leave out cost more than the shifts
# save. Measured per layer at one thread (50 or 16 images): 2.5x faster at 56x56 and 28x28 (64
# and 128 channels), 1.5x at 14x14 (256), 1.2-1.3x at 32x32 and 16x16 (16, 32), slower at 8x8.
MIN_MAP = 12
# A symmetric Gram (a is b) needs half the shifts and half the strips, which moves the break-even
# down: measured per 16 images at one thread against the faster unfolded product, 0.83-0.87x the
# time at 7x7 with 128-512 channels and 8x8 with 64, 0.5-0.6x at 16x16 with 32-48 and at 32x32
# with 12-16, but 1.2-2.5x at 8x8 with 16-32 channels and at 16x16 with 16, and 1.5-2x at 4x4
# whatever the width. So: maps of at least 7 and channels x side of at least 384.
MIN_MAP_SYMMETRIC = 7
MIN_CHANNELS_BY_SIDE = 384


def applies(module: nn.Module, height: int | None = None, width: int | None = None, *,
            symmetric_channels: int | None = None) -> bool:
    """Ungrouped, stride 1, dilation 1, odd kernel larger than 1×1 with 'same' zero padding (on
    maps of at least MIN_MAP in both directions, when given; for a symmetric Gram of
    `symmetric_channels` channels, by the symmetric break-even instead)."""
    if height is not None and width is not None:
        side = min(height, width)
        if symmetric_channels is None and side < MIN_MAP:
            return False
        if symmetric_channels is not None and (side < MIN_MAP_SYMMETRIC
                                               or symmetric_channels * side < MIN_CHANNELS_BY_SIDE):
            return False
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or module.padding_mode != "zeros":
        return False
    kh, kw = module.kernel_size
    if (kh, kw) == (1, 1) or kh % 2 == 0 or kw % 2 == 0 or isinstance(module.padding, str):
        return False
    return (tuple(module.stride) == (1, 1) and tuple(module.dilation) == (1, 1)
            and tuple(module.padding) == ((kh - 1) // 2, (kw - 1) // 2))


def _missing(size: int, offset: int, pad: int) -> list[int]:
    """Positions of the map (0 … size−1) that the window at kernel offset `offset` leaves out."""
    lo, hi = max(0, offset - pad), min(size, offset - pad + size)
    return [r for r in range(size) if not lo <= r < hi]


def shifted_gram(a: torch.Tensor, b: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Σ_images Σ_positions unfold(a) unfold(b)ᵀ for a 'same' stride-1 conv of this kernel: a
    (C·kh·kw)² matrix in the layer's (c, i, j) column order, in the dtype of the inputs."""
    kh, kw = kernel
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    n, C, H, W = a.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    L = Hp * Wp
    # Both maps in the zero-padded grid, flattened per image: a shift δ = (dy, dx) of b is then a
    # flat offset dy·Wp + dx, a view of b (no copy), and the zeros of the padding stop it from
    # wrapping into the next row. b gets a margin so that every offset stays inside.
    ap = F.pad(a, (pw, pw, ph, ph)).reshape(n, C, L)
    margin = (kh - 1) * Wp + (kw - 1)
    bp = F.pad(F.pad(b, (pw, pw, ph, ph)).reshape(n, C, L), (margin, margin))

    # With a = b the blocks of −δ are the transposes of those of δ: half the shifts suffice
    # (for the full-map products and for the strips alike).
    symmetric = a is b
    shifts = [(dy, dx) for dy in range(-(kh - 1), kh) for dx in range(-(kw - 1), kw)
              if not (symmetric and (dy, dx) < (0, 0))]
    index = {d: k for k, d in enumerate(shifts)}
    offsets = torch.as_tensor([margin + dy * Wp + dx for dy, dx in shifts], device=a.device)  # (m,)

    def at_shifts(positions: torch.Tensor) -> torch.Tensor:
        """b at every shift of the given flat positions: (n, C, m, len(positions))."""
        return bp[:, :, offsets[:, None] + positions[None, :]]

    def strip(positions: list[int]) -> torch.Tensor:
        """(m, C, C): per shift, Σ over images and these positions of a(q) b(q+δ)ᵀ, in one product."""
        pos = torch.as_tensor(positions, device=a.device)
        return torch.einsum("ncp,ndkp->kcd", ap[:, :, pos], at_shifts(pos))

    # Positions of the real rows / columns / single pixels that some window leaves out.
    def row_pos(r: int) -> list[int]:
        return [(r + ph) * Wp + pw + c for c in range(W)]

    def col_pos(c: int) -> list[int]:
        return [(r + ph) * Wp + pw + c for r in range(H)]

    rows = [_missing(H, i, ph) for i in range(kh)]
    cols = [_missing(W, j, pw) for j in range(kw)]
    row_strips = {r: strip(row_pos(r)) for r in sorted({r for rs in rows for r in rs})}
    col_strips = {c: strip(col_pos(c)) for c in sorted({c for cs in cols for c in cs})}
    pixels = {(r, c): strip([(r + ph) * Wp + pw + c]) for rs in rows for r in rs for cs in cols for c in cs}
    G = a.new_empty(C, kh, kw, C, kh, kw)
    for dy, dx in shifts:
        k = index[dy, dx]
        off = margin + dy * Wp + dx
        full = torch.bmm(ap, bp[:, :, off : off + L].transpose(1, 2)).sum(0)
        for i in range(max(0, -dy), min(kh, kh - dy)):
            for j in range(max(0, -dx), min(kw, kw - dx)):
                block = full
                for r in rows[i]:
                    block = block - row_strips[r][k]
                for c in cols[j]:
                    block = block - col_strips[c][k]
                for r in rows[i]:
                    for c in cols[j]:  # left out by both strips: counted back once
                        block = block + pixels[r, c][k]
                G[:, i, j, :, i + dy, j + dx] = block
                if symmetric:
                    G[:, i + dy, j + dx, :, i, j] = block.T
    return G.reshape(C * kh * kw, C * kh * kw)
