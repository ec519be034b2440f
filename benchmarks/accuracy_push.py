"""Cross distillation followed by fine-tune variants (KD on logits, feature hints, mixup/cutmix,
cosine schedule), each started from the same closed-form student; one JSON line per variant.

    python benchmarks/accuracy_push.py --shots 1 --seeds 0 --eval-split val \
        --variant 'hints:epochs=300,lr=1e-3,hint_weight=1,schedule="cosine"' --out push.jsonl

A variant is NAME:key=value,... over FinetuneSettings fields (JSON values). The closed form runs
once per (K, seed, objective) and every variant fine-tunes a copy, so `seconds` of a line is the
closed-form time plus that variant's fine-tune. `--eval-split val` evaluates on train[49000:]
(for choosing settings), `test` on the first 1000 test images.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

import torch

from crossdistill.config import CompressConfig
from crossdistill.evaluation import evaluate_for
from crossdistill.finetune import FinetuneSettings, WeightAverage, finetune
from crossdistill.models import model_info
from splits import WEIGHTS, cifar10_splits, teacher_weights  # benchmarks/splits.py
from crossdistill.pipeline import compress, draw_few_shot, load_teacher, resolved_damping


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    kw = {}
    for pair in filter(None, rest.split(",")):
        key, _, raw = pair.partition("=")
        try:
            kw[key] = json.loads(raw)
        except json.JSONDecodeError:
            kw[key] = raw
    return name, kw


def main() -> int:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56", choices=sorted(WEIGHTS))
    p.add_argument("--keep", default="0.5")
    p.add_argument("--objective", default="nocross")
    p.add_argument("--start", choices=["cd", "l1"], default="cd",
                   help="cd: the closed-form student (default); l1: the L1-pruned teacher weights (FitNet's start)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-split", choices=["test", "val"], default="val")
    p.add_argument("--variant", action="append", required=True, help="NAME:key=value,... (repeatable)")
    p.add_argument("--curve", type=int, nargs="*", default=[],
                   help="also evaluate after these fine-tune steps (one run gives the accuracy of every "
                        "shorter constant-rate schedule; not for cosine, whose rate depends on the length)")
    p.add_argument("--track-ema", type=float, nargs="*", default=[],
                   help="also keep moving averages of the live weights with these decays and evaluate them at "
                        "the --curve steps (one run gives every decay; recorded as curve_ema)")
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    train, test = cifar10_splits(args.eval_split)
    info = model_info(args.model)

    def top1(model: torch.nn.Module) -> float:
        return evaluate_for(model, test, info, latency=False)["top1"]

    variants = [parse_variant(v) for v in args.variant]
    if args.track_ema and any(kw.get("bn", "frozen") != "frozen" for _, kw in variants):
        p.error("--track-ema needs every variant's bn to be 'frozen' (the averages start before the first step)")
    for shots in args.shots:
        for seed in args.seeds:
            cfg = CompressConfig(model=args.model, weights=teacher_weights(args.model), shots=shots,
                                 seed=seed, keep=args.keep, objective=args.objective, latency=False).validate()
            if args.start == "l1":
                cfg = dataclasses.replace(cfg, solver="prune-only", selection="l1")
            teacher = load_teacher(cfg)
            fewshot = draw_few_shot(cfg, train)
            base = compress(teacher, fewshot, cfg, show_progress=False)
            base_top1 = top1(base.student)
            for name, kw in variants:
                student = copy.deepcopy(base.student)
                curve: dict[int, float] = {}  # step -> top-1 of what the fine-tune returns there
                curve_live: dict[int, float] = {}  # with ema: the live weights of the same run
                curve_ema: dict[str, dict[int, float]] = {}  # --track-ema: decay -> step -> top-1
                if name == "none":
                    ft = {"seconds": 0.0}
                else:
                    settings = FinetuneSettings(**{"bn": "frozen", "seed": seed, **kw})
                    # started from the closed form, as the fine-tune's own average; only with BN frozen
                    # does nothing change the student before the first step
                    tracked = {str(d): WeightAverage(student, d) for d in args.track_ema}

                    def on_step(step: int, model: torch.nn.Module) -> None:
                        for avg in tracked.values():
                            avg.update()
                        if step in args.curve:
                            for d, avg in tracked.items():
                                curve_ema.setdefault(d, {})[step] = top1(avg.model)
                            curve[step] = top1(model)
                            extra = ""
                            if model is not student:  # weight average: the live weights too, same run
                                curve_live[step] = top1(student)
                                extra = f" (live weights {curve_live[step]:.1f})"
                            extra += "".join(f" ema {d}: {c[step]:.1f}" for d, c in curve_ema.items())
                            print(f"  {name} step {step}: {curve[step]:.1f}{extra}", file=sys.stderr, flush=True)

                    ft = finetune(student, teacher, fewshot.images, fewshot.labels, settings,
                                  on_step=on_step if args.curve or tracked else None)
                line = {"variant": name, "settings": kw, "objective": args.objective, "start": args.start,
                        "damping": resolved_damping(cfg, fewshot), "shots": shots, "seed": seed,
                        "eval": args.eval_split, "n_eval": len(test.y), "top1": top1(student), "cd_top1": base_top1,
                        "cd_seconds": base.seconds, "ft_seconds": ft["seconds"],
                        "seconds": base.seconds + ft["seconds"], "tag": args.tag,
                        "hint_first": ft.get("hint_first"), "hint_last": ft.get("hint_last"), "curve": curve or None,
                        "curve_live": curve_live or None, "curve_ema": curve_ema or None}
                with args.out.open("a") as fh:
                    fh.write(json.dumps(line) + "\n")
                print(f"{name:24} K={shots} seed={seed} top1={line['top1']:.1f} (cd {base_top1:.1f}) "
                      f"{line['seconds']:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
