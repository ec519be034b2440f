"""What a latency measurement records, and the machine conditions it depends on: the CPU
thread count and the load.

`measure_latency` itself stays in evaluation, beside the other measurements.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch

from crossdistill.errors import CrossDistillError

@dataclass(frozen=True)
class LatencyResult:
    """Wall-clock time of one forward pass of `batch_size` images, over `repeats` timed runs."""

    batch_size: int
    threads: int
    median_ms: float
    iqr_ms: float  # 75th minus 25th percentile: a spread that ignores the odd slow outlier
    repeats: int
    warmup: int
    device: str
    # The machine's 1-minute load when timed: on a busy machine the times mean little.
    load_average: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def peak_memory_mib() -> float | None:
    """The process's peak resident memory so far, in MiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def gpu_peak_memory_mib(device: torch.device) -> float | None:
    """Peak memory PyTorch allocated on a CUDA device so far, in MiB (None for the CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / (1024 * 1024), 1)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to `threads` (None: left alone) inside the block, restored after."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise CrossDistillError(f"threads must be >= 1, got {threads}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
