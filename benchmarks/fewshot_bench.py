"""What the few-shot benchmarks on a model of one's own share: the example model loaded from
examples/, a small teacher trained once and cached, the command-line options, the thread count,
and the rows of methods compared (each row: keyword settings of crossdistill.compress)."""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FMNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist; else the name is downloaded

ROWS = {
    "channels keep 0.5 (closed form)": {"keep": 0.5},
    "channels keep 0.5, prune-only": {"keep": 0.5, "solver": "prune-only"},
    "channels FLOPs 0.5, global budget": {"flops": 0.5, "budget": "global"},
    "sparsity 0.8": {"method": "sparsity", "sparsity": 0.8},
    "sparsity 0.8, magnitude": {"method": "sparsity", "sparsity": 0.8, "solver": "magnitude"},
    "quant 3 bits": {"method": "quant", "bits": 3},
    "quant 3 bits, round to nearest": {"method": "quant", "bits": 3, "solver": "rtn"},
}
# Rows run only when named with --rows (the committed tables' default rows stay as they are).
EXTRA_ROWS = {
    "channels parameters 0.5, global budget": {"parameters": 0.5, "budget": "global"},
    "channels parameters 0.5, global budget, relative cost": {"parameters": 0.5, "budget": "global",
                                                              "budget_cost": "relative"},
    "channels FLOPs 0.5, global budget, relative cost": {"flops": 0.5, "budget": "global", "budget_cost": "relative"},
}
ROWS.update(EXTRA_ROWS)


def example(file: str, factory: str, *args: Any) -> torch.nn.Module:
    """`examples/<file>.py`'s `factory(*args)`, built after seeding (the same teacher each time)."""
    spec = importlib.util.spec_from_file_location(f"example_{file}", EXAMPLES / f"{file}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    torch.manual_seed(0)
    return getattr(module, factory)(*args)


def parser(doc: str, *, width: int, epochs: int, unit: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--data", default=FMNIST if Path(FMNIST).is_dir() else "fashion-mnist")
    p.add_argument("--teacher", type=Path, default=None, help="teacher state dict (trained and saved when missing)")
    p.add_argument("--width", type=int, default=width)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--train-limit", type=int, default=None, help=f"train on the first N {unit} only")
    p.add_argument("--test", type=int, default=10000, help=f"score on the first N test {unit}")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=[r for r in ROWS if r not in EXTRA_ROWS], choices=list(ROWS),
                   metavar="ROW")
    p.add_argument("--threads", type=int, default=2)
    return p


def with_threads(threads: int, run: Callable[[], int]) -> int:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)  # a caller's (a test's) setting comes back


def train(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, epochs: int) -> None:
    """Adam with a one-cycle schedule, batch 128, cross-entropy (per sample, or per position for
    label maps), seed 0."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), targets[idx]).backward()
            opt.step()
            sched.step()
        print(f"  teacher epoch {epoch + 1}/{epochs} done", flush=True)
    model.eval()


def cached_teacher(model: torch.nn.Module, path: Path, x: torch.Tensor, targets: torch.Tensor,
                   epochs: int) -> torch.nn.Module:
    """`model` with the state dict at `path`, trained and saved there first when missing."""
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    start = time.perf_counter()
    train(model, x, targets, epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # never a half-written teacher under the final name
    print(f"  trained in {time.perf_counter() - start:.0f} s, saved to {path}")
    return model


def compressed(teacher: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, seed: int,
               settings: dict[str, Any]) -> tuple[torch.nn.Module, float]:
    """The student of one row's settings from K samples per class (seed `seed`) and the seconds
    the compress call took; warnings about layers left whole are not printed."""
    import crossdistill
    from crossdistill.compression.coverage import CompressionWarning

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        student, _ = crossdistill.compress(teacher, x, labels=y, shots=k, seed=seed, show_progress=False, **settings)
    return student, time.perf_counter() - start


def mean_spread(values: list[float]) -> str:
    """'mean ± sample std' (± 0.00 for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 % of a classifier on (x, y), 500 samples a batch."""
    with torch.inference_mode():
        hits = sum(int((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum()) for i in range(0, len(x), 500))
    return 100.0 * hits / len(x)
