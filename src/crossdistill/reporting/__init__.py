"""Reports of sweep databases: aggregated tables (markdown) and plots (PNG), in one of the
report kinds of `crossdistill.reporting.kinds` (accuracy, latency, paired, solvers)."""
from crossdistill.reporting.kinds import DEFAULT_KIND, REPORT_KINDS, Rendered, ReportKind
from crossdistill.reporting.plots import accuracy_vs_flops, accuracy_vs_shots, save_png
from crossdistill.reporting.render import code_line, declared_kind, render_report
from crossdistill.reporting.results import (
    Cell,
    RunRow,
    SettingGroup,
    aggregate,
    base_method_label,
    failed_runs,
    label_configs,
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
    "DEFAULT_KIND",
    "REPORT_KINDS",
    "Rendered",
    "ReportKind",
    "aggregate",
    "base_method_label",
    "code_line",
    "declared_kind",
    "detail_table",
    "failed_runs",
    "fmt_mean_std",
    "label_configs",
    "load_runs",
    "mean_std",
    "method_labels",
    "render_report",
    "save_png",
]
