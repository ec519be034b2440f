"""Report kinds: one file each, one line each in REPORT_KINDS.

`crossdistill report DB --kind NAME --set KEY=VALUE` selects one; a sweep file can declare its
own (`report: {name: latency}` or `report: {name: paired, params: {reference: objective=nocross}}`),
which `crossdistill report DB` then uses for the databases that sweep wrote. Without either,
`accuracy` (the methods × K tables and plots).
"""
from crossdistill.params import Registry
from crossdistill.reporting.kinds.accuracy import AccuracyReport
from crossdistill.reporting.kinds.base import Rendered, ReportKind
from crossdistill.reporting.kinds.budget import BudgetReport
from crossdistill.reporting.kinds.latency import LatencyReport
from crossdistill.reporting.kinds.paired import PairedReport
from crossdistill.reporting.kinds.solvers import SolverReport

DEFAULT_KIND = "accuracy"

REPORT_KINDS = Registry("report kind", {
    "accuracy": AccuracyReport,
    "budget": BudgetReport,
    "latency": LatencyReport,
    "paired": PairedReport,
    "solvers": SolverReport,
})

__all__ = ["DEFAULT_KIND", "REPORT_KINDS", "Rendered", "ReportKind"]
