"""A small Vision Transformer compressed from K images per class: examples/vit.py (torch's
nn.TransformerEncoderLayer blocks) trained on Fashion-MNIST, then channel pruning with and without
its attention heads, sparsity and quantization by crossdistill.compress. Prints a table; no
pass/fail.

    python benchmarks/vit_fashion.py                              # the figures of docs/results/any_model.md
    python benchmarks/vit_fashion.py --train-limit 600 --test 200 --epochs 1 --width 32 --seeds 0
    python benchmarks/vit_fashion.py --attention hand      # the same teacher, attention written by hand

The ViT: 28×28 grayscale images cut into 4×4 patches (49 tokens), --width wide, --depth pre-norm
blocks of --heads heads, GELU MLP of twice the width, mean pooling, a linear head. The teacher is
trained once (seed 0, Adam with a one-cycle schedule, batch 128, the whole train split unless
--train-limit) and kept in the crossdistill cache (`--teacher` to choose the file). Each row:
top-1 on the first --test images of the test split (default all 10,000), mean ± sample std over
the seeds (each seed draws other K images per class from the train split), the student's
parameters and MFLOPs, and the seconds of one compress call (the last K, one process, --threads
threads).

`--attention hand` compresses the same teacher rebuilt with timm-style attention written by hand
(examples/vit.py's `Attention`: one qkv Linear reshaped into heads), its weights converted from
the trained torch-attention ViT; the two compute the same function.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot_bench import (ROWS, cached_teacher, compressed, example, mean_spread, parser, top1,  # noqa: E402
                           with_threads)

# The same settings with every attention's heads left whole: what channel pruning did before
# heads could be pruned, at the same keep ratio or FLOPs target.
HEADS_WHOLE = {f"{label}, heads whole": {**settings, "prune_heads": False}
               for label, settings in ROWS.items() if "keep" in settings or "flops" in settings}
# 0.6 of the FLOPs is within reach with the heads whole (0.5 is not: the attentions hold too much).
AT_60 = {"channels FLOPs 0.6": {"flops": 0.6}, "channels FLOPs 0.6, heads whole": {"flops": 0.6, "prune_heads": False},
         "channels FLOPs 0.6, global budget": {"flops": 0.6, "budget": "global"},
         "channels FLOPs 0.6, global budget, heads whole": {"flops": 0.6, "budget": "global", "prune_heads": False}}
VIT_ROWS = {**ROWS, **HEADS_WHOLE, **AT_60}
DEFAULT_ROWS = ["channels keep 0.5 (closed form)", "channels keep 0.5 (closed form), heads whole",
                "channels keep 0.5, prune-only", *AT_60, "channels FLOPs 0.5, global budget",
                "sparsity 0.8", "quant 3 bits"]


def vit(width: int, depth: int, heads: int, hand: bool = False) -> torch.nn.Module:
    # (num_classes, image, patch, dim, depth, heads, mlp, channels, hand)
    return example("vit", "ViT", 10, 28, 4, width, depth, heads, 2, 1, hand)


def as_images(x) -> torch.Tensor:
    """uint8 N×28×28×1 images -> float N×1×28×28, normalised by Fashion-MNIST's mean/std."""
    t = torch.from_numpy(x).float().div(255.0).reshape(len(x), 1, 28, 28)
    return (t - 0.2860) / 0.3530


def mflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    from crossdistill.flop_counter import counting_flops

    with torch.inference_mode(), counting_flops() as counter:
        model(x[:1])
    return counter.get_total_flops() / 1e6


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__, width=96, epochs=6, unit="images")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--attention", choices=["torch", "hand"], default="torch",
                   help="compress the teacher as trained (torch's attention) or rebuilt with attention written by hand")
    p.set_defaults(rows=DEFAULT_ROWS)
    for action in p._actions:
        if action.dest == "rows":
            action.choices = list(VIT_ROWS)
    return p


def teacher_for(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    from crossdistill.paths import cache_dir

    name = f"vit_w{args.width}_d{args.depth}_h{args.heads}_fmnist_{len(x)}_e{args.epochs}.pt"
    trained = cached_teacher(vit(args.width, args.depth, args.heads), args.teacher or cache_dir() / "teachers" / name,
                             x, y, args.epochs)
    if args.attention == "torch":
        return trained
    hand = vit(args.width, args.depth, args.heads, hand=True)
    hand.load_state_dict(example("vit", "hand_state", trained.state_dict()))
    return hand.eval()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return with_threads(args.threads, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from crossdistill.data import load_image_data
    from crossdistill.errors import CrossDistillError

    train_data, test_data = load_image_data(args.data, "train"), load_image_data(args.data, "test")
    n_train = args.train_limit or len(train_data)
    x, y = as_images(train_data.x[:n_train]), torch.as_tensor(train_data.y[:n_train]).long()
    xt, yt = as_images(test_data.x[: args.test]), torch.as_tensor(test_data.y[: args.test]).long()
    teacher = teacher_for(args, x, y)
    params = sum(q.numel() for q in teacher.parameters())
    print(f"ViT width {args.width}, depth {args.depth}, {args.heads} heads, {args.attention} attention "
          f"({params:,} parameters, "
          f"{mflops(teacher, xt):.2f} MFLOPs) on {n_train} Fashion-MNIST train images, {args.epochs} epochs; "
          f"teacher top-1 {top1(teacher, xt, yt):.2f} % on {len(xt)} test images; seeds {args.seeds}, "
          f"mean ± sample std; {args.threads} threads")
    print("| method | " + " | ".join(f"K={k} top-1 %" for k in args.shots) + " | parameters | MFLOPs | seconds (K=" +
          f"{args.shots[-1]}) |")
    print("|---|" + "---|" * len(args.shots) + "---|---|---|")
    for label in args.rows:
        cells, seconds, size, cost = [], 0.0, 0, 0.0
        try:
            for k in args.shots:
                scores = []
                for seed in args.seeds:
                    student, seconds = compressed(teacher, x, y, k, seed, VIT_ROWS[label])
                    size = sum(q.numel() for q in student.parameters())
                    cost = mflops(student, xt)
                    scores.append(top1(student, xt, yt))
                cells.append(mean_spread(scores))
        except CrossDistillError as exc:  # a target out of reach is a finding, not a crash
            print(f"| {label} | {exc} |", flush=True)
            continue
        print(f"| {label} | " + " | ".join(cells) + f" | {size:,} | {cost:.2f} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
