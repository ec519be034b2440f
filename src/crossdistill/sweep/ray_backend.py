"""Sweeps on a cluster: each config runs as a Ray task; the driver alone writes the database.

`crossdistill sweep CONFIG --backend ray` starts a local Ray (as many CPUs as `--workers` ×
`--task-threads`) or joins an existing cluster (`--address`). Tasks get `--task-threads` CPUs and
`--task-gpus` GPUs each; a task returns its row's outcome (metrics, or the failure as data), and
the driver records each row the moment its task finishes, exactly as the sequential loop does.
So a killed driver loses only the runs still in flight, and running the same command again runs
those and nothing else (none twice). Ray is an optional extra: `pip install 'crossdistill[ray]'`.
"""
from __future__ import annotations

import os
import signal
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError, first_line

RAY_VERSION = "2.52.1"  # pinned in pyproject.toml's `ray` extra

Todo = Sequence[tuple[int, CompressConfig, str]]
Record = Callable[[int, CompressConfig, str, dict[str, Any]], None]


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise CrossDistillError(f"--backend ray needs Ray: pip install 'crossdistill[ray]' (ray=={RAY_VERSION})") from None
    return ray


_CONTEXT: Any = None  # one per worker process: data, teachers and their evaluations reused across tasks


def _run_task(config: dict[str, Any], threads: int) -> dict[str, Any]:
    """In a Ray worker: one run, its row's outcome columns."""
    global _CONTEXT
    import torch

    from crossdistill.sweep.cache import RunContext
    from crossdistill.sweep.runner import run_one

    torch.set_num_threads(threads)
    if _CONTEXT is None:
        _CONTEXT = RunContext(None)
    cfg = CompressConfig.from_dict(config)
    return {**run_one(cfg, _CONTEXT), "host": os.uname().nodename}


def _signal_handlers() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    sigs = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    return {sig: signal.getsignal(sig) for sig in sigs if signal.getsignal(sig) is not None}


@dataclass
class RayBackend:
    address: str | None = None
    workers: int = 2
    task_threads: int = 1
    task_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.task_threads < 1 or self.task_gpus < 0:
            raise CrossDistillError("--workers and --task-threads must be at least 1, --task-gpus at least 0")

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else f"a local Ray of {self.workers} workers"
        gpus = f", {self.task_gpus:g} GPU" if self.task_gpus else ""
        return f"{where} ({self.task_threads} thread{'s' if self.task_threads != 1 else ''}{gpus} per run)"

    def run(self, todo: Todo, record: Record) -> None:
        if not todo:
            return
        ray = ray_module()
        started_here = not ray.is_initialized()
        if started_here:
            kept = _signal_handlers()
            with warnings.catch_warnings():
                # Ray's notice about a future change of its GPU-visibility default: not ours to act on.
                warnings.simplefilter("ignore", FutureWarning)
                if self.address:
                    try:
                        ray.init(address=self.address, log_to_driver=False)
                    except (ConnectionError, RuntimeError, ValueError) as exc:
                        # Ray's own is a long traceback after its retries; the runs are still to do.
                        raise CrossDistillError(f"cannot reach the Ray cluster at {self.address} "
                                                f"({first_line(exc)[:200]}): "
                                                "is it running (`ray status` on its head), and is the address its "
                                                "GCS address (host:6379)? No run was started; the runs recorded so "
                                                "far stay in the database") from None
                else:
                    # "local": a Ray of its own, also where RAY_ADDRESS or a stale address file names another.
                    ray.init(address="local", num_cpus=self.workers * self.task_threads,
                             num_gpus=None if self.task_gpus else 0,
                             include_dashboard=False, log_to_driver=False)
            # Ray installs its own SIGTERM handler, which aborts the driver (exit 134, a C++ stack);
            # ours leaves through the normal exit path, which stops the tasks and the local Ray.
            for sig, handler in kept.items():
                signal.signal(sig, handler)
        task = ray.remote(_run_task).options(num_cpus=self.task_threads, num_gpus=self.task_gpus, max_retries=0)
        pending = {task.remote(cfg.to_dict(), cfg.threads or self.task_threads): (i, cfg, h) for i, cfg, h in todo}
        try:
            while pending:
                # A bounded wait: an interrupt (Ctrl-C) is only delivered between waits.
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                if not done:
                    continue
                i, cfg, h = pending.pop(done[0])
                try:
                    outcome = ray.get(done[0])
                except Exception as exc:  # the task itself died (worker lost): a failed run, recorded
                    outcome = {"status": "failed", "error": f"Ray task failed: {type(exc).__name__}: {exc}",
                               "traceback": None, "run_seconds": 0.0, "started_at": None, "finished_at": None}
                record(i, cfg, h, outcome)
        finally:
            if started_here:
                ray.shutdown()  # stops the local Ray and with it any task still running
            else:
                for ref in pending:  # on a cluster we joined, ask for the rest to be dropped
                    ray.cancel(ref)
