"""Closed form vs the paper's Adam solver on the same loss, and the slimmed models' CPU speed.

The paper's ResNet-56 preset (`--keep paper`), the first K images of each class (the official
code's draw), mixed loss μ = 0.9. For each K: the closed form (each `--closed-form`
SELECTION:DAMPING variant) and the paper solver (Adam, annealed group threshold, 3000
iterations a layer), all in one run on the same draw, with the official implementation's
published-on-this-machine figures beside them. Then the CPU latency of the teacher and of the
slimmed students (paper preset and a uniform half), alternating models so that load from other
jobs hits both alike. Prints and writes docs/results/solver_comparison.md. Usage:

    OMP_NUM_THREADS=1 python benchmarks/solver_comparison.py [--shots 1 5] [--iters 3000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from crossdistill.config import CompressConfig
from crossdistill.evaluation import accuracy, count_flops, count_params, measure_latency
from crossdistill.models import model_info
from crossdistill.pipeline import compress, draw_few_shot, load_teacher
from splits import cifar10_splits, teacher_weights  # benchmarks/splits.py

ROOT = Path(__file__).resolve().parents[1]
# The official implementation run on this machine (issue 3): same teacher, 1000 test images,
# first image(s) of each class, μ 0.9, 3000 Adam iterations a layer; accuracy after its
# layer-wise stage and wall time (loaded machine).
OFFICIAL = {1: (84.7, "≈ 30 min"), 5: (87.6, "≈ 70 min")}


def latency_table(models: dict[str, torch.nn.Module], input_size, rounds: int) -> dict[tuple[str, int], tuple[float, float]]:
    """Median over `rounds` of each model's median latency, models interleaved round by round."""
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for batch in (1, 128):
            for name, model in models.items():
                r = measure_latency(model, input_size, batch, threads=1, warmup=3, repeats=10 if batch == 1 else 3)
                samples.setdefault((name, batch), []).append(r.median_ms)
    return {k: (statistics.median(v), max(v) - min(v)) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--closed-form", nargs="+", default=["obs:auto", "l1:auto"], metavar="SELECTION:DAMPING",
                    help="closed-form variants to run; DAMPING 'auto' = the library default 0.1/K")
    ap.add_argument("--random-seeds", type=int, nargs="*", default=[0, 1, 2],
                    help="random few-shot draws run besides the official first-K draw")
    ap.add_argument("--latency-rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/solver_comparison.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = dict(model="resnet56", weights=teacher_weights("resnet56"), data="shared",
                keep="paper", sampler="first", seed=0, objective="mixed", mu=0.9, iters=args.iters)
    train, test = cifar10_splits("test")
    info = model_info("resnet56")
    teacher = load_teacher(CompressConfig(**base))
    t_acc = accuracy(teacher, test.x, test.y, info.mean, info.std)
    variants = [("closed-form", *v.split(":")) for v in args.closed_form] + [("paper", "obs", "auto")]
    draws = [("first", 0)] + [("random", seed) for seed in args.random_seeds]
    rows = []
    students = {}
    for k in args.shots:
        k_rows = []
        for solver, selection, damping in variants:
            accs, totals, solves, losses = [], [], [], []
            for sampler, seed in draws:
                cfg = CompressConfig(**{**base, "sampler": sampler, "seed": seed}, shots=k, solver=solver,
                                     selection=selection,
                                     damping=None if damping == "auto" else float(damping)).validate()
                res = compress(teacher, draw_few_shot(cfg, train), cfg, show_progress=False)
                accs.append(accuracy(res.student, test.x, test.y, info.mean, info.std))
                losses.append(sum(r.loss_after for r in res.records))
                totals.append(res.seconds)
                solves.append(sum(r.solve_seconds for r in res.records))
                name = f"{res.solver}, damping {damping}"
                print(f"K={k:2d} {sampler}/{seed} {name:48s} top-1 {accs[-1]:5.1f} %  Σ loss {losses[-1]:9.4f}  "
                      f"total {totals[-1]:7.1f} s  solver {solves[-1]:7.2f} s", flush=True)
                if sampler == "first":
                    students["paper preset"] = res.student
            k_rows.append({"k": k, "name": name, "solver": solver, "first": accs[0], "random": accs[1:],
                           "loss": losses[0], "total": statistics.mean(totals), "solve": statistics.mean(solves)})
        paper = next(r for r in k_rows if r["solver"] == "paper")
        for r in k_rows:
            r["x_total"] = paper["total"] / r["total"]
            r["x_solve"] = paper["solve"] / r["solve"]
        rows += k_rows
    uniform_cfg = CompressConfig(**{**base, "keep": 0.5}, shots=args.shots[-1], solver="closed-form").validate()
    students["uniform 0.5"] = compress(teacher, draw_few_shot(uniform_cfg, train), uniform_cfg, show_progress=False).student
    models = {"teacher": teacher, **students}
    lat = latency_table(models, info.input_size, args.latency_rounds)
    for (name, batch), (ms, spread) in sorted(lat.items()):
        print(f"latency {name:13s} batch {batch:3d}: {ms:8.2f} ms (range {spread:.2f})")
    load = os.getloadavg()[0]
    lines = [
        "# Closed form vs the paper's solver (ResNet-56, `paper` channel preset)",
        "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/solver_comparison.py --shots {' '.join(map(str, args.shots))} "
        f"--iters {args.iters} --closed-form {' '.join(args.closed_form)}`",
        f"(run {time.strftime('%Y-%m-%d')}, 1 thread, 2-core machine, load average {load:.1f} at the end: other jobs were running, so seconds are upper bounds).",
        "",
        f"Teacher: {t_acc:.1f} % top-1 on {len(test.y)} test images (first 1000 of the CIFAR-10 test set). "
        "Few-shot draws: the first K images of each class (as the official code), and random draws (mean ± sample std); "
        "seconds are means over the draws. "
        "Mixed loss μ = 0.9, the same damping (ridge towards the teacher; auto = 0.1/K × mean diag H) for both solvers, so both minimise the same loss. No fine-tuning.",
        f"FLOPs {count_flops(teacher, info.input_size) / 1e6:.1f} M ⇒ {count_flops(students['paper preset'], info.input_size) / 1e6:.1f} M, "
        f"params {count_params(teacher):,} ⇒ {count_params(students['paper preset']):,}.",
        "",
        "*total* = everything but evaluation (capture of hidden states, moments, solve, slimming); *solver* = "
        "the solver alone (the capture and moments are the same work for both solvers). Speed-ups are "
        "paper solver ÷ row. Σ layer losses is the sum over the 27 pruned layers of each layer's "
        "(undamped) mixed loss at the solution: lower is a better fit of the few-shot images.",
        "",
        f"| K | solver | top-1 (%), first-K draw | top-1 (%), random draws (seeds {', '.join(map(str, args.random_seeds)) or '–'}) "
        "| Σ layer losses, first-K draw | total s | solver s | speed-up total | speed-up solver |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rnd = r["random"]
        spread = f"{statistics.mean(rnd):.1f} ± {statistics.stdev(rnd):.1f}" if len(rnd) > 1 else (f"{rnd[0]:.1f}" if rnd else "–")
        lines.append(f"| {r['k']} | {r['name']} | {r['first']:.1f} | {spread} | {r['loss']:.4f} | {r['total']:.1f} | "
                     f"{r['solve']:.2f} | {r['x_total']:.0f}× | {r['x_solve']:.0f}× |")
    for k in args.shots:
        if k in OFFICIAL:
            acc, wall = OFFICIAL[k]
            lines.append(f"| {k} | official implementation (issue 3, same draw, layer-wise stage) | {acc} | – | – | {wall} | – | – | – |")
    lines += ["", f"CPU latency (ms), 1 thread: median over {args.latency_rounds} interleaved rounds of the median "
              "of 10 (batch 1) or 3 (batch 128) forwards of random images; range = max − min over rounds.", "",
              "| model | FLOPs (M) | params | batch 1 | speed-up | batch 128 | speed-up |", "|---|---|---|---|---|---|---|"]
    for name, model in models.items():
        b1, r1 = lat[(name, 1)]
        b128, r128 = lat[(name, 128)]
        lines.append(f"| {name} | {count_flops(model, info.input_size) / 1e6:.1f} | {count_params(model):,} | "
                     f"{b1:.2f} (±{r1 / 2:.2f}) | {lat[('teacher', 1)][0] / b1:.2f}× | "
                     f"{b128:.1f} (±{r128 / 2:.1f}) | {lat[('teacher', 128)][0] / b128:.2f}× |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    keep_below = ""
    if args.out.exists() and "<!-- discussion -->" in args.out.read_text():
        keep_below = args.out.read_text().split("<!-- discussion -->", 1)[1]
    args.out.write_text("\n".join(lines) + "\n\n<!-- discussion -->" + keep_below)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
