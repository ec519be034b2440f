"""Solvers side by side: accuracy on the paper code's draw (the first K images of each class)
and on random draws, the fit of the few-shot set (Σ of the layers' losses at the solution), and
time, with speed-ups against a reference solver.

The draw (`sampler`) is what separates a run on the first-K draw from one on a random draw of
the same method, so methods are labelled here without it.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from crossdistill.params import param
from crossdistill.reporting.kinds.base import Rendered, ReportKind, check_matched, matches, parse_match
from crossdistill.reporting.results import RunRow, aggregate, distinct_labels, label_configs, mean_std
from crossdistill.reporting.tables import setting_header


def layer_loss(row: RunRow) -> float | None:
    layers = (row.report or {}).get("layers") or []
    losses = [la.get("loss_after") for la in layers]
    return float(sum(losses)) if losses and None not in losses else None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _num(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


@dataclass
class SolverReport(ReportKind):
    """Per K and method: top-1 on the first-K draw and on random draws, Σ layer losses, seconds."""

    name: ClassVar[str] = "solvers"
    reference: str = param("solver=paper", "the method the speed-ups divide, by its settings: KEY=VALUE[,...]")

    def render(self, rows: Sequence[RunRow], out: Path) -> Rendered:
        wanted = parse_match(self.reference)
        check_matched([row.config for row in rows], wanted, "reference")
        md = ["*first K*: the first K images of each class (the paper code's draw); *random*: random draws, "
              "mean ± sample std [draws]. Σ layer losses: the sum over the compressed layers of each layer's "
              "loss at the solution, on the first-K draw (lower = a closer fit of the few images). *total s*: "
              "compression without evaluation; *solver s*: the solver alone; both means over the draws. "
              f"Speed-ups: the reference (`{self.reference}`) ÷ the row.", ""]
        summary: list[dict[str, Any]] = []
        groups = aggregate(rows)
        headings = distinct_labels(groups)  # runs that differ only by their test data or class list apart
        for g in groups:
            runs = [r for c in g.cells.values() for r in c.runs]
            # one label per method whatever the draw: the sampler is set alike before labelling
            labels = label_configs([{**r.config, "sampler": "random"} for r in runs])
            methods = list(dict.fromkeys(labels))
            # The heading with the teacher's top-1 and the test set's size and file, as every kind's.
            md += [setting_header(g, headings[id(g)]), "", "| K | method | top-1 (%), first K | top-1 (%), random | Σ layer losses, "
                   "first K | total s | solver s | speed-up total | speed-up solver |",
                   "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
            for x in g.x_values:
                stats = {}
                for m in methods:
                    mine = [r for r, lab in zip(runs, labels) if lab == m and r.config.get(g.x_field) == x]
                    if not mine:
                        continue
                    first = [r for r in mine if r.config.get("sampler") == "first"]
                    rand = [float(r.student_top1) for r in mine if r.config.get("sampler") != "first"]
                    stats[m] = {
                        "first": _mean([r.student_top1 for r in first]),
                        "random": rand, "loss": _mean([layer_loss(r) for r in first]),
                        "total": _mean([r.compress_seconds for r in mine]),
                        "solve": _mean([(r.report or {}).get("solve_seconds") for r in mine]),
                        "reference": any(matches(r.config, wanted) for r in mine),
                    }
                refs = [s for s in stats.values() if s["reference"]]
                ref = refs[0] if len(refs) == 1 else None
                for m, s in stats.items():
                    mean, std = mean_std(s["random"])
                    rand = "–" if not s["random"] else (f"{mean:.1f}" if len(s["random"]) == 1
                                                        else f"{mean:.1f} ± {std:.1f} [{len(s['random'])}]")
                    speed = [f"{ref[k] / s[k]:.0f}×" if ref and ref[k] and s[k] else "–" for k in ("total", "solve")]
                    md.append(f"| {x} | {m} | {_num(s['first'], 1)} | {rand} | {_num(s['loss'], 4)} | "
                              f"{_num(s['total'], 1)} | {_num(s['solve'], 2)} | {speed[0]} | {speed[1]} |")
                    summary.append({"setting": headings[id(g)], g.x_field: x, "method": m, "n_eval": g.n_eval,
                                    "eval_data": g.eval_name, "teacher_top1": g.teacher_top1, **s})
            md.append("")
        return Rendered(md, {"solvers": summary})
