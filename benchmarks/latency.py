"""CPU latency of the slimmed ResNet students against their teachers, one thread.

Latency depends only on the architecture, so the students are built with the fast prune-only
solver (same channel counts as any solver gives). Models are measured in interleaved rounds so
that load from other jobs hits all of them alike; the table gives the median over rounds of
each round's median. Writes docs/results/latency.md.

    OMP_NUM_THREADS=1 python benchmarks/latency.py [--rounds 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from crossdistill.config import CompressConfig
from crossdistill.evaluation import count_flops, count_params, measure_latency
from crossdistill.models import model_info
from crossdistill.pipeline import compress, draw_few_shot, load_teacher
from splits import cifar10_splits, teacher_weights  # benchmarks/splits.py

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/latency.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, _ = cifar10_splits("test")
    models: dict[str, torch.nn.Module] = {}
    for name, keeps in (("resnet56", ["0.5", "paper"]), ("resnet20", ["0.5"])):
        base = dict(model=name, weights=teacher_weights(name), shots=1, solver="prune-only", selection="l1")
        teacher = load_teacher(CompressConfig(**base))
        models[f"{name} teacher"] = teacher
        for keep in keeps:
            cfg = CompressConfig(**base, keep=keep).validate()
            models[f"{name} keep {keep}"] = compress(teacher, draw_few_shot(cfg, train), cfg, show_progress=False).student
    samples: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for batch in (1, 128):
            for name, model in models.items():
                res = measure_latency(model, model_info(name.split()[0]).input_size, batch, threads=1,
                                      warmup=3, repeats=20 if batch == 1 else 3)
                samples.setdefault((name, batch), []).append(res.median_ms)
        print(f"round {r + 1}/{args.rounds}", flush=True)
    load = os.getloadavg()
    lines = [
        "# CPU latency of slimmed students",
        "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/latency.py --rounds {args.rounds}` (run {time.strftime('%Y-%m-%d %H:%M')}, "
        f"one thread, 2-core machine, load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min) at the end: one other job "
        "was running on the other core).",
        "",
        f"Median over {args.rounds} interleaved rounds of each round's median latency (20 forwards at batch 1, 3 at "
        "batch 128, random 32×32 images, after warm-up); ± half the interquartile range over rounds.",
        "",
        "| model | MFLOPs | params | batch 1 (ms) | speed-up | batch 128 (ms) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]

    def stat(key: tuple[str, int]) -> tuple[float, float]:
        v = sorted(samples[key])
        q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0], v[0], v[0]]
        return statistics.median(v), (q[2] - q[0]) / 2

    for name, model in models.items():
        teacher_name = f"{name.split()[0]} teacher"
        (b1, e1), (b128, e128) = stat((name, 1)), stat((name, 128))
        t1, t128 = stat((teacher_name, 1))[0], stat((teacher_name, 128))[0]
        size = model_info(name.split()[0]).input_size
        lines.append(f"| {name} | {count_flops(model, size) / 1e6:.1f} | {count_params(model):,} | {b1:.2f} ± {e1:.2f} | "
                     f"{t1 / b1:.2f}× | {b128:.1f} ± {e128:.1f} | {t128 / b128:.2f}× |")
        print(lines[-1])
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
