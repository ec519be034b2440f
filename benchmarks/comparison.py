"""Issue 4's extended comparison: baselines and cross-distillation variants over models, pruning
kinds, K and seeds, with and without the final fine-tune. Appends one JSON line per run.

    python benchmarks/comparison.py --model resnet20 --prune channels --shots 1 5 --seeds 0 1 2 \
        --methods l1 cp thinet fskd ours ours-mixed --out docs/results/comparison_resnet20.jsonl

Methods: the baselines of `crossdistill.baselines` (channel pruning only), and
  ours        the library defaults (objective soft alpha 0 beta 0.3, auto damping 0.1/K)
  ours-mixed  objective "mixed" (mu = the model's default, 0.9 for ResNets; the paper's)
  ours-nocross  objective "nocross" (plain reconstruction from the student's inputs, no cross term)
  magnitude   unstructured sparsity: the teacher's largest weights, no reconstruction
              (solver magnitude, objective nocross)
For `--prune sparsity` the cross-distillation variants use `--solver` (default sparsegpt).
`--finetune-epochs N` adds the library's final fine-tune (crossdistill.finetune) to every method;
the method is then recorded as NAME+ft (`--suffix` adds more, e.g. +bn for
`--set finetune_bn='"recalibrate"'`: BatchNorm statistics re-estimated on the few images, no training);
a sparsity solver other than sparsegpt is recorded as NAME[solver]. Same as benchmarks/baselines.py otherwise, but the
teacher is evaluated once per process (its accuracy does not depend on the run).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from crossdistill.baselines import BASELINES, get_baseline
from crossdistill.config import CompressConfig
from crossdistill.device import resolve_device
from crossdistill.pipeline import run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import overrides  # noqa: E402
from splits import WEIGHTS, cifar10_splits, teacher_weights  # noqa: E402

OURS = {
    "ours": {},
    "ours-mixed": {"objective": "mixed"},
    "ours-nocross": {"objective": "nocross"},
    "magnitude": {"solver": "magnitude", "objective": "nocross"},
}


def device_label(name: str) -> str:
    """'cpu', or e.g. 'cuda (NVIDIA H100 80GB HBM3)': seconds are only comparable on one kind."""
    device = resolve_device(name)
    return "cpu" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"


def main() -> int:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20", choices=sorted(WEIGHTS))
    p.add_argument("--prune", default="channels", choices=["channels", "sparsity"])
    p.add_argument("--keep", default="0.5")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--solver", default="sparsegpt", help="cross-distillation solver for --prune sparsity")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", required=True, help=f"{sorted(BASELINES)} or {sorted(OURS)}")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--suffix", default="", help="appended to the recorded method name, e.g. +bn")
    p.add_argument("--device", default="cpu", help="where the training steps run (cpu, cuda, auto); recorded per line")
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    train, test = cifar10_splits("test")
    top, extra = overrides(args.set)
    teacher_metrics = None
    for shots in args.shots:
        for seed in args.seeds:
            for method in args.methods:
                kw = dict(top, device=args.device)
                if args.prune == "sparsity":
                    kw.update(prune="sparsity", sparsity=args.sparsity, solver=args.solver)
                else:
                    kw.update(keep=args.keep)
                kw.update(OURS.get(method, {}))
                if args.finetune_epochs > 0:
                    kw["finetune_epochs"] = args.finetune_epochs
                cfg = CompressConfig(model=args.model, weights=teacher_weights(args.model),
                                     shots=shots, seed=seed, latency=False, **kw, extra=dict(extra))
                fn = None if method in OURS else get_baseline(method)
                start = time.perf_counter()
                result, report = run(cfg, show_progress=False, train=train, test=test, compress_fn=fn,
                                     teacher_metrics=teacher_metrics)
                teacher_metrics = report["teacher"]
                name = method + ("+ft" if args.finetune_epochs > 0 and method not in ("bp", "l1-finetune") else "") + args.suffix
                if args.prune == "sparsity" and method in OURS and method != "magnitude" and args.solver != "sparsegpt":
                    name += f"[{args.solver}]"
                line = {
                    "method": name, "model": args.model, "prune": args.prune,
                    "keep": args.keep if args.prune == "channels" else None,
                    "sparsity": args.sparsity if args.prune == "sparsity" else None,
                    "shots": shots, "seed": seed, "eval": "test", "n_eval": report["n_eval"],
                    "top1": report["student"]["top1"], "teacher_top1": report["teacher"]["top1"],
                    "params": report["student"]["params"],
                    "nonzero_params": report["student"].get("nonzero_params"),
                    "flops": report["student"]["flops"], "compress_seconds": report["compress_seconds"],
                    "wall_seconds": time.perf_counter() - start, "solver": report["solver"],
                    "objective": report["objective"], "damping": report["damping"],
                    "finetune_epochs": cfg.finetune_epochs, "finetune_bn": cfg.finetune_bn,
                    "finetune_mode": cfg.finetune_mode, "overrides": args.set, "tag": args.tag,
                    "device": device_label(cfg.device),
                }
                with args.out.open("a") as fh:
                    fh.write(json.dumps(line) + "\n")
                print(f"{args.model} {args.prune} {name:14} K={shots} seed={seed} top1={line['top1']:.1f} "
                      f"({line['compress_seconds']:.0f} s, wall {line['wall_seconds']:.0f} s)",
                      file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
