"""Choose objective, channel selection and damping on a validation split, then report on test.

ResNet (shared CIFAR-10 teacher), channel pruning, closed form. Each grid point is one config
(objective settings, selection, damping); each is run for every K and seed and appended as a
JSON line (resumable: points already in --out are skipped). `--eval-split val` scores on
train[49000:] (never the test images), the split used to pick defaults; `test` reports.

    OMP_NUM_THREADS=1 python benchmarks/objective_grid.py --eval-split val --shots 1 5 --seeds 0 1 \\
        --objectives nocross mixed:0.9 mixed:0.6 soft:0:0.3 --selections obs l1 \\
        --dampings 0.001 0.03 0.1 0.3 1 --out benchmarks/results/objective_damping_val.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from crossdistill.config import CompressConfig
from splits import WEIGHTS, cifar10_splits, teacher_weights  # benchmarks/splits.py
from crossdistill.pipeline import load_teacher, run


def objective_settings(spec: str) -> dict[str, Any]:
    """'nocross', 'mixed:MU', 'soft:ALPHA:BETA', 'correction', 'imitation'."""
    name, *nums = spec.split(":")
    if name == "mixed":
        return {"objective": "mixed", "mu": float(nums[0])}
    if name == "soft":
        return {"objective": "soft", "alpha": float(nums[0]), "beta": float(nums[1])}
    return {"objective": name}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56", choices=sorted(WEIGHTS))
    p.add_argument("--keep", default="0.5")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--objectives", nargs="+", default=["nocross", "mixed:0.9"])
    p.add_argument("--selections", nargs="+", default=["obs"])
    p.add_argument("--dampings", nargs="+", default=["auto"], help="numbers, or 'auto' (the library default 0.1/K)")
    p.add_argument("--eval-split", choices=["test", "val"], default="val")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    train, test = cifar10_splits(args.eval_split)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["model"], r["keep"], r["point"], r["shots"], r["seed"], r["eval"]))
    teacher_metrics = None
    teacher = None
    for obj, sel, damp in itertools.product(args.objectives, args.selections, args.dampings):
        point = f"{obj} sel={sel} d={damp if damp == 'auto' else f'{float(damp):g}'}"
        for shots, seed in itertools.product(args.shots, args.seeds):
            if (args.model, args.keep, point, shots, seed, args.eval_split) in done:
                continue
            cfg = CompressConfig(model=args.model, weights=teacher_weights(args.model),
                                 shots=shots, seed=seed, keep=args.keep, latency=False, selection=sel,
                                 damping=None if damp == "auto" else float(damp), **objective_settings(obj))
            teacher = teacher if teacher is not None else load_teacher(cfg)
            start = time.perf_counter()
            result, report = run(cfg, show_progress=False, train=train, test=test, teacher=teacher,
                                 teacher_metrics=teacher_metrics)
            teacher_metrics = report["teacher"]
            line = {"model": args.model, "keep": args.keep, "point": point, "objective": obj, "selection": sel,
                    "damping": damp if damp == "auto" else float(damp), "shots": shots, "seed": seed, "eval": args.eval_split,
                    "n_eval": report["n_eval"], "top1": report["student"]["top1"],
                    "teacher_top1": report["teacher"]["top1"], "compress_seconds": report["compress_seconds"],
                    "wall_seconds": time.perf_counter() - start}
            with args.out.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            print(f"{point:32s} K={shots} seed={seed} top1={line['top1']:.1f} ({line['compress_seconds']:.0f} s)",
                  file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
