"""A Conv1d model compressed from K signals per class: examples/signal_net.py trained on
Fashion-MNIST read as 1×784 signals (each image's rows one after another), then channel pruning,
sparsity and quantization by crossdistill.compress. Prints a table; no pass/fail.

    python benchmarks/conv1d_signals.py                       # the figures of docs/results/any_model.md
    python benchmarks/conv1d_signals.py --train-limit 600 --test 200 --epochs 1 --width 8 --seeds 0

The teacher is trained once (seed 0, Adam with a cosine schedule, batch 128, the whole train
split unless --train-limit) and kept in the crossdistill cache (`--teacher` to choose the file).
Each row: top-1 on the first --test signals of the test split (default all 10,000), mean ± sample
std over the seeds (each seed draws other K signals per class from the train split), and the
seconds of one compress call (K=5, one process, --threads threads).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FMNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist; else the name is downloaded


def signal_net(width: int) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("example_signal_net", EXAMPLES / "signal_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    torch.manual_seed(0)
    return module.signal_net(1, 10, width)


def as_signals(x) -> torch.Tensor:
    """uint8 N×28×28×1 images -> float N×1×784 signals, normalised by Fashion-MNIST's mean/std."""
    t = torch.from_numpy(x).float().div(255.0).reshape(len(x), 1, -1)
    return (t - 0.2860) / 0.3530


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
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
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
        print(f"  teacher epoch {epoch + 1}/{epochs} done", flush=True)
    model.eval()


def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        hits = sum(int((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum()) for i in range(0, len(x), 500))
    return 100.0 * hits / len(x)


ROWS = {
    "channels keep 0.5 (closed form)": {"keep": 0.5},
    "channels keep 0.5, prune-only": {"keep": 0.5, "solver": "prune-only"},
    "channels FLOPs 0.5, global budget": {"flops": 0.5, "budget": "global"},
    "sparsity 0.8": {"method": "sparsity", "sparsity": 0.8},
    "sparsity 0.8, magnitude": {"method": "sparsity", "sparsity": 0.8, "solver": "magnitude"},
    "quant 3 bits": {"method": "quant", "bits": 3},
    "quant 3 bits, round to nearest": {"method": "quant", "bits": 3, "solver": "rtn"},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=FMNIST if Path(FMNIST).is_dir() else "fashion-mnist")
    p.add_argument("--teacher", type=Path, default=None, help="teacher state dict (trained and saved when missing)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N signals only")
    p.add_argument("--test", type=int, default=10000, help="score on the first N test signals")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="ROW")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous)  # a caller's (a test's) setting comes back


def _run(args: argparse.Namespace) -> int:
    import crossdistill
    from crossdistill.compression.coverage import CompressionWarning
    from crossdistill.data import load_image_data
    from crossdistill.paths import cache_dir


    train_data, test_data = load_image_data(args.data, "train"), load_image_data(args.data, "test")
    n_train = args.train_limit or len(train_data)
    x, y = as_signals(train_data.x[:n_train]), torch.as_tensor(train_data.y[:n_train]).long()
    xt, yt = as_signals(test_data.x[: args.test]), torch.as_tensor(test_data.y[: args.test]).long()
    teacher = signal_net(args.width)
    path = args.teacher or cache_dir() / "teachers" / f"signal_net_w{args.width}_fmnist_{n_train}_e{args.epochs}.pt"
    if path.is_file():
        teacher.load_state_dict(torch.load(path, weights_only=True))
        teacher.eval()
    else:
        start = time.perf_counter()
        train(teacher, x, y, args.epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        torch.save(teacher.state_dict(), tmp)
        tmp.replace(path)  # never a half-written teacher under the final name
        print(f"  trained in {time.perf_counter() - start:.0f} s, saved to {path}")
    params = sum(q.numel() for q in teacher.parameters())
    print(f"signal_net width {args.width} ({params:,} parameters) on {n_train} Fashion-MNIST train signals "
          f"(1×784), {args.epochs} epochs; teacher top-1 {top1(teacher, xt, yt):.2f} % on {len(xt)} test signals; "
          f"seeds {args.seeds}, mean ± sample std; {args.threads} threads")
    print("| method | " + " | ".join(f"K={k} top-1 %" for k in args.shots) + " | parameters | seconds (K=" +
          f"{args.shots[-1]}) |")
    print("|---|" + "---|" * len(args.shots) + "---|---|")
    for label in args.rows:
        cells, seconds, size = [], 0.0, 0
        for k in args.shots:
            scores = []
            for seed in args.seeds:
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CompressionWarning)
                    student, _ = crossdistill.compress(teacher, x, labels=y, shots=k, seed=seed,
                                                       show_progress=False, **ROWS[label])
                seconds = time.perf_counter() - start
                size = sum(q.numel() for q in student.parameters())
                scores.append(top1(student, xt, yt))
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            cells.append(f"{statistics.mean(scores):.2f} ± {spread:.2f}")
        print(f"| {label} | " + " | ".join(cells) + f" | {size:,} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
