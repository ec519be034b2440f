"""The default report: per compression setting a methods × K table of top-1 (mean ± std over
seeds), a detail table and a plot of accuracy vs K; per teacher a plot of accuracy vs FLOPs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from crossdistill.reporting.kinds.base import Rendered, ReportKind, slug
from crossdistill.reporting.plots import accuracy_vs_flops, accuracy_vs_shots, save_png
from crossdistill.reporting.results import (
    RUN_SETTING_FIELDS,
    RunRow,
    SettingGroup,
    aggregate,
    distinct_labels,
    headings_apart,
)
from crossdistill.reporting.tables import accuracy_table, detail_table, setting_header


def teacher_families(groups: list[SettingGroup]) -> list[list[SettingGroup]]:
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
            {"method": c.method, g.x_field: c.x, "mean": c.mean,
             "std": c.std if c.n_seeds > 1 else None, "n_seeds": c.n_seeds,
             "seeds": c.seeds, "top1": c.top1, "n_eval": c.n_eval, "flops": c.flops, "params": c.params,
             "nonzero_params": c.nonzero_params, "size_bytes": c.size_bytes,
             "compress_seconds": c.compress_seconds, "run_seconds": c.run_seconds}
            for m in g.methods for x in g.x_values for c in [g.cell(m, x)] if c is not None
        ],
    }


@dataclass
class AccuracyReport(ReportKind):
    """Top-1 per method and K, with plots (the default kind)."""

    name: ClassVar[str] = "accuracy"

    def render(self, rows: Sequence[RunRow], out: Path) -> Rendered:
        groups = aggregate(rows)
        headings = distinct_labels(groups)
        r = Rendered(["Each cell is the mean ± sample standard deviation over few-shot draws (seeds); "
                      "n_eval is the number of evaluation images (test images, or a validation split where the section says so).", ""], {"settings": []})
        used: set[str] = set()
        for g in groups:
            name = slug(g.label)
            while name in used:
                name += "-x"
            used.add(name)
            png = f"accuracy_vs_{'k' if g.x_field == 'shots' else 'n'}_{name}.png"
            save_png(accuracy_vs_shots(g), out / png)
            r.markdown += [setting_header(g, headings[id(g)]), "", accuracy_table(g), "", f"![accuracy vs K]({png})", "",
                           "<details><summary>per method and K: seeds, n_eval, size, seconds</summary>", "",
                           detail_table(g), "",
                           "std: sample standard deviation over the seeds (– for one seed); compress (s): mean "
                           "seconds of the compression alone (no data loading or evaluation); run (s): mean wall "
                           "seconds of the whole run (the first run of a sweep also loads the data and evaluates "
                           "the teacher).", "", "</details>", ""]
            r.summary["settings"].append(group_summary(g))
            r.plots.append(png)
        families = teacher_families(groups)
        family_headings = headings_apart([fam[0] for fam in families], lambda g: g.model)
        for fam in families:
            # Sparsity and quantization keep the teacher's FLOPs: on a FLOPs axis their levels
            # would stack on one vertical line at the teacher's (their sections give the sizes).
            heading = family_headings[id(fam[0])]
            fam = [g for g in fam if not all(c.flops == g.teacher_flops for c in g.cells.values())]
            if not any(c.flops is not None for g in fam for c in g.cells.values()):
                continue
            name = slug(f"{fam[0].model}-{Path(str(fam[0].config.get('weights'))).stem}")
            while f"accuracy_vs_flops_{name}.png" in r.plots:
                name += "-x"
            png = f"accuracy_vs_flops_{name}.png"
            save_png(accuracy_vs_flops(fam), out / png)
            r.markdown += [f"## {heading}: accuracy vs FLOPs", "", f"![accuracy vs FLOPs]({png})", ""]
            r.plots.append(png)
        return r
