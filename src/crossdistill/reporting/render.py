"""`crossdistill report`: a folder with report.md, PNG plots and report.json from a sweep database."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from crossdistill.errors import CrossDistillError
from crossdistill.outputs import atomic_output_dir, check_output_dir, write_json
from crossdistill.reporting.plots import accuracy_vs_flops, accuracy_vs_shots, save_png
from crossdistill.reporting.results import RUN_SETTING_FIELDS, SettingGroup, aggregate, failed_runs, load_runs
from crossdistill.reporting.tables import accuracy_table, detail_table, failed_table, setting_header


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "setting"


def _teacher_families(groups: list[SettingGroup]) -> list[list[SettingGroup]]:
    """Settings that compress the same teacher on the same data to different sizes."""
    fams: dict[Any, list[SettingGroup]] = {}
    for g in groups:
        key = (tuple(str(g.config.get(k)) for k in RUN_SETTING_FIELDS), g.x_field)
        fams.setdefault(key, []).append(g)
    return list(fams.values())


def group_summary(g: SettingGroup) -> dict[str, Any]:
    return {
        "setting": g.config,
        "label": g.label,
        "x_field": g.x_field,
        "teacher": {"top1": g.teacher_top1, "params": g.teacher_params, "flops": g.teacher_flops},
        "n_eval": g.n_eval,
        "cells": [
            {"method": c.method, g.x_field: c.x, "mean": c.mean, "std": c.std, "n_seeds": c.n_seeds,
             "seeds": c.seeds, "top1": c.top1, "n_eval": c.n_eval, "flops": c.flops, "params": c.params,
             "compress_seconds": c.compress_seconds, "run_seconds": c.run_seconds}
            for m in g.methods for x in g.x_values for c in [g.cell(m, x)] if c is not None
        ],
    }


def render_report(db_path: str | Path, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Write report.md, one accuracy-vs-K plot per setting, one accuracy-vs-FLOPs plot per teacher
    and report.json to `out` (atomically). Returns what report.json holds."""
    rows = load_runs(db_path)
    if not rows:
        raise CrossDistillError(f"{db_path}: no runs recorded yet")
    check_output_dir(out, force)
    groups = aggregate(rows)
    failed = failed_runs(rows)
    md = [f"# Results of {Path(db_path).name}", "",
          f"{len(rows)} runs recorded: {len(rows) - len(failed)} ok, {len(failed)} failed. "
          "Each cell is the mean ± sample standard deviation over few-shot draws (seeds); "
          "n_eval is the number of test images.", ""]
    summary: dict[str, Any] = {"db": str(db_path), "runs": len(rows), "failed": len(failed), "settings": [], "plots": []}
    with atomic_output_dir(out, force) as tmp:
        used: set[str] = set()
        for g in groups:
            name = slug(g.label)
            while name in used:
                name += "-x"
            used.add(name)
            png = f"accuracy_vs_{'k' if g.x_field == 'shots' else 'n'}_{name}.png"
            save_png(accuracy_vs_shots(g), tmp / png)
            md += [setting_header(g), "", accuracy_table(g), "", f"![accuracy vs K]({png})", "",
                   "<details><summary>per method and K: seeds, n_eval, size, seconds</summary>", "",
                   detail_table(g), "", "</details>", ""]
            summary["settings"].append(group_summary(g))
            summary["plots"].append(png)
        for fam in _teacher_families(groups):
            if not any(c.flops is not None for g in fam for c in g.cells.values()):
                continue
            name = slug(f"{fam[0].model}-{Path(str(fam[0].config.get('weights'))).stem}")
            while f"accuracy_vs_flops_{name}.png" in summary["plots"]:
                name += "-x"
            png = f"accuracy_vs_flops_{name}.png"
            save_png(accuracy_vs_flops(fam), tmp / png)
            md += [f"## {fam[0].model}: accuracy vs FLOPs", "", f"![accuracy vs FLOPs]({png})", ""]
            summary["plots"].append(png)
        if failed:
            md += ["## Failed runs", "", failed_table(failed), ""]
        (tmp / "report.md").write_text("\n".join(md))
        write_json(tmp / "report.json", summary)
    return summary
