"""`crossdistill demo`: Fashion-MNIST end to end on a laptop.

Trains a small teacher once (cached per user), removes half of its channels by cross
distillation from K = 5 images per class, and compares teacher, prune-only and
cross-distilled student on the full test set. Everything runs offline once Fashion-MNIST is on
disk (Debian's dataset-fashion-mnist, or a checksummed download on first use).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.config import CompressConfig
from crossdistill.data import ImageArrays, load_image_data, to_tensor
from crossdistill.errors import CrossDistillError
from crossdistill.paths import cache_dir

DEMO_KIND = "crossdistill-demo"  # marks report.json, so a rerun may replace its own old report
DEFAULT_OUT = Path("crossdistill-demo")

# Bump when the training code changes in a way that makes older cached teachers different.
TEACHER_FORMAT = 1


@dataclass(frozen=True)
class TeacherRecipe:
    """How the demo teacher is trained. Its hash (with the training data's) names the cache entry.

    SGD with Nesterov momentum and a one-cycle schedule reaches about 90 % test accuracy on
    Fashion-MNIST with `fashion_cnn` in two epochs; a constant rate needs several more.
    """

    model: str = "fashion_cnn"
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.1  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def validate(self) -> "TeacherRecipe":
        if self.epochs < 1 or self.batch_size < 1:
            raise CrossDistillError("teacher training needs epochs >= 1 and batch size >= 1")
        if not self.lr > 0:
            raise CrossDistillError(f"learning rate must be positive, got {self.lr}")
        return self

    def key(self, data_fingerprint: str) -> str:
        from crossdistill.models import create_model

        # The architecture's tensor shapes are part of the key: a model whose default widths
        # change gets a new teacher instead of silently reusing the old network.
        arch = [[k, list(v.shape)] for k, v in create_model(self.model).state_dict().items()]
        text = json.dumps({"recipe": asdict(self), "data": data_fingerprint, "arch": arch, "format": TEACHER_FORMAT},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_threads() -> int:
    """torch's thread count, lowered to the cores other processes leave idle.

    An OpenMP thread that has to wait for a busy core stalls every parallel op of the pass:
    measured on 2 shared cores under load 7, teacher training ran at 1 batch/s with 2 threads
    and 5 batch/s with 1. On an idle machine this keeps torch's own choice.
    """
    n = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return n
    return max(1, min(n, int(cores - busy + 0.5)))


def fingerprint(data: ImageArrays) -> str:
    """sha256 of the pixels and labels: the same images give the same cached teacher, wherever
    they were read from (Debian package, download, a copy)."""
    h = hashlib.sha256(np.ascontiguousarray(data.x).tobytes())
    h.update(np.asarray(data.y, dtype=np.int64).tobytes())
    return h.hexdigest()


def subset(data: ImageArrays, n: int | None) -> ImageArrays:
    """The first n images (all when n is None); for quick runs and tests."""
    if n is None or n >= len(data.y):
        return data
    if n < 1:
        raise CrossDistillError(f"subset size must be >= 1, got {n}")
    return ImageArrays(x=data.x[:n], y=data.y[:n], num_classes=data.num_classes,
                       class_names=data.class_names, source=f"{data.source} (first {n})")


def train_teacher(train: ImageArrays, recipe: TeacherRecipe, *, show_progress: bool = True) -> nn.Module:
    """Train `recipe.model` from scratch on `train`; deterministic for a given recipe and data."""
    from tqdm import tqdm

    from crossdistill.models import create_model, model_info

    recipe.validate()
    info = model_info(recipe.model)
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.model, num_classes=train.num_classes)
    x = to_tensor(train.x, info.mean, info.std)
    y = torch.as_tensor(train.y, dtype=torch.long)
    steps_per_epoch = math.ceil(len(y) / recipe.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                          weight_decay=recipe.weight_decay)
    total = steps_per_epoch * recipe.epochs
    # One-cycle needs a few steps per phase (it divides by the warm-up length); tiny runs keep lr.
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total, pct_start=0.25)
             if total >= 8 else None)
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()
    bar = tqdm(total=total, desc=f"training {recipe.model} teacher", unit="batch",
               file=sys.stderr, disable=not show_progress, dynamic_ncols=True)
    try:
        for epoch in range(recipe.epochs):
            perm = torch.randperm(len(y), generator=gen)
            correct = seen = 0
            for start in range(0, len(y), recipe.batch_size):
                idx = perm[start:start + recipe.batch_size]
                logits = model(x[idx])
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                correct += int((logits.argmax(1) == y[idx]).sum())
                seen += len(idx)
                bar.update(1)
                bar.set_postfix_str(f"epoch {epoch + 1}/{recipe.epochs} loss {loss.item():.3f} "
                                    f"train acc {100.0 * correct / seen:.1f} %", refresh=False)
    finally:
        bar.close()
    return model.eval()


@dataclass
class TeacherEntry:
    model: nn.Module
    meta: dict[str, Any]
    cached: bool
    weights_path: Path
    seconds: float  # training or loading time


def teacher_cache_dir() -> Path:
    return cache_dir() / "teachers"


def _cache_paths(recipe: TeacherRecipe, key: str) -> tuple[Path, Path]:
    base = teacher_cache_dir() / f"{recipe.model}-{key}"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def load_cached_teacher(recipe: TeacherRecipe, data_fingerprint: str) -> tuple[nn.Module, dict[str, Any]] | None:
    """The cached teacher for this recipe and training data, or None (absent or unreadable)."""
    from crossdistill.models import load_model

    key = recipe.key(data_fingerprint)
    weights, sidecar = _cache_paths(recipe, key)
    if not (weights.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("key") != key:
            return None
        return load_model(weights, recipe.model).eval(), meta
    except (OSError, ValueError, CrossDistillError) as exc:
        print(f"ignoring the unreadable cached teacher {weights} ({exc}); training a new one", file=sys.stderr)
        return None


def store_teacher(model: nn.Module, recipe: TeacherRecipe, data_fingerprint: str, meta: dict[str, Any]) -> Path:
    """Write weights, then the sidecar, each through a rename: a sidecar only ever describes
    complete weights, so a crash mid-write leaves no entry that looks valid."""
    from crossdistill.models import save_model
    from crossdistill.outputs import write_json

    key = recipe.key(data_fingerprint)
    weights, sidecar = _cache_paths(recipe, key)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".{weights.stem}.tmp-{os.getpid()}.safetensors")
    try:
        save_model(model, tmp)
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)
    write_json(sidecar, {**meta, "key": key, "recipe": asdict(recipe), "data_sha256": data_fingerprint,
                         "weights": weights.name, "format": TEACHER_FORMAT})
    return weights


@dataclass
class DemoOptions:
    data: str = "fashion-mnist"
    out: Path = DEFAULT_OUT
    force: bool = False
    shots: int = 5
    keep: float = 0.5
    objective: str = CompressConfig.objective  # the library default (soft α 0, β 0.3)
    mu: float | None = None
    solver: str = "closed-form"
    seed: int = 0
    latency: bool = True
    retrain: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    threads: int | None = None
    show_progress: bool = True
    recipe: TeacherRecipe = field(default_factory=TeacherRecipe)


def is_demo_report(folder: Path) -> bool:
    """True when `folder` holds a report written by an earlier demo (and nothing else of value)."""
    try:
        return json.loads((Path(folder) / "report.json").read_text()).get("kind") == DEMO_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _evaluate_teacher(teacher: nn.Module, test: ImageArrays, model: str, latency: bool) -> dict[str, Any]:
    from crossdistill.evaluation import evaluate_model
    from crossdistill.models import model_info

    info = model_info(model)
    return evaluate_model(teacher, test, mean=info.mean, std=info.std, input_size=info.input_size,
                          measure_speed=latency, latency_batch_sizes=(1, 128) if latency else ())


def get_teacher(train: ImageArrays, opts: DemoOptions, log: TextIO) -> TeacherEntry:
    recipe = opts.recipe.validate()
    fp = fingerprint(train)
    start = time.perf_counter()
    found = None if opts.retrain else load_cached_teacher(recipe, fp)
    if found is not None:
        model, meta = found
        path = _cache_paths(recipe, recipe.key(fp))[0]
        print(f"teacher: cached {path} (trained in {meta.get('train_seconds', float('nan')):.0f} s, "
              f"{meta.get('test_top1', float('nan')):.2f} % test top-1)", file=log, flush=True)
        return TeacherEntry(model, meta, True, path, time.perf_counter() - start)
    print(f"teacher: training {recipe.model} for {recipe.epochs} epochs on {len(train.y)} images "
          f"(once; cached in {teacher_cache_dir()})", file=log, flush=True)
    model = train_teacher(train, recipe, show_progress=opts.show_progress)
    seconds = time.perf_counter() - start
    meta = {"train_seconds": seconds, "n_train": int(len(train.y)), "source": train.source,
            "threads": torch.get_num_threads(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return TeacherEntry(model, meta, False, _cache_paths(recipe, recipe.key(fp))[0], seconds)


def compress_config(opts: DemoOptions, **changes: Any) -> CompressConfig:
    cfg = CompressConfig(model=opts.recipe.model, data=opts.data, eval_data=opts.data, shots=opts.shots,
                         seed=opts.seed, keep=opts.keep, objective=opts.objective, mu=opts.mu,
                         solver=opts.solver, latency=opts.latency)
    return replace(cfg, **changes).validate()


def run_demo(opts: DemoOptions, *, train: ImageArrays | None = None, test: ImageArrays | None = None,
             log: TextIO | None = None) -> dict[str, Any]:
    """The whole demo; returns what report.json holds. `train`/`test` skip loading (tests)."""
    from crossdistill.outputs import atomic_output_dir, check_output_dir
    from crossdistill.pipeline import format_summary, run as run_pipeline, write_run

    log = log if log is not None else sys.stdout
    t_start = time.perf_counter()
    check_output_dir(opts.out, opts.force)  # fail before the work, not after
    compress_config(opts)  # bad settings (e.g. --keep 2) fail now, not after the teacher's training
    opts.recipe.validate()
    old_threads = torch.get_num_threads()
    if opts.threads is not None and opts.threads < 1:
        raise CrossDistillError(f"threads must be >= 1, got {opts.threads}")
    threads = opts.threads if opts.threads is not None else default_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        train = subset(train if train is not None else load_image_data(opts.data, "train"), opts.train_subset)
        test = subset(test if test is not None else load_image_data(opts.data, "test"), opts.test_subset)
        load_seconds = time.perf_counter() - t0
        print(f"data: {len(train.y)} training and {len(test.y)} test images ({train.source or opts.data}); "
              f"{threads} CPU thread{'s' if threads != 1 else ''}", file=log, flush=True)

        entry = get_teacher(train, opts, log)
        t0 = time.perf_counter()
        teacher_metrics = _evaluate_teacher(entry.model, test, opts.recipe.model, opts.latency)
        teacher_eval_seconds = time.perf_counter() - t0
        if not entry.cached:
            entry.meta["test_top1"] = teacher_metrics["top1"]
            entry.meta["n_test"] = teacher_metrics["n_eval"]
            store_teacher(entry.model, opts.recipe, fingerprint(train), entry.meta)
            print(f"teacher: {teacher_metrics['top1']:.2f} % test top-1 after {entry.seconds:.0f} s of training",
                  file=log, flush=True)

        t0 = time.perf_counter()
        cfg = compress_config(opts)
        result, report = run_pipeline(cfg, show_progress=opts.show_progress, train=train, test=test,
                                      teacher=entry.model, teacher_metrics=teacher_metrics)
        cross_seconds = time.perf_counter() - t0
        # The baseline: the same channels budget and the same few images, but the kept weights are
        # the teacher's (no reconstruction). Latency is skipped: it has the same shape as the student.
        t0 = time.perf_counter()
        base_cfg = compress_config(opts, solver="prune-only", latency=False)
        _, base_report = run_pipeline(base_cfg, show_progress=False, train=train, test=test,
                                      teacher=entry.model, teacher_metrics=teacher_metrics)
        baseline_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)

    timings = {
        "load_data": load_seconds,
        "teacher": entry.seconds,
        "teacher_cached": entry.cached,
        "teacher_eval": teacher_eval_seconds,
        "cross_distillation": result.seconds,
        "cross_distillation_with_eval": cross_seconds,
        "prune_only_with_eval": baseline_seconds,
        "threads": threads,
    }
    summary = {
        "kind": DEMO_KIND,
        "teacher": {"top1": teacher_metrics["top1"], "params": teacher_metrics["params"],
                    "flops": teacher_metrics["flops"], "weights": str(entry.weights_path), "cached": entry.cached,
                    **{k: entry.meta.get(k) for k in ("train_seconds", "n_train")}},
        "prune_only": {"top1": base_report["student"]["top1"], "params": base_report["student"]["params"],
                       "flops": base_report["student"]["flops"]},
        "cross_distilled": {"top1": report["student"]["top1"], "params": report["student"]["params"],
                            "flops": report["student"]["flops"]},
        "n_eval": report["n_eval"],
        "recipe": asdict(opts.recipe),
        "report": report,
        "prune_only_report": base_report,
        "timings": timings,
    }
    text = format_summary(report)
    print("\n" + text, file=log)
    print(f"{'prune-only':14}{'':>14}{base_report['student']['top1']:>14.2f}   same size, teacher's weights "
          "(no cross distillation)", file=log)
    with atomic_output_dir(opts.out, opts.force) as tmp:
        write_run(tmp / "student", result, report)
        fig = demo_figure(summary)
        fig.savefig(tmp / "demo.png", format="png")
        summary["timings"]["total"] = time.perf_counter() - t_start
        (tmp / "report.md").write_text(demo_markdown(summary, text))
        from crossdistill.outputs import write_json

        write_json(tmp / "report.json", summary)
    total = summary["timings"]["total"]
    print(f"\ntotal {total:.0f} s (teacher {'from cache' if entry.cached else f'trained in {entry.seconds:.0f} s'}); "
          f"report in {opts.out}/ (report.md, demo.png, student/)", file=log, flush=True)
    return summary


def demo_figure(summary: dict[str, Any]):
    """Left: top-1 of teacher, prune-only and cross-distilled student. Right: each pruned layer's
    loss (the objective the solver minimised) with the teacher's kept weights vs after solving."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=110)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    names = ["teacher", "prune-only", "cross-distilled"]
    vals = [summary["teacher"]["top1"], summary["prune_only"]["top1"], summary["cross_distilled"]["top1"]]
    bars = ax.bar(names, vals, color=["0.55", "tab:orange", "tab:blue"])
    for b, v in zip(bars, vals):
        ax.annotate(f"{v:.2f} %", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9,
                    xytext=(0, 2), textcoords="offset points")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 105)
    rep = summary["report"]
    ax.set_title(f"{rep['model']}: top-1 on {summary['n_eval']} test images\n"
                 f"K={rep['shots']} per class ({rep['n_samples']} images), {rep['method']}", fontsize=10)
    layers = rep["layers"]
    base_layers = {r["name"]: r for r in summary["prune_only_report"]["layers"]}
    xs = np.arange(len(layers))
    before = [base_layers.get(r["name"], {}).get("loss_after", float("nan")) for r in layers]
    after = [r["loss_after"] for r in layers]
    ax2.bar(xs - 0.2, before, width=0.4, label="prune-only (teacher's kept weights)", color="tab:orange")
    ax2.bar(xs + 0.2, after, width=0.4, label="cross-distilled (solved)", color="tab:blue")
    ax2.set_xticks(xs, [r["name"] for r in layers])
    ax2.set_yscale("log")
    finite = [v for v in before + after if v == v and v > 0]
    if finite:  # headroom on the log axis, so the legend sits above the bars
        ax2.set_ylim(top=max(finite) * 8)
    ax2.set_xlabel("pruned layer")
    ax2.set_ylabel(f"layer loss ({rep['objective']}), log scale")
    ax2.set_title("per-layer reconstruction loss on the few-shot images", fontsize=10)
    ax2.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def demo_markdown(summary: dict[str, Any], table: str) -> str:
    t, p, c = summary["teacher"], summary["prune_only"], summary["cross_distilled"]
    rep = summary["report"]
    tm = summary["timings"]
    rows = [
        "| | top-1 (%) | params | MFLOPs |",
        "|---|---:|---:|---:|",
        f"| teacher | {t['top1']:.2f} | {t['params']:,} | {t['flops'] / 1e6:.2f} |",
        f"| prune-only | {p['top1']:.2f} | {p['params']:,} | {p['flops'] / 1e6:.2f} |",
        f"| cross-distilled | {c['top1']:.2f} | {c['params']:,} | {c['flops'] / 1e6:.2f} |",
    ]
    lat = ""
    tl, sl = rep["teacher"].get("latency") or [], rep["student"].get("latency") or []
    if tl and sl:
        lat = "\n".join(
            f"- CPU latency, batch {a['batch_size']} ({a['threads']} threads): teacher {a['median_ms']:.2f} ms, "
            f"student {b['median_ms']:.2f} ms (median of {a['repeats']})"
            for a, b in zip(tl, sl)
        )
    return "\n".join([
        "# crossdistill demo",
        "",
        f"{rep['model']} on Fashion-MNIST: the teacher ({t['n_train']} training images, "
        f"{summary['recipe']['epochs']} epochs) compressed with {rep['method']} by cross distillation "
        f"({rep['objective']}, {rep['solver']}) from K = {rep['shots']} images per class "
        f"({rep['n_samples']} images, seed {rep['seed']}). Top-1 on {summary['n_eval']} test images.",
        "",
        *rows,
        "",
        lat,
        "",
        "![teacher, prune-only and cross-distilled accuracy; per-layer loss](demo.png)",
        "",
        "```",
        table,
        "```",
        "",
        f"Timings: data {tm['load_data']:.1f} s, teacher {'loaded from cache' if tm['teacher_cached'] else 'trained'} "
        f"in {tm['teacher']:.1f} s, teacher evaluation {tm['teacher_eval']:.1f} s, cross distillation "
        f"{tm['cross_distillation']:.1f} s ({tm['cross_distillation_with_eval']:.1f} s with evaluation), "
        f"prune-only baseline {tm['prune_only_with_eval']:.1f} s; total {tm.get('total', float('nan')):.1f} s.",
        "",
        "The student (safetensors), its config and few-shot indices are in `student/`.",
        "",
    ])
