"""A recurrent classifier compressed from K images per class: examples/row_rnn.py (an nn.LSTM or
nn.GRU reading Fashion-MNIST images row by row) trained once, then sparsity and quantization by
crossdistill.compress, each against its data-free counterpart (magnitude pruning, rounding to
nearest). Prints a table; no pass/fail.

    python benchmarks/recurrent_fashion.py                        # the figures of docs/results/any_model.md
    python benchmarks/recurrent_fashion.py --kind gru
    python benchmarks/recurrent_fashion.py --train-limit 600 --test 200 --epochs 1 --width 32 --seeds 0

The network: 28 steps of 28 pixels, a Linear embedding to --width, a --layers-layer LSTM or GRU of
--width units, a Linear head on the last step. The teacher is trained once (seed 0, Adam with a
one-cycle schedule, batch 128, the whole train split unless --train-limit) and kept in the
crossdistill cache (`--teacher` to choose the file). Each row: top-1 on the first --test images of
the test split (default all 10,000), mean ± sample std over the seeds (each seed draws other K
images per class from the train split), the student's nonzero parameters, and the seconds of one
compress call (the last K, one process, --threads threads).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot_bench import ROWS, cached_teacher, compressed, example, mean_spread, parser, top1, with_threads  # noqa: E402
from vit_fashion import as_images  # noqa: E402

# Channel pruning is left out: the recurrent layer's channels, and the embedding's that feed it, stay whole.
RNN_ROWS = {label: settings for label, settings in ROWS.items() if settings.get("method") in ("sparsity", "quant")}
RNN_ROWS.update({"sparsity 0.5": {"method": "sparsity", "sparsity": 0.5},
                 "sparsity 0.5, magnitude": {"method": "sparsity", "sparsity": 0.5, "solver": "magnitude"},
                 "quant 4 bits": {"method": "quant", "bits": 4},
                 "quant 4 bits, round to nearest": {"method": "quant", "bits": 4, "solver": "rtn"},
                 "quant 2 bits": {"method": "quant", "bits": 2},
                 "quant 2 bits, round to nearest": {"method": "quant", "bits": 2, "solver": "rtn"}})
DEFAULT_ROWS = ["sparsity 0.5", "sparsity 0.5, magnitude", "sparsity 0.8", "sparsity 0.8, magnitude",
                "quant 4 bits", "quant 4 bits, round to nearest", "quant 3 bits", "quant 3 bits, round to nearest",
                "quant 2 bits", "quant 2 bits, round to nearest"]


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__, width=128, epochs=6, unit="images")
    p.add_argument("--kind", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--layers", type=int, default=2)
    p.set_defaults(rows=DEFAULT_ROWS)
    for action in p._actions:
        if action.dest == "rows":
            action.choices = list(RNN_ROWS)
    return p


def nonzero(model: torch.nn.Module) -> int:
    return sum(int((q != 0).sum()) for q in model.parameters())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return with_threads(args.threads, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from crossdistill.data import load_image_data
    from crossdistill.paths import cache_dir

    train_data, test_data = load_image_data(args.data, "train"), load_image_data(args.data, "test")
    n_train = args.train_limit or len(train_data)
    x, y = as_images(train_data.x[:n_train]), torch.as_tensor(train_data.y[:n_train]).long()
    xt, yt = as_images(test_data.x[: args.test]), torch.as_tensor(test_data.y[: args.test]).long()
    model = example("row_rnn", "row_rnn", args.kind, 28, args.width, args.layers, 10)
    name = f"row_{args.kind}_w{args.width}_l{args.layers}_fmnist_{n_train}_e{args.epochs}.pt"
    teacher = cached_teacher(model, args.teacher or cache_dir() / "teachers" / name, x, y, args.epochs)
    print(f"{args.kind.upper()} row reader, width {args.width}, {args.layers} layers ({nonzero(teacher):,} parameters) "
          f"on {n_train} Fashion-MNIST train images, {args.epochs} epochs; teacher top-1 {top1(teacher, xt, yt):.2f} % "
          f"on {len(xt)} test images; seeds {args.seeds}, mean ± sample std; {args.threads} threads")
    print("| method | " + " | ".join(f"K={k} top-1 %" for k in args.shots) + " | nonzero parameters | seconds (K=" +
          f"{args.shots[-1]}) |")
    print("|---|" + "---|" * len(args.shots) + "---|---|")
    for label in args.rows:
        cells, seconds, size = [], 0.0, 0
        for k in args.shots:
            scores = []
            for seed in args.seeds:
                student, seconds = compressed(teacher, x, y, k, seed, RNN_ROWS[label])
                size = nonzero(student)
                scores.append(top1(student, xt, yt))
            cells.append(mean_spread(scores))
        print(f"| {label} | " + " | ".join(cells) + f" | {size:,} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
