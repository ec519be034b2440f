"""Name → class registries shared by objectives, solvers and compression methods."""
from __future__ import annotations

import inspect
from typing import Any, Mapping, TypeVar

from crossdistill.errors import CrossDistillError

T = TypeVar("T")


def build(registry: Mapping[str, type[T]], name: str, kind: str, kwargs: Mapping[str, Any]) -> T:
    """Instantiate `registry[name]` with the keyword arguments its constructor takes.

    Arguments it does not take are ignored, so one config can carry the settings of every
    objective or solver (mu, alpha, beta, iters, ...) and each picks its own.
    """
    try:
        cls = registry[name]
    except KeyError:
        raise CrossDistillError(f"unknown {kind} {name!r}; choose from {sorted(registry)}") from None
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})
