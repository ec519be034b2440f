"""Per-output-channel weight quantization grids (the arithmetic shared by the quant solvers,
the quantization method and persistence).

A grid row r maps an integer code q ∈ [qmin, qmax] to the real value scale_r · (q − zp_r).

- symmetric: zp = 0 and codes in [−(2^(b−1) − 1), 2^(b−1) − 1] (the "narrow" signed range, so
  +x and −x are both representable: at 2 bits the grid is ternary {−s, 0, s});
- asymmetric: codes in [0, 2^b − 1] and an integer zero point in that range, so 0.0 is always
  exactly representable (a zero weight stays zero).

Scales are rounded to float32 when the grid is fitted: the solver then works on exactly the grid
that is stored, and `scale · (code − zp)` evaluated in float32 reproduces the stored weights.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from crossdistill.errors import CrossDistillError
from crossdistill.params import check_setting

SCHEMES = ("symmetric", "asymmetric")
MIN_BITS = 2
MAX_BITS = 8
CLIPS = ("mse", "minmax")


def check_bits(bits: int) -> int:
    return int(check_setting("bits", bits, integer=True, low=MIN_BITS, high=MAX_BITS))


def check_scheme(scheme: str) -> str:
    return check_setting("quant_scheme", scheme, choices=SCHEMES)


@functools.lru_cache(maxsize=None)
def code_range(bits: int, scheme: str) -> tuple[int, int]:
    # Cached (a refusal is not): a grid's fit asks per candidate and row group (a depthwise conv's
    # hundreds of one-row solves), where checking the settings each time cost a third of the fit.
    bits, scheme = check_bits(bits), check_scheme(scheme)
    if scheme == "symmetric":
        half = 2 ** (bits - 1) - 1
        return -half, half
    return 0, 2**bits - 1


def code_dtype(scheme: str) -> torch.dtype:
    """Smallest torch integer type that holds every code of ≤ 8 bits of this scheme."""
    return torch.int8 if check_scheme(scheme) == "symmetric" else torch.uint8


@dataclass(frozen=True)
class Grid:
    scale: torch.Tensor  # (out,) float64, values exactly representable in float32, > 0
    zero_point: torch.Tensor  # (out,) float64, integer valued
    bits: int
    scheme: str

    @property
    def qmin(self) -> int:
        return code_range(self.bits, self.scheme)[0]

    @property
    def qmax(self) -> int:
        return code_range(self.bits, self.scheme)[1]

    def _per_row(self, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return t.to(w.dtype).reshape(-1, *([1] * (w.dim() - 1)))

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Nearest codes (as floats) of `w`, whose first dimension is the output channel."""
        s, z = self._per_row(self.scale, w), self._per_row(self.zero_point, w)
        return torch.clamp(torch.round(w / s) + z, self.qmin, self.qmax)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.float64)
        return self._per_row(self.scale, c) * (c - self._per_row(self.zero_point, c))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Round to nearest grid point, row by row (the same grid for every column)."""
        return self.dequantize(self.codes(w)).to(w.dtype)

    def column_quantizer(self, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
        """`quantize` for one column (out,) of `dtype` at a time, the same arithmetic with the
        grid's per-row numbers and code range converted once: GPTQ's sweep calls it per column."""
        s, z = self.scale.to(dtype), self.zero_point.to(dtype)
        s64, z64 = self.scale.to(torch.float64), self.zero_point.to(torch.float64)
        qmin, qmax = self.qmin, self.qmax

        def quantize(w: torch.Tensor) -> torch.Tensor:
            c = torch.clamp(torch.round(w / s) + z, qmin, qmax).to(torch.float64)
            return (s64 * (c - z64)).to(dtype)

        return quantize


def _candidate(w: torch.Tensor, shrink: float, bits: int, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    qmin, qmax = code_range(bits, scheme)
    if scheme == "symmetric":
        amax = w.abs().amax(1) * shrink
        scale = amax / qmax
        zp = torch.zeros_like(scale)
    else:
        # The range always contains 0 so that an exact zero weight has a code.
        lo = torch.clamp(w.amin(1), max=0.0) * shrink
        hi = torch.clamp(w.amax(1), min=0.0) * shrink
        scale = (hi - lo) / qmax
        zp = None
    # An all-zero row has no range; any positive scale represents it exactly.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = scale.float().double()  # the stored precision
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # float32 underflow
    if zp is None:
        zp = torch.clamp(torch.round(-lo / scale), qmin, qmax)
    return scale, zp


def fit_grid(
    w: torch.Tensor, bits: int, scheme: str, clip: str = "mse", steps: int = 41, min_shrink: float = 0.2
) -> Grid:
    """One grid per row of `w` (out, n).

    clip='minmax' spans each row's range; clip='mse' also tries ranges shrunk by a factor in
    [min_shrink, 1] and keeps, per row, the one with the least squared rounding error. Clipping
    the few largest weights buys resolution for all the others; at 2–3 bits it is the
    difference between a usable and a useless round-to-nearest baseline.
    """
    bits, scheme = check_bits(bits), check_scheme(scheme)
    if clip not in CLIPS:
        raise CrossDistillError(f"quant clip must be one of {list(CLIPS)}, got {clip!r}")
    w = w.detach().to(torch.float64).reshape(w.shape[0], -1)
    shrinks = [1.0] if clip == "minmax" else torch.linspace(1.0, min_shrink, steps, device="cpu").tolist()
    best_scale = best_zp = best_err = None
    for p in shrinks:
        scale, zp = _candidate(w, p, bits, scheme)
        grid = Grid(scale, zp, bits, scheme)
        err = (grid.quantize(w) - w).pow(2).sum(1)
        if best_err is None:
            best_scale, best_zp, best_err = scale, zp, err
        else:
            better = err < best_err
            best_scale = torch.where(better, scale, best_scale)
            best_zp = torch.where(better, zp, best_zp)
            best_err = torch.where(better, err, best_err)
    return Grid(best_scale, best_zp, bits, scheme)


def grid_info(grid: Grid) -> dict[str, object]:
    """JSON-friendly form, carried in a LayerRecord's info up to `Quantization.finalize`."""
    return {
        "bits": grid.bits,
        "scheme": grid.scheme,
        "scale": [float(s) for s in grid.scale],
        "zero_point": [int(z) for z in grid.zero_point],
    }


def grid_from_info(info: dict[str, object], device: torch.device | str = "cpu") -> Grid:
    code_range(int(info["bits"]), str(info["scheme"]))  # type: ignore[arg-type]  # refused here, before a Grid is made
    return Grid(
        scale=torch.tensor(info["scale"], dtype=torch.float32, device=device).double(),
        zero_point=torch.tensor(info["zero_point"], dtype=torch.float64, device=device),
        bits=int(info["bits"]),  # type: ignore[arg-type]
        scheme=str(info["scheme"]),
    )
