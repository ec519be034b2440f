"""CPU seconds of the layer solvers on synthetic layers of growing width, and of one whole
ResNet-56 compression (issue 16, item 2). Prints a table; no pass/fail: the figures go into
docs/results/speed.md with the machine's load.

    python benchmarks/solver_speed.py                 # d = 576 … 4608 (a few minutes)
    python benchmarks/solver_speed.py --widths 144 288 --no-resnet   # seconds (the test runs this)

A layer of width d has d/9 input channels of a 3×3 conv and as many output rows; the sparsity
solve is also timed with 12 rows (a DenseNet-40 layer). H is a damped Gram of 2d random rows.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import torch

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers import create_solver
from crossdistill.solvers.base import LayerTask
from crossdistill.solvers.sparse_obs import OBC_AUTO_LIMIT


def problem(d: int, out: int, seed: int = 0) -> QuadraticProblem:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(2 * d, d, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3.0, d, dtype=torch.float64)
    H = X.T @ X / X.shape[0]
    H += 0.02 * H.diagonal().mean() * torch.eye(d, dtype=torch.float64)
    W = torch.randn(out, d, generator=gen, dtype=torch.float64)
    return QuadraticProblem(H=H, B=0.9 * W @ H, c=0.0, w_teacher=W)


def cpu_seconds(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def layer_rows(widths: list[int]) -> list[tuple[str, list[float | None]]]:
    rows: dict[str, list[float | None]] = {}
    for d in widths:
        c = d // 9
        p, p12 = problem(d, c), problem(d, 12, seed=1)
        channel = LayerTask(name="x", group=9, keep=c // 2)
        sparse = LayerTask(name="x", params={"sparsity": 0.7, "sparsity_pattern": "layer"})
        quant = LayerTask(name="x", params={"bits": 4, "scheme": "asymmetric"})
        cases = {
            "channels: greedy OBS keep 0.5 + re-solve": (create_solver("channels", "closed-form"), p, channel),
            "sparsity 70 %: OBC mask + row solves, c rows": (create_solver("sparsity", "closed-form", sparse_mask="obc"), p, sparse),
            "sparsity 70 %: OBC mask + row solves, 12 rows": (create_solver("sparsity", "closed-form", sparse_mask="obc"), p12, sparse),
            "sparsity 70 %: SparseGPT mask + row solves, c rows": (create_solver("sparsity", "closed-form", sparse_mask="sparsegpt"), p, sparse),
            "4-bit GPTQ, c rows": (create_solver("quant", "gptq"), p, quant),
        }
        for label, (solver, prob, task) in cases.items():
            if "OBC" in label and prob.B.shape[0] * float(d) ** 3 > 8 * OBC_AUTO_LIMIT:
                rows.setdefault(label, []).append(None)  # hours; `auto` takes the SparseGPT mask there
                continue
            rows.setdefault(label, []).append(cpu_seconds(lambda: solver.solve(prob.damped(0.0), task, None)))
    return list(rows.items())


def resnet56_seconds(shots: int) -> float | None:
    data_root = os.environ.get("CROSSDISTILL_DATA")
    if not data_root:
        return None
    from crossdistill.config import CompressConfig
    from crossdistill.data import load_image_data
    from crossdistill.pipeline import compress, draw_few_shot, load_teacher

    cfg = CompressConfig(model="resnet56", weights=f"{data_root}/weights/resnet56-4bfd9763.th",
                         data=f"{data_root}/cifar10/cifar10_train.npz", shots=shots, seed=0, keep=0.5)
    teacher = load_teacher(cfg)
    few = draw_few_shot(cfg, load_image_data(cfg.data, "train"))
    compress(teacher, few, cfg, show_progress=False)  # warm-up: first calls allocate
    return min(cpu_seconds(lambda: compress(teacher, few, cfg, show_progress=False)) for _ in range(3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[576, 1152, 2304, 4608])
    parser.add_argument("--no-resnet", action="store_true", help="skip the ResNet-56 run (needs CROSSDISTILL_DATA)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"CPU seconds at one thread; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| solver | " + " | ".join(f"d = {d}" for d in args.widths) + " |")
    print("|---|" + "---:|" * len(args.widths))
    for label, secs in layer_rows(args.widths):
        print(f"| {label} | " + " | ".join("–" if s is None else f"{s:.2f}" for s in secs) + " |")
    if not args.no_resnet:
        for shots in (1, 5):
            s = resnet56_seconds(shots)
            print(f"ResNet-56 keep 0.5, K={shots}, whole compression (best of 3): "
                  + ("skipped (set CROSSDISTILL_DATA)" if s is None else f"{s:.2f} CPU-s"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
