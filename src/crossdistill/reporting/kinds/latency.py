"""CPU latency of teachers and students, from sweeps run with `latency: true`.

Each run's report holds the teacher's and the student's latency at the evaluation's batch
sizes (median and interquartile range of the timed forwards). A student is timed once per run,
so seeds repeat the measurement; the table gives the median over runs. The teacher is timed
once per database (its evaluation is cached), so its number has no repeats.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from crossdistill.reporting.kinds.base import Rendered, ReportKind
from crossdistill.reporting.results import RunRow, aggregate


def timings(report: dict[str, Any] | None, who: str) -> dict[int, tuple[float, float]]:
    """batch size → (median ms, IQR ms) of the teacher's or the student's latency in a run report."""
    out: dict[int, tuple[float, float]] = {}
    for t in ((report or {}).get(who) or {}).get("latency") or []:
        out[int(t["batch_size"])] = (float(t["median_ms"]), float(t.get("iqr_ms") or 0.0))
    return out


def pooled(measured: Sequence[dict[int, tuple[float, float]]], batch: int) -> tuple[float, float] | None:
    """Median over runs of the median, and of half the IQR (the spread of one run's forwards)."""
    vals = [m[batch] for m in measured if batch in m]
    if not vals:
        return None
    return statistics.median(v[0] for v in vals), statistics.median(v[1] / 2 for v in vals)


def _mega(v: float | None) -> str:
    return "–" if v is None else f"{v / 1e6:.1f}"


@dataclass
class Line:
    """One table row: the teacher (method '') or one method at one compression setting."""

    teacher: str
    compression: str
    method: str
    flops: float | None
    params: float | None
    measured: list[dict[int, tuple[float, float]]]


@dataclass
class LatencyReport(ReportKind):
    """Teacher and student latency per batch size, with the speed-up over the teacher."""

    name: ClassVar[str] = "latency"

    def render(self, rows: Sequence[RunRow], out: Path) -> Rendered:
        lines: list[Line] = []
        teachers: dict[str, list[dict[int, tuple[float, float]]]] = {}
        for g in aggregate(rows):
            runs = [r for c in g.cells.values() for r in c.runs]
            key = f"{g.model} ({Path(str(g.config.get('weights'))).name})"
            if key not in teachers:
                teachers[key] = [t for r in runs for t in [timings(r.report, "teacher")] if t]
                lines.append(Line(key, "teacher", "", runs[0].teacher_flops, runs[0].teacher_params, teachers[key]))
            for m in g.methods:
                mruns = [r for c in g.cells.values() if c.method == m for r in c.runs]
                measured = [t for r in mruns for t in [timings(r.report, "student")] if t]
                lines.append(Line(key, g.compression, m, mruns[0].student_flops, mruns[0].student_params, measured))
        batches = sorted({b for line in lines for m in line.measured for b in m})
        if not batches:
            return Rendered(["No run recorded a latency (sweeps time it only with `latency: true`).", ""])
        repeats = sorted({len(line.measured) for line in lines if line.method})
        md = ["CPU latency (ms) of one forward pass: median over runs of each run's median, ± half the "
              "interquartile range of one run's timed forwards; speed-up = teacher ÷ student. Runs per "
              f"student: {', '.join(map(str, repeats))}; the teacher is timed once per database.", "",
              "| teacher | compression | method | MFLOPs | params | "
              + " | ".join(f"batch {b} (ms) | speed-up" for b in batches) + " |",
              "|---|---|---|---:|---:|" + "---:|---:|" * len(batches)]
        summary = []
        for line in lines:
            cells = []
            entry: dict[str, Any] = {"teacher": line.teacher, "compression": line.compression, "method": line.method,
                                     "flops": line.flops, "params": line.params, "runs": len(line.measured),
                                     "latency": {}}
            for b in batches:
                mine, ref = pooled(line.measured, b), pooled(teachers[line.teacher], b)
                if mine is None:
                    cells += ["–", ""]
                    continue
                cells += [f"{mine[0]:.2f} ± {mine[1]:.2f}", f"{ref[0] / mine[0]:.2f}×" if ref else "–"]
                entry["latency"][b] = {"median_ms": mine[0], "half_iqr_ms": mine[1]}
            summary.append(entry)
            params = "–" if line.params is None else f"{int(line.params):,}"
            md.append(f"| {line.teacher} | {line.compression} | {line.method} | {_mega(line.flops)} | {params} | "
                      + " | ".join(cells) + " |")
        return Rendered(md + [""], {"latency": summary})
