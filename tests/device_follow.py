"""A CPU stand-in for a GPU run: catches the tensors a compression creates on the default device
instead of on its data's device.

Under `data_device_only()` torch's default device is 'meta' while the models and images stay on
the CPU. A factory call without `device=` (torch.zeros(n), torch.arange(n), torch.tensor(list))
then makes a meta tensor, and the first op that meets it together with the real data raises
here, naming the op. On a GPU the same call would make a CPU tensor beside CUDA data: an error,
or a silent copy every step. Zero-dimensional CPU tensors are let through, as CUDA lets them."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


class _SameDevice(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        devices = {t.device.type for t in tree_flatten((args, kwargs))[0]
                   if isinstance(t, torch.Tensor) and not (t.dim() == 0 and t.device.type == "cpu")}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes tensors on {sorted(devices)}: "
                                 "a tensor was made without the data's device")
        return func(*args, **kwargs)


@contextlib.contextmanager
def data_device_only() -> Iterator[None]:
    with torch.device("meta"), _SameDevice():
        yield
