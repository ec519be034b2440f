"""What the demo shows: the summary (report.json), the printed table, report.md and demo.png."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from crossdistill.demo.cache import TeacherEntry
from crossdistill.demo.options import DEMO_KIND, DemoOptions
from crossdistill.persistence.files import tensors_checksum

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure


def build_summary(opts: DemoOptions, entry: TeacherEntry, teacher_metrics: dict[str, Any], report: dict[str, Any],
                  base_report: dict[str, Any], timings: dict[str, Any]) -> dict[str, Any]:
    """What report.json holds: the three models' headline numbers, both full reports, timings."""
    def headline(metrics: dict[str, Any]) -> dict[str, Any]:
        return {"top1": metrics["top1"], "params": metrics["params"], "flops": metrics["flops"]}

    return {
        "kind": DEMO_KIND,
        # The teacher's own checksum: the figures below follow from it (its training differs in
        # rounding from one CPU to another), so two demo runs compare only with the same teacher.
        "teacher": {**headline(teacher_metrics), "weights": str(entry.weights_path), "cached": entry.cached,
                    "sha256": tensors_checksum(entry.model.state_dict()),
                    **{k: entry.meta.get(k) for k in ("train_seconds", "n_train", "threads", "cpu_capability")}},
        "prune_only": headline(base_report["student"]),
        "cross_distilled": headline(report["student"]),
        "n_eval": report["n_eval"],
        "recipe": asdict(opts.recipe),
        "report": report,
        "prune_only_report": base_report,
        "timings": timings,
    }


def print_results(report: dict[str, Any], base_report: dict[str, Any], log: TextIO) -> str:
    """Print the teacher ⇒ student table and the prune-only row; returns the table (for report.md)."""
    from crossdistill.pipeline import format_summary

    text = format_summary(report)
    print("\n" + text, file=log)
    print(f"{'prune-only':14}{'':>14}{base_report['student']['top1']:>14.2f}   same size, teacher's weights "
          "(no cross distillation)", file=log)
    return text


def write_report(folder: Path, result: Any, report: dict[str, Any], summary: dict[str, Any], table: str,
                 t_start: float) -> None:
    """Fill the (claimed, temporary) report folder: student/, demo.png, report.md, report.json.
    Sets summary['timings']['total'] (the run up to the last file)."""
    from crossdistill.outputs import write_json
    from crossdistill.pipeline import write_run

    (folder / "student").mkdir()
    write_run(folder / "student", result, report)
    fig = demo_figure(summary)
    fig.savefig(folder / "demo.png", format="png")
    summary["timings"]["total"] = time.perf_counter() - t_start
    (folder / "report.md").write_text(demo_markdown(summary, table))
    write_json(folder / "report.json", summary)


def demo_figure(summary: dict[str, Any]) -> "Figure":
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
    # Markers, not bars: on a log axis a bar's length is set by where the axis happens to start.
    ax2.plot(xs, before, "o", label="prune-only (teacher's kept weights)", color="tab:orange")
    ax2.plot(xs, after, "s", label="cross-distilled (solved)", color="tab:blue")
    ax2.grid(True, axis="y", alpha=0.3)
    ax2.set_xticks(xs, [r["name"] for r in layers])
    ax2.set_yscale("log")
    finite = [v for v in before + after if v == v and v > 0]
    if finite:  # headroom on the log axis, so the legend sits above the markers
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
