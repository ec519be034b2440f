"""Integer codes of `bits` bits each, packed into bytes: what makes a saved 4-bit layer take half
a byte per weight in the file, as `model_size_bytes` counts it, not one byte per weight."""
from __future__ import annotations

import math

import torch

from crossdistill.errors import CrossDistillError


def packed_length(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits take."""
    return math.ceil(count * bits / 8)


# Codes per step: a multiple of 8, so that every step but the last fills whole bytes; the
# bit stream of one step (64 bits a bit) stays a few tens of MB however large the layer.
_STEP = 1 << 19


def pack(codes: torch.Tensor, bits: int, low: int) -> torch.Tensor:
    """A 1-d uint8 tensor holding `codes - low` (each in 0 … 2^bits − 1) in `bits` bits each, in
    row-major order, least significant bit first."""
    values = codes.reshape(-1).to(torch.int64) - low
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 1 << bits):
        raise CrossDistillError(f"codes do not fit in {bits} bits above {low}")
    if bits == 8:
        return values.to(torch.uint8)
    parts = []
    for start in range(0, values.numel(), _STEP):
        stream = ((values[start:start + _STEP, None] >> torch.arange(bits)) & 1).reshape(-1)
        stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
        parts.append((stream.reshape(-1, 8) << torch.arange(8)).sum(1).to(torch.uint8))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, low: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The codes `pack` stored, as a tensor of `shape` and `dtype`."""
    count = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_length(count, bits):
        raise CrossDistillError(f"packed codes must be {packed_length(count, bits)} bytes (uint8) for {count} "
                                f"codes of {bits} bits, not {tuple(packed.shape)} {packed.dtype}")
    if bits == 8:
        values = packed.to(torch.int64)
    else:
        parts, step_bytes = [], _STEP * bits // 8
        for start in range(0, packed.numel(), step_bytes):
            stream = ((packed[start:start + step_bytes, None].to(torch.int64) >> torch.arange(8)) & 1).reshape(-1)
            n = min(_STEP, count - start * 8 // bits)
            parts.append((stream[: n * bits].reshape(n, bits) << torch.arange(bits)).sum(1))
        values = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    return (values + low).reshape(shape).to(dtype)
