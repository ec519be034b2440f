"""Closed form vs the paper's Adam solver on the same loss, and the slimmed model's CPU speed.

The paper's ResNet-56 preset (`--keep paper`), the first K images of each class (the official
code's draw), mixed loss μ = 0.9. For each K: the closed form with greedy-OBS and with L1
selection, and the paper solver (Adam, annealed group threshold, 3000 iterations a layer).
Prints and writes docs/results/solver_comparison.md. Usage:

    OMP_NUM_THREADS=1 python benchmarks/solver_comparison.py [--shots 1 5] [--iters 3000]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from crossdistill.config import CompressConfig
from crossdistill.data import load_image_data
from crossdistill.evaluation import accuracy, count_flops, count_params, measure_latency
from crossdistill.models import model_info
from crossdistill.paths import shared_data_dir
from crossdistill.pipeline import compress, draw_few_shot, load_teacher

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/solver_comparison.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = shared_data_dir()
    base = dict(model="resnet56", weights=str(d / "weights/resnet56-4bfd9763.th"), data="shared",
                keep="paper", sampler="first", seed=0, objective="mixed", mu=0.9, iters=args.iters)
    train = load_image_data(d / "cifar10/cifar10_train.npz")
    test = load_image_data(d / "cifar10/cifar10_test1000.npz")
    info = model_info("resnet56")
    teacher = load_teacher(CompressConfig(**base))
    t_acc = accuracy(teacher, test.x, test.y, info.mean, info.std)
    rows = []
    student = None
    variants = [("closed-form", "obs"), ("closed-form", "l1"), ("paper", "-")]
    for k in args.shots:
        for solver, selection in variants:
            cfg = CompressConfig(**base, shots=k, solver=solver, selection=selection if selection != "-" else "obs").validate()
            fs = draw_few_shot(cfg, train)
            res = compress(teacher, fs, cfg, show_progress=False)
            acc = accuracy(res.student, test.x, test.y, info.mean, info.std)
            loss = sum(r.loss_after for r in res.records)
            rows.append((k, res.solver, acc, loss, res.seconds))
            print(f"K={k:2d} {res.solver:38s} top-1 {acc:5.1f} %  sum of layer losses {loss:9.4f}  {res.seconds:7.1f} s", flush=True)
            student = res.student
    lat = []
    for b in (1, 128):
        lt = measure_latency(teacher, info.input_size, b, threads=1)
        ls = measure_latency(student, info.input_size, b, threads=1)
        lat.append((b, lt.median_ms, lt.iqr_ms, ls.median_ms, ls.iqr_ms))
        print(f"latency batch {b}: teacher {lt.median_ms:.2f} ms, student {ls.median_ms:.2f} ms (1 thread)")
    lines = [
        "# Closed form vs the paper's solver (ResNet-56, `paper` channel preset)",
        "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/solver_comparison.py --shots {' '.join(map(str, args.shots))} --iters {args.iters}`",
        f"(run {time.strftime('%Y-%m-%d')}, 1 thread, on a 2-core machine that other jobs were also using: seconds are upper bounds).",
        "",
        f"Teacher: {t_acc:.1f} % top-1 on {len(test.y)} test images (first 1000 of the CIFAR-10 test set). "
        "Few-shot draw: the first K images of each class (seed 0, as the official code). Mixed loss μ = 0.9. No fine-tuning.",
        f"FLOPs {count_flops(teacher, info.input_size) / 1e6:.1f} M ⇒ {count_flops(student, info.input_size) / 1e6:.1f} M, "
        f"params {count_params(teacher):,} ⇒ {count_params(student):,}.",
        "",
        "| K | solver | top-1 (%) | Σ layer losses | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {s} | {a:.1f} | {l:.4f} | {t:.1f} |" for k, s, a, l, t in rows]
    lines += ["", "CPU latency, median (IQR) of 20 runs after 5 warm-ups, 1 thread:", "",
              "| batch | teacher (ms) | slimmed student (ms) | speed-up |", "|---|---|---|---|"]
    lines += [f"| {b} | {tm:.2f} ({ti:.2f}) | {sm:.2f} ({si:.2f}) | {tm / sm:.2f}× |" for b, tm, ti, sm, si in lat]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
