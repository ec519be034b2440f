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
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot_bench import (ROWS, cached_teacher, compressed, example, mean_spread, parser, top1,  # noqa: E402
                           with_threads)


def signal_net(width: int) -> torch.nn.Module:
    return example("signal_net", "signal_net", 1, 10, width)


def as_signals(x) -> torch.Tensor:
    """uint8 N×28×28×1 images -> float N×1×784 signals, normalised by Fashion-MNIST's mean/std."""
    t = torch.from_numpy(x).float().div(255.0).reshape(len(x), 1, -1)
    return (t - 0.2860) / 0.3530


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, width=32, epochs=4, unit="signals").parse_args(argv)
    return with_threads(args.threads, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from crossdistill.data import load_image_data
    from crossdistill.paths import cache_dir


    train_data, test_data = load_image_data(args.data, "train"), load_image_data(args.data, "test")
    n_train = args.train_limit or len(train_data)
    x, y = as_signals(train_data.x[:n_train]), torch.as_tensor(train_data.y[:n_train]).long()
    xt, yt = as_signals(test_data.x[: args.test]), torch.as_tensor(test_data.y[: args.test]).long()
    path = args.teacher or cache_dir() / "teachers" / f"signal_net_w{args.width}_fmnist_{n_train}_e{args.epochs}.pt"
    teacher = cached_teacher(signal_net(args.width), path, x, y, args.epochs)
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
                student, seconds = compressed(teacher, x, y, k, seed, ROWS[label])
                size = sum(q.numel() for q in student.parameters())
                scores.append(top1(student, xt, yt))
            cells.append(mean_spread(scores))
        print(f"| {label} | " + " | ".join(cells) + f" | {size:,} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
