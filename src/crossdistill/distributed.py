"""Statistics over several processes with torch.distributed (launched by torchrun, or a process
group the caller initialised): each rank captures its shard of the few-shot images, everything
summed over samples (the layer moments, the later readers' moments, a global budget's costs) is
all-reduced, rank 0 runs each solve and broadcasts its result, and only rank 0 evaluates and
writes. With one process (no group) every function here is the identity.

A rank that fails does not leave the others waiting in a collective: the failure is exchanged
at the next synchronisation point (`agree`, or the solve's broadcast) and every rank raises the
same error naming the rank and its message.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import torch
import torch.distributed as dist

from crossdistill.errors import CrossDistillError

T = TypeVar("T")


class PeerFailed(CrossDistillError):
    """Another rank of the process group failed; this one stops too."""


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "cpu", timeout_s: float = 1800.0) -> bool:
    """Join the process group that torchrun describes in the environment; False when not
    launched that way or already initialised. The group is gloo's whatever `device` is: the
    collectives carry a few moment matrices per layer and some small objects, which CPU copies
    serve (`sum_`), and one backend means one code path for objects, barriers and sums."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return False
    dist.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return True


def rank_device(device: torch.device) -> torch.device:
    """A CUDA device named without an index means this process's own GPU under torchrun
    (LOCAL_RANK, wrapping around when there are fewer GPUs than processes); anything else as is."""
    if device.type != "cuda" or device.index is not None or not active():
        return device
    local = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else rank()
    return torch.device("cuda", local % max(torch.cuda.device_count(), 1))


def shard(images: torch.Tensor, align: int = 1) -> torch.Tensor:
    """This rank's contiguous share of the images (all of them with one process). Boundaries
    fall on multiples of `align` when there are enough images: the moments' float32 products
    are taken over chunks of that many images, so aligned shards give the very chunks of a
    single process and the sums differ only in float64 rounding."""
    n, w = images.shape[0], world_size()
    if w == 1:
        return images
    if n < w:
        raise CrossDistillError(f"{n} few-shot images cannot be shared by {w} processes: use fewer processes")
    units = -(-n // align) if align > 1 else n
    if units < w:
        units, align = n, 1
    r = rank()
    return images[min(n, (r * units // w) * align) : min(n, ((r + 1) * units // w) * align)]


def sum_(t: torch.Tensor) -> torch.Tensor:
    """In place: the sum of `t` over the ranks (through a CPU copy for a GPU tensor: gloo)."""
    if active():
        if t.device.type == "cpu":
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        else:
            host = t.cpu()
            dist.all_reduce(host, op=dist.ReduceOp.SUM)
            t.copy_(host)
    return t


def sum_number(x: float) -> float:
    if not active():
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device="cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def agree(error: BaseException | None = None) -> None:
    """A synchronisation point: every rank says whether it failed; if any did, all raise."""
    if not active():
        if error is not None:
            raise error
        return
    mine = ("ok", None) if error is None else ("error", f"{type(error).__name__}: {error}")
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, mine)
    _stop_if_failed(error, everyone)


def _stop_if_failed(own: BaseException | None, everyone: list[Any]) -> None:
    """Stop when any rank's message is a failure. A rank that failed meets the others with
    `agree` wherever they are: at another gathering point (check_same) its message is its
    failure, not a value, and must be read as such (read as a different teacher, the two ranks
    left for different meeting points and waited there for each other until the group's timeout)."""
    failed = [(r, m[1]) for r, m in enumerate(everyone) if isinstance(m, tuple) and len(m) == 2 and m[0] == "error"]
    if failed:
        _stop(own, "; ".join(f"rank {r}: {m}" for r, m in failed))


def _stop(own: BaseException | None, peers: str) -> NoReturn:
    """Raise this rank's own failure, or else one naming the ranks that failed; either way
    marked as known to every rank (`told`)."""
    failure = own if own is not None else PeerFailed(f"the run failed on another process ({peers})")
    _mark(failure)
    raise failure


def told(exc: BaseException) -> bool:
    """Whether the other ranks already know of this failure (it went through `agree` or `on_main`)."""
    return bool(getattr(exc, "_crossdistill_told", False))


def _mark(exc: BaseException) -> None:
    try:
        exc._crossdistill_told = True  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass


@contextmanager
def together() -> Iterator[None]:
    """Run a block on every rank, then `agree`: a failure inside it stops every rank."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - handed to the other ranks, then raised
        _mark(exc)
        agree(exc)
        raise
    agree(None)


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0, its result (or its failure) broadcast to every rank."""
    if not active():
        return fn()
    box: list[Any] = [None]
    failure: Exception | None = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - told to the other ranks, then raised here
            failure = exc
            box[0] = ("error", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(box, src=0)
    status, payload = box[0]
    if status == "ok":
        return payload
    _stop(failure, f"rank 0: {payload}")


def farewell(timeout_s: float = 60.0) -> None:
    """After a failure every rank knows of: wait until all have said so before any exits (a
    launcher stops the rest as soon as one process ends). A peer already gone is not waited for."""
    if not active():
        return
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
    except Exception:  # noqa: BLE001 - a peer that already left
        pass


def shutdown(initialised_here: bool) -> None:
    """Leave the process group together; one that this process initialised is destroyed (a
    gloo group left to the interpreter's exit can abort the process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    farewell()
    if initialised_here:
        dist.destroy_process_group()


def check_same(what: str, value: Any) -> None:
    """Every rank must hold the same `value` (a digest of the teacher, the few-shot draw): a
    difference would make the summed statistics meaningless, so it is an error naming the ranks."""
    if not active():
        return
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, ("value", value))
    _stop_if_failed(None, everyone)
    differ = [r for r, v in enumerate(everyone) if v != everyone[0]]
    if differ:
        raise CrossDistillError(f"the processes hold different {what} (rank 0 vs rank {differ[0]}); every rank must "
                                "load the same weights and draw the same images (a model without --weights is "
                                "initialised at random in each process)")
