"""Where the work runs: the layer-wise compression (capture forwards, float64 moments, the
layer solves, a global budget's costs), the few-shot fine-tune and the training baselines (bp,
l1-finetune, FitNet's hint stage).

The solves stay in float64 on a GPU as on the CPU: the moments of a few images are nearly
singular, and a data-centre GPU (A100, H100/H200) runs float64 at a tenth to half of its float32
rate, still far above a CPU's. Models are moved to the device only for the work and moved back
afterwards, so everything before and after (planning, slimming, saving, evaluation, export) sees
CPU tensors as before; the code in between makes its tensors on its data's device (checked on
the CPU by tests/test_device_follow.py).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from crossdistill.errors import CrossDistillError

DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "auto")
_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def check_device_name(name: object) -> str:
    """The name if it is well formed (without asking whether the device exists)."""
    if not isinstance(name, str) or not _PATTERN.match(name):
        raise CrossDistillError(f"device must be one of {list(DEVICE_CHOICES)}, got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """'auto' = the first CUDA device when there is one, else the CPU. Asking for CUDA where
    there is none is an error, not a silent fall back: timings and results would not be what
    was asked for."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CrossDistillError(f"device {name!r} was asked for but this PyTorch sees no CUDA device "
                                    f"(torch {torch.__version__}); use --device cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise CrossDistillError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device(name)


def module_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextmanager
def on_device(device: torch.device, *models: nn.Module) -> Iterator[None]:
    """Move `models` to `device` for the block; each goes back to where it was afterwards, also
    when the block fails (the caller's teacher must not be left on the GPU)."""
    homes = [module_device(m) for m in models]
    try:
        for m in models:
            m.to(device)
        yield
    finally:
        for m, home in zip(models, homes):
            m.to(home)


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-d weights are kept in channels_last memory format (for its speed on
    the CPU or with cuDNN): a layout its copies, students and saved files keep."""
    return any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())
