"""PNG plots of sweep results. Figures are built without pyplot, so no GUI backend and no
global figure state are involved (safe in threads, servers and tests)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from crossdistill.reporting.results import SettingGroup

_MARKERS = "osD^v<>phX*"
_TITLE_WIDTH = 80  # characters of a 10-point title line that fit a 7.5-inch figure


def _title(first: str, second: str) -> str:
    """Both lines wrapped to the figure's width: a centred title longer than the figure runs
    off both edges (a long model path lost its start)."""
    return "\n".join(textwrap.fill(part, width=_TITLE_WIDTH) for part in (first, second))


def _model_name(model: str) -> str:
    """A user model's 'path/to/file.py:function' as 'file.py:function' (the report's tables give
    the whole path); a registered name as it is."""
    path, sep, func = model.rpartition(":")
    return f"{Path(path).name}{sep}{func}" if sep and ("/" in path or "\\" in path) else model


def _seeds_text(groups: Sequence[SettingGroup], hollow: bool = False) -> str:
    counts = {c.n_seeds for g in groups for c in g.cells.values()}
    if len(counts) == 1:
        n = counts.pop()
        return f"mean ± std over {n} seed{'s' if n != 1 else ''}"
    single = "; hollow markers: one seed" if hollow and 1 in counts else ""
    return f"mean ± std over {min(counts)} to {max(counts)} seeds{single}"


def _mark_single_seeds(ax: Any, handle: Any, pts: Sequence[tuple[float, float, float, int]], marker: str) -> None:
    """Points that are one seed's result (no spread to show) drawn hollow over the line's own,
    so that they do not read as means like the others."""
    single = [(x, y) for x, y, _, n in pts if n == 1]
    if single:
        colour = handle.lines[0].get_color()
        ax.plot([p[0] for p in single], [p[1] for p in single], linestyle="none", marker=marker, markersize=5,
                markerfacecolor="white", markeredgecolor=colour, zorder=3)


def _min_span(ax: Any, span: float = 5.0) -> None:
    """At least `span` points of accuracy on the y axis: autoscaled around one point or close
    ones, 91.0-91.5 filled the plot and a 0.5-point gap read as a large one."""
    lo, hi = ax.get_ylim()
    if hi - lo < span:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - span / 2, mid + span / 2)


def _make_room_above(ax, y: float) -> None:
    # Reference lines do not take part in autoscaling; one on the frame's edge would be invisible.
    lo, hi = ax.get_ylim()
    top = max(hi, y)
    if y > hi - 0.03 * (hi - lo):
        ax.set_ylim(lo, top + 0.06 * (top - lo))


# Above this many entries a legend inside the axes hides the data (seven methods and the teacher
# covered the prune-only line): it goes to the right of them.
_LEGEND_INSIDE = 4


def _legend(fig: Figure, ax: Any, handles: list) -> None:
    """The legend inside the axes for a few lines; beside them, the figure widened to hold it,
    for many (a sweep of 36 methods covered its own plot). Beyond ten lines the colours repeat,
    so lines are told apart by marker and dash as well."""
    if len(handles) <= _LEGEND_INSIDE:
        ax.legend(handles=handles, fontsize=8, loc="best")
        fig.tight_layout()
        return
    for i, h in enumerate(handles):
        line = h.lines[0] if hasattr(h, "lines") else h
        if i >= 10 and hasattr(line, "set_linestyle"):
            line.set_linestyle(("--", ":", "-.")[(i // 10 - 1) % 3])
    columns = 1 if len(handles) <= 24 else 2
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 3.6 * columns, max(height, 0.19 * len(handles) / columns + 1.2))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=columns,
              borderaxespad=0.0)
    fig.tight_layout()


def accuracy_vs_shots(group: SettingGroup) -> Figure:
    """Top-1 against K: one line per method with error bars over seeds, the teacher dashed."""
    fig = Figure(figsize=(7.5, 5.0), dpi=110)
    ax = fig.add_subplot()
    xs = group.x_values
    handles: list = []  # methods first, then the teacher, in the legend
    mixed = len({c.n_seeds for c in group.cells.values()}) > 1
    for i, m in enumerate(group.methods):
        cells = [group.cell(m, x) for x in xs]
        pts = [(x, c.mean, c.std, c.n_seeds) for x, c in zip(xs, cells) if c is not None]
        if not pts:
            continue
        marker = _MARKERS[i % len(_MARKERS)]
        handles.append(ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], label=m,
                                   marker=marker, markersize=5, capsize=3, linewidth=1.5))
        if mixed:  # when every point is one seed, the title says so
            _mark_single_seeds(ax, handles[-1], pts, marker)
    if group.teacher_top1 is not None:
        handles.append(ax.axhline(group.teacher_top1, color="0.3", linestyle="--", linewidth=1,
                                  label=f"teacher ({group.teacher_top1:.2f} %)"))
        _make_room_above(ax, group.teacher_top1)
    _min_span(ax)
    ax.set_xticks(xs)
    if group.x_field == "shots":
        ax.set_xlabel("K (training images per class)")
    else:
        ax.set_xlabel("N (training images)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(_title(f"{_model_name(group.model)}, {group.compression}: top-1 on {group.n_eval} "
                        f"{group.eval_role} images", f"({group.eval_name}; {_seeds_text([group], hollow=True)})"),
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(fig, ax, handles)
    return fig


def accuracy_vs_flops(groups: Sequence[SettingGroup], x: int | None = None) -> Figure:
    """Top-1 against FLOPs per image at one K, across the compression settings of one teacher:
    one line per method joining its compression levels, the teacher as a star."""
    groups = list(groups)
    if x is None:
        common = set.intersection(*(set(g.x_values) for g in groups)) if groups else set()
        x = max(common) if common else max(v for g in groups for v in g.x_values)
    # A line joins one method's compression levels only: settings beside the level (a global
    # budget against the uniform one, another method) make lines of their own, named by them.
    families = {id(g): _family(g) for g in groups}
    differing = {k for f in families.values() for k, v in f if any(dict(o).get(k) != v for o in families.values())}
    lines: list[tuple[str, tuple]] = []
    for g in groups:
        lines += [(m, families[id(g)]) for m in g.methods if (m, families[id(g)]) not in lines]
    fig = Figure(figsize=(7.5, 5.0), dpi=110)
    ax = fig.add_subplot()
    handles: list = []
    missing: list[str] = []
    for i, (m, family) in enumerate(lines):
        pts = sorted(
            (c.flops / 1e6, c.mean, c.std) for g in groups if families[id(g)] == family
            for c in [g.cell(m, x)] if c is not None and c.flops is not None
        )
        extra = ", ".join(f"{k.removeprefix('method.')}={v}" for k, v in family if k in differing)
        if not pts:
            missing.append(f"{m} ({extra})" if extra else m)
            continue
        handles.append(ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                                   label=f"{m} ({extra})" if extra else m,
                                   marker=_MARKERS[i % len(_MARKERS)], markersize=5, capsize=3, linewidth=1.5))
    g0 = groups[0]
    if g0.teacher_top1 is not None and g0.teacher_flops is not None:
        handles += ax.plot([g0.teacher_flops / 1e6], [g0.teacher_top1], marker="*", markersize=14, color="0.2",
                linestyle="none", label=f"teacher ({g0.teacher_top1:.2f} %)")
    _min_span(ax)
    x_name = "K" if g0.x_field == "shots" else "N"
    # A method not run at this K is named, not silently left out.
    absent = f"; not run at {x_name}={x}: {', '.join(dict.fromkeys(missing))}" if missing else ""
    ax.set_xlabel("MFLOPs per image (2 per multiply-accumulate)")
    ax.set_ylabel("top-1 accuracy (%)")
    levels = ", ".join(g.compression for g in groups)
    ax.set_title(_title(f"{_model_name(g0.model)}: top-1 on {g0.n_eval} {g0.eval_role} images vs FLOPs at "
                        f"{x_name}={x}", f"({levels}; {_seeds_text(groups)}{absent})"), fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(fig, ax, handles)
    return fig


# The settings that set how much a method compresses: the x axis of the FLOPs plot.
LEVEL_SETTINGS = ("method.keep", "method.flops", "method.parameters", "method.sparsity", "method.bits",
                  "method.rank_ratio", "method.flops_ratio")


def _family(g: SettingGroup) -> tuple[tuple[str, Any], ...]:
    """The group's compression setting without its level: runs that differ only in the level
    lie on one line."""
    return tuple(sorted((k, v) for k, v in g.config.items()
                        if k not in LEVEL_SETTINGS and (k == "method" or k.startswith("method."))))


def save_png(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, format="png")
    return path
