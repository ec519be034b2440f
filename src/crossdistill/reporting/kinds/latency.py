"""CPU latency of teachers and students, from sweeps run with `latency: true`.

Each run's report holds the teacher's and the student's latency at the evaluation's batch
sizes (median and interquartile range of the timed forwards). A student is timed once per run,
so seeds repeat the measurement; the table gives the median over runs and the fastest and
slowest run. The teacher is timed once per thread count (its evaluation is cached in the
database and copied into each run's report), so its number has no repeats. Timings at different
thread counts are never pooled, and a student is compared with its teacher at its own count.
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


@dataclass(frozen=True)
class Pooled:
    """One line's timing at one batch size over its runs."""

    median_ms: float  # median over runs of each run's median
    half_iqr_ms: float  # median over runs of half the IQR: the spread of one run's forwards
    fastest_ms: float  # the lowest and highest run median: the spread between runs
    slowest_ms: float
    runs: int

    def cell(self) -> str:
        if self.runs > 1:
            return f"{self.median_ms:.2f} ({self.fastest_ms:.2f}–{self.slowest_ms:.2f})"
        return f"{self.median_ms:.2f} ± {self.half_iqr_ms:.2f}"


def pooled(measured: Sequence[dict[int, tuple[float, float]]], batch: int) -> Pooled | None:
    vals = [m[batch] for m in measured if batch in m]
    if not vals:
        return None
    return Pooled(statistics.median(v[0] for v in vals), statistics.median(v[1] / 2 for v in vals),
                  min(v[0] for v in vals), max(v[0] for v in vals), len(vals))


def _threads(run: RunRow) -> int | None:
    threads = run.config.get("threads")
    return None if threads is None else int(threads)


def _mega(v: float | None) -> str:
    return "–" if v is None else f"{v / 1e6:.1f}"


@dataclass
class Line:
    """One table row: the teacher (method '') or one method at one compression setting."""

    teacher: str
    threads: int | None
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
        teachers: dict[tuple[str, int | None], list[dict[int, tuple[float, float]]]] = {}
        for g in aggregate(rows):
            runs = [r for c in g.cells.values() for r in c.runs]
            key = f"{g.model} ({Path(str(g.config.get('weights'))).name})"
            # A run's timings hold only at its thread count: a teacher at 2 threads beside a
            # student at 1 would make a speed-up of the threads.
            for threads in sorted({_threads(r) for r in runs}, key=lambda t: -1 if t is None else t):
                at = [r for r in runs if _threads(r) == threads]
                if (key, threads) not in teachers:
                    # Each run's report holds a copy of the one timing: counted once.
                    copies = [t for r in at for t in [timings(r.report, "teacher")] if t]
                    teachers[(key, threads)] = [t for i, t in enumerate(copies) if t not in copies[:i]]
                    lines.append(Line(key, threads, "teacher", "", at[0].teacher_flops, at[0].teacher_params,
                                      teachers[(key, threads)]))
                for m in g.methods:
                    mruns = [r for c in g.cells.values() if c.method == m for r in c.runs if _threads(r) == threads]
                    if not mruns:
                        continue
                    measured = [t for r in mruns for t in [timings(r.report, "student")] if t]
                    lines.append(Line(key, threads, g.compression, m, mruns[0].student_flops,
                                      mruns[0].student_params, measured))
        batches = sorted({b for line in lines for m in line.measured for b in m})
        if not batches:
            return Rendered(["No run recorded a latency (sweeps time it only with `latency: true`).", ""])
        repeats = sorted({len(line.measured) for line in lines if line.method})
        md = ["CPU latency (ms) of one forward pass at the run's thread count ('default': torch's own), the "
              "median over runs of each run's median, in brackets the fastest and slowest run (for one run: "
              "± half the interquartile range of its timed forwards); speed-up = the teacher at the same thread "
              f"count ÷ the student. Runs per student: {', '.join(map(str, repeats))}; the teacher is timed once "
              "per thread count.", "",
              "| teacher | threads | compression | method | MFLOPs | params | "
              + " | ".join(f"batch {b} (ms) | speed-up" for b in batches) + " |",
              "|---|---:|---|---|---:|---:|" + "---:|---:|" * len(batches)]
        summary = []
        for line in lines:
            cells = []
            entry: dict[str, Any] = {"teacher": line.teacher, "threads": line.threads,
                                     "compression": line.compression, "method": line.method,
                                     "flops": line.flops, "params": line.params, "runs": len(line.measured),
                                     "latency": {}}
            for b in batches:
                mine, ref = pooled(line.measured, b), pooled(teachers[(line.teacher, line.threads)], b)
                if mine is None:
                    cells += ["–", ""]
                    continue
                cells += [mine.cell(), f"{ref.median_ms / mine.median_ms:.2f}×" if ref else "–"]
                entry["latency"][b] = {"median_ms": mine.median_ms, "half_iqr_ms": mine.half_iqr_ms,
                                       "fastest_run_ms": mine.fastest_ms, "slowest_run_ms": mine.slowest_ms}
            summary.append(entry)
            params = "–" if line.params is None else f"{int(line.params):,}"
            threads = "default" if line.threads is None else str(line.threads)
            md.append(f"| {line.teacher} | {threads} | {line.compression} | {line.method} | {_mega(line.flops)} | "
                      f"{params} | " + " | ".join(cells) + " |")
        return Rendered(md + [""], {"latency": summary})
