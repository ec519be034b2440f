"""Reports of sweep databases: aggregated tables (markdown) and plots (PNG)."""
from crossdistill.reporting.plots import accuracy_vs_flops, accuracy_vs_shots, save_png
from crossdistill.reporting.render import render_report
from crossdistill.reporting.results import (
    Cell,
    RunRow,
    SettingGroup,
    aggregate,
    base_method_label,
    failed_runs,
    load_runs,
    mean_std,
    method_labels,
)
from crossdistill.reporting.tables import accuracy_table, detail_table, fmt_mean_std

__all__ = [
    "Cell",
    "RunRow",
    "SettingGroup",
    "accuracy_table",
    "accuracy_vs_flops",
    "accuracy_vs_shots",
    "aggregate",
    "base_method_label",
    "detail_table",
    "failed_runs",
    "fmt_mean_std",
    "load_runs",
    "mean_std",
    "method_labels",
    "render_report",
    "save_png",
]
