"""Markdown tables of aggregated sweep results."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from crossdistill.reporting.results import Cell, RunRow, SettingGroup


def fmt_mean_std(cell: Cell | None, digits: int = 2) -> str:
    if cell is None:
        return "–"
    if cell.n_seeds == 1:
        return f"{cell.mean:.{digits}f}"
    return f"{cell.mean:.{digits}f} ± {cell.std:.{digits}f}"


def _x_name(group: SettingGroup) -> str:
    return "K" if group.x_field == "shots" else "N"


def _seeds_note(group: SettingGroup) -> str:
    counts = {c.n_seeds for c in group.cells.values()}
    if len(counts) == 1:
        n = counts.pop()
        return f"over {n} seed{'s' if n != 1 else ''} (few-shot draws)"
    return "over a varying number of seeds (see the detail table)"


def _mega(v: float | int | None) -> str:
    return "–" if v is None else f"{v / 1e6:.2f}"


def _pct(part: float | None, whole: float | None) -> str:
    if part is None or not whole:
        return ""
    return f" ({100.0 * part / whole:.1f} % of the teacher)"


def setting_header(group: SettingGroup, label: str | None = None) -> str:
    """The section heading (`label`: results.distinct_labels, when sections could share one)."""
    lines = [f"## {label or group.label}", ""]
    if group.teacher_top1 is not None:
        lines.append(
            f"Teacher: **{group.teacher_top1:.2f} %** top-1 on {group.n_eval} {group.eval_role} images ({group.eval_name}); "
            f"{_mega(group.teacher_params)} M params, {_mega(group.teacher_flops)} MFLOPs per image."
        )
    cells = list(group.cells.values())
    if cells and cells[0].flops is not None:
        params = cells[0].params
        flops = cells[0].flops
        # Sparsity and quantization keep the dense shapes: what they buy is in the nonzero
        # weights and the stored size, which the params and FLOPs alone would hide.
        nonzero, stored = cells[0].nonzero_params, cells[0].size_bytes
        extra = ""
        if nonzero is not None and params and nonzero < 0.999 * params:
            extra += f", {_mega(nonzero)} M nonzero{_pct(nonzero, group.teacher_params)}"
        if stored is not None and group.teacher_size_bytes:
            extra += f", stored in {_kib(stored)} KiB{_pct(stored, group.teacher_size_bytes)}"
        lines.append(
            f"Student: {_mega(params)} M params{_pct(params, group.teacher_params)}{extra}, "
            f"{_mega(flops)} MFLOPs{_pct(flops, group.teacher_flops)}."
        )
    return "\n".join(lines)


def _kib(v: float | None) -> str:
    return "–" if v is None else f"{v / 1024:,.0f}"


def accuracy_table(group: SettingGroup) -> str:
    """Methods × K, each cell mean ± std of top-1 (%) over seeds."""
    xs = group.x_values
    x = _x_name(group)
    lines = [
        f"Top-1 (%) on {group.n_eval} {group.eval_role} images, mean ± sample std {_seeds_note(group)}; "
        f"{x} = {'training images per class' if x == 'K' else 'training images'}.",
        "",
        "| method | " + " | ".join(f"{x}={v}" for v in xs) + " |",
        "|---|" + "---:|" * len(xs),
    ]
    for m in group.methods:
        lines.append(f"| {m} | " + " | ".join(fmt_mean_std(group.cell(m, v)) for v in xs) + " |")
    return "\n".join(lines)


def detail_table(group: SettingGroup) -> str:
    """One row per method and K, with everything needed to judge the numbers."""
    x = _x_name(group)
    lines = [
        f"| method | {x} | top-1 mean (%) | std | seeds | n_eval | MFLOPs | params (M) | nonzero (M) | stored (KiB) "
        "| compress (s) | run (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in group.methods:
        for v in group.x_values:
            c = group.cell(m, v)
            if c is None:
                continue
            sec = "–" if c.compress_seconds is None else f"{c.compress_seconds:.1f}"
            run = "–" if c.run_seconds is None else f"{c.run_seconds:.1f}"
            lines.append(
                f"| {m} | {v} | {c.mean:.2f} | {f'{c.std:.2f}' if c.n_seeds > 1 else '–'} | {c.n_seeds} | {c.n_eval if c.n_eval is not None else '–'} "
                f"| {_mega(c.flops)} | {_mega(c.params)} | {_mega(c.nonzero_params)} | {_kib(c.size_bytes)} | {sec} | {run} |"
            )
    return "\n".join(lines)


def failed_runs_described(failed: Sequence[RunRow], rows: Sequence[RunRow]) -> list[dict[str, Any]]:
    """Each failed run: id, what it ran (the sweep log's description, plus the run settings that
    vary between `rows`: a failed run with a broken weights file read as its successful twin)
    and its error."""
    from crossdistill.reporting.results import RUN_SETTING_FIELDS
    from crossdistill.sweep.describe import short_description  # one describer for logs and reports

    varying = [k for k in RUN_SETTING_FIELDS if k not in ("model", "method")
               and len({str(r.config.get(k)) for r in rows}) > 1]
    out = []
    for r in failed:
        settings = ", ".join(f"{k}={Path(str(r.config.get(k))).name}" for k in varying)
        desc = short_description(r.config) + (f" ({settings})" if settings else "")
        out.append({"id": r.id, "config": desc, "error": r.error or ""})
    return out


def failed_table(failed: Sequence[RunRow], rows: Sequence[RunRow]) -> str:
    lines = ["| # | config | error |", "|---:|---|---|"]
    for f in failed_runs_described(failed, rows):
        err = f["error"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {f['id']} | {f['config']} | {err[:300]} |")
    return "\n".join(lines)
