"""What every report kind is: a plug-in (declared settings, like objectives and solvers) that
turns the rows of a results database into markdown, plots and a JSON summary."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from crossdistill.errors import CrossDistillError
from crossdistill.params import Plugin
from crossdistill.reporting.results import RunRow


@dataclass
class Rendered:
    """A kind's part of report.md, of report.json, and the plot files it wrote."""

    markdown: list[str]
    summary: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)


@dataclass
class ReportKind(Plugin):
    """Base of the report kinds; `render` receives every row (failed ones too: the caller lists
    those) and the folder to write plots into."""

    kind: ClassVar[str] = "report kind"
    name: ClassVar[str] = ""

    def render(self, rows: Sequence[RunRow], out: Path) -> Rendered:
        raise NotImplementedError


# Plot names are `accuracy_vs_flops_<slug>.png` and the like: a slug of a user model's long path
# made names past the file system's 255 bytes ("File name too long", nothing written).
_SLUG_MAX = 80


def slug(text: str) -> str:
    """A file-name-safe form of a label, at most _SLUG_MAX characters (a longer one keeps its
    start and a hash of the whole, so two long labels still get two names)."""
    import hashlib

    out = re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "setting"
    if len(out) > _SLUG_MAX:
        out = f"{out[:_SLUG_MAX - 9].rstrip('-')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return out


def parse_match(text: str) -> dict[str, str]:
    """'objective=nocross,solver=closed-form' → the dotted settings a method must have; how the
    kinds that compare against one method (`reference`) name it without knowing its label."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise CrossDistillError(f"reference {text!r}: expected KEY=VALUE[,KEY=VALUE], e.g. objective=nocross")
        out[key.strip()] = value.strip()
    return out


def check_matched(configs: Sequence[Mapping[str, Any]], wanted: Mapping[str, str], what: str) -> None:
    """Refuse a KEY=VALUE reference that no run has and that is one letter or so from what the
    runs have (objective=nocros): a report whose every table says "no paired differences" reads
    as a finding, not a typo. A value far from every one is left to the tables' note (a sweep
    file may name a reference whose runs are still to come)."""
    import difflib

    from crossdistill.params import format_value

    if not configs or any(matches(c, wanted) for c in configs):
        return
    keys = sorted({k for c in configs for k in c})
    for key, value in wanted.items():
        if key not in keys:
            near = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
            if near:
                raise CrossDistillError(f"{what} {key}={value}: no run sets {key} (did you mean {near[0]}?)")
            continue
        found = sorted({format_value(c[key]) for c in configs if key in c})
        try:
            float(value)
            continue  # 0.5 against 0.25 is another setting (runs still to come), not a typo
        except ValueError:
            pass
        near = difflib.get_close_matches(value, found, n=1, cutoff=0.75)
        if value not in found and near:
            raise CrossDistillError(f"{what} {key}={value}: no run has it (did you mean {key}={near[0]}? the runs "
                                    f"have {key} {', '.join(found)})")


def matches(config: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    """Whether a row's flat settings have every wanted value (compared as text: 0.9 == '0.9')."""
    from crossdistill.params import format_value

    return all(key in config and format_value(config[key]) == value for key, value in wanted.items())
