"""Run the paper's baselines (and, for reference, cross distillation) over K and seeds on one
teacher, and append one JSON line per run: accuracy, size, FLOPs and seconds.

    python benchmarks/baselines.py --model resnet56 --keep 0.5 --shots 1 5 --seeds 0 1 2 \
        --methods l1 fskd thinet cp bp fitnet ours --out results.jsonl

Every run goes through `crossdistill.pipeline.run` (baselines via `compress_fn`), so the few-shot
draw, the channel counts and the evaluation are the same for all methods. `--eval-split val`
evaluates on 1000 training images (train[49000:]) instead of the test images, for choosing
baseline settings without looking at the test set.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from crossdistill.baselines import BASELINES, get_baseline
from crossdistill.config import CompressConfig
from splits import WEIGHTS, cifar10_splits, teacher_weights  # benchmarks/splits.py
from crossdistill.pipeline import run


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56", choices=sorted(WEIGHTS))
    p.add_argument("--keep", default="0.5")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["l1", "fskd", "thinet", "cp"],
                   help=f"baselines {sorted(BASELINES)} or 'ours' (compress with the config's defaults)")
    p.add_argument("--eval-split", choices=["test", "val"], default="test")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides (JSON values), e.g. finetune_lr=1e-3; extra.fitnet_lr=1e-3")
    p.add_argument("--tag", default="", help="free text stored with each line")
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file, appended to")
    return p.parse_args()


def overrides(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    top: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key.startswith("extra."):
            extra[key[len("extra."):]] = value
        else:
            top[key] = value
    return top, extra


def main() -> int:
    torch.set_num_threads(1)  # shared machine: one core per run
    args = parse()
    train, test = cifar10_splits(args.eval_split)
    top, extra = overrides(args.set)
    for shots in args.shots:
        for seed in args.seeds:
            for method in args.methods:
                cfg = CompressConfig(model=args.model, weights=teacher_weights(args.model),
                                     shots=shots, seed=seed, keep=args.keep, latency=False,
                                     **top, extra=dict(extra))
                fn = None if method == "ours" else get_baseline(method)
                start = time.perf_counter()
                result, report = run(cfg, show_progress=False, train=train, test=test, compress_fn=fn)
                line = {
                    "method": method, "model": args.model, "keep": args.keep, "shots": shots, "seed": seed,
                    "eval": args.eval_split, "n_eval": report["n_eval"], "top1": report["student"]["top1"],
                    "teacher_top1": report["teacher"]["top1"], "params": report["student"]["params"],
                    "flops": report["student"]["flops"], "compress_seconds": report["compress_seconds"],
                    "wall_seconds": time.perf_counter() - start, "solver": report["solver"],
                    "objective": report["objective"], "overrides": args.set, "tag": args.tag,
                }
                with args.out.open("a") as fh:
                    fh.write(json.dumps(line) + "\n")
                print(f"{method:12} K={shots} seed={seed} top1={line['top1']:.1f} "
                      f"({line['compress_seconds']:.0f} s) {args.tag}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
