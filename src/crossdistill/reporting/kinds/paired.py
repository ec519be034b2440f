"""Methods × K tables with paired differences against one reference method, draw by draw.

Two methods run on the same few-shot draw (same K and seed) share the draw's luck, so their
difference per draw is far less noisy than the difference of their means; the table gives its
mean and on how many draws the method was ahead. Settings are compared separately, so a
database holding runs scored on a validation split and on the test images (different
`eval_data`) gives one pair of tables per split.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from crossdistill.params import param
from crossdistill.reporting.kinds.base import Rendered, ReportKind, check_matched, matches, parse_match
from crossdistill.reporting.results import RunRow, SettingGroup, aggregate, distinct_labels
from crossdistill.reporting.tables import accuracy_table, setting_header


def reference_method(g: SettingGroup, wanted: dict[str, str]) -> list[str]:
    """The methods of a setting whose runs have the wanted settings."""
    return [m for m in g.methods
            if any(matches(r.config, wanted) for c in g.cells.values() if c.method == m for r in c.runs)]


def paired_cell(g: SettingGroup, method: str, ref: str, x: int) -> tuple[str, list[float]]:
    a, b = g.cell(method, x), g.cell(ref, x)
    if a is None or b is None:
        return "–", []
    mine, theirs = dict(zip(a.seeds, a.top1)), dict(zip(b.seeds, b.top1))
    diffs = [mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))]
    if not diffs:
        return "–", []
    mean = round(statistics.fmean(diffs), 2) + 0.0  # + 0.0: a mean that rounds to zero prints +0.00
    return f"{mean:+.2f} ({sum(d > 0 for d in diffs)}/{len(diffs)})", diffs


@dataclass
class PairedReport(ReportKind):
    """Accuracy tables plus each method's paired difference to a reference method."""

    name: ClassVar[str] = "paired"
    reference: str = param("objective=nocross", "the reference method, by its settings: KEY=VALUE[,KEY=VALUE] "
                           "(dotted keys as in a sweep file)")

    def render(self, rows: Sequence[RunRow], out: Path) -> Rendered:
        wanted = parse_match(self.reference)
        check_matched([row.config for row in rows], wanted, "reference")
        r = Rendered(["Each cell is the mean ± sample standard deviation over few-shot draws (seeds). Paired "
                      "differences: per draw (same K and seed) method − reference, in points, mean over draws "
                      "(draws where the method was ahead / draws).", ""], {"settings": []})
        groups = aggregate(rows)
        headings = distinct_labels(groups)
        for g in groups:
            r.markdown += [setting_header(g, headings[id(g)]), "", accuracy_table(g), ""]
            refs = reference_method(g, wanted)
            entry: dict[str, Any] = {"setting": g.label, "eval_data": g.config.get("eval_data"), "reference": refs}
            if len(refs) != 1:
                r.markdown += [f"No paired differences: {len(refs)} methods match the reference "
                               f"`{self.reference}`{' (' + '; '.join(refs) + ')' if refs else ''}.", ""]
                r.summary["settings"].append(entry)
                continue
            ref = refs[0]
            r.markdown += [f"| vs `{ref}` | " + " | ".join(f"K={x}" for x in g.x_values) + " |",
                           "|---|" + "---:|" * len(g.x_values)]
            entry["paired"] = {}
            for m in g.methods:
                if m == ref:
                    continue
                cells = [paired_cell(g, m, ref, x) for x in g.x_values]
                entry["paired"][m] = {str(x): d for x, (_, d) in zip(g.x_values, cells)}
                r.markdown.append(f"| {m} | " + " | ".join(text for text, _ in cells) + " |")
            r.markdown.append("")
            r.summary["settings"].append(entry)
        return r
