"""Uniform vs global channel budgets at the same FLOPs: per model and target, top-1 side by side
with the paired difference draw by draw, the FLOPs each reached, seconds per stage, and a plot of
the per-group plan (kept share of each group under either budget)."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from matplotlib.figure import Figure

from crossdistill.reporting.kinds.base import Rendered, ReportKind, slug
from crossdistill.reporting.results import IGNORED_FIELDS, RunRow


def _target(config: dict[str, Any]) -> str:
    flops, parameters = config.get("method.flops"), config.get("method.parameters")
    if flops is not None:
        return f"flops {flops:g}"
    if parameters is not None:
        return f"parameters {parameters:g}"
    return f"keep {config.get('method.keep')}"


def _variant(config: dict[str, Any]) -> str:
    """'uniform' for the plain reference; else the budget, plus what else the run added before or
    after the solve (views of the few images, a recovery fine-tune)."""
    if config.get("method.budget", "uniform") == "uniform":
        label = "uniform"
    else:
        label = (f"global (min_keep {config.get('method.min_keep', 0.1):g}, "
                 f"cost {config.get('method.budget_cost', 'absolute')})")
    if config.get("views"):
        label += f" + {config['views']} {config.get('views_policy', 'affine')} views"
    if config.get("finetune.epochs"):
        # Not the epochs: a recovery of a fixed number of steps has different epochs at each K,
        # and its rows belong in one table (the epochs are printed beside its seconds).
        label += (f" + recovery ({config.get('finetune.mode', 'kd')}, "
                  f"{config.get('finetune.schedule', 'constant')} lr {config.get('finetune.lr', 1e-4):g})")
    return label


def _differing(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The settings in which two runs of one cell differ, as `key=value` of `a`; those that do not
    change a result (IGNORED_FIELDS) left out."""
    keys = sorted(k for k in set(a) | set(b) if k not in IGNORED_FIELDS and a.get(k) != b.get(k))
    return ", ".join(f"{k}={a.get(k)}" for k in keys)


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:  # one draw has no spread to show: "± 0.00" would claim one
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def _seconds(row: RunRow) -> dict[str, float]:
    rep = row.report or {}
    out = {"compress": float(row.compress_seconds or 0.0), "solve": float(rep.get("solve_seconds") or 0.0),
           "budget": float((rep.get("channel_budget") or {}).get("seconds") or 0.0)}
    ft = rep.get("finetune") or {}
    if isinstance(ft, dict) and ft.get("seconds") is not None:
        out["recovery"] = float(ft["seconds"])
    return out


def _plan_plot(uniform: RunRow, global_: RunRow, title: str) -> Figure:
    groups_u = {g["group"]: g for g in uniform.report["channel_groups"]["pruned"]}
    groups_g = {g["group"]: g for g in global_.report["channel_groups"]["pruned"]}
    ids = [gid for gid in groups_u if gid in groups_g]
    names = [(groups_u[g]["readers"] or groups_u[g]["producers"] or ["?"])[0] for g in ids]
    fig = Figure(figsize=(max(7.0, 0.28 * len(ids) + 2), 4.5), dpi=110)
    ax = fig.add_subplot()
    xs = list(range(len(ids)))
    ax.bar([x - 0.2 for x in xs], [groups_u[g]["kept"] / groups_u[g]["width"] for g in ids], width=0.4,
           label="uniform")
    ax.bar([x + 0.2 for x in xs], [groups_g[g]["kept"] / groups_g[g]["width"] for g in ids], width=0.4,
           label="global")  # the variant is in the title
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("share of the group's channels kept")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


@dataclass
class BudgetReport(ReportKind):
    """Channel pruning runs that differ only in `budget`, paired by model, target, K and seed."""

    name: ClassVar[str] = "budget"

    def render(self, rows: Sequence[RunRow], out: Path) -> Rendered:
        r = Rendered(["Uniform keep vs a global channel budget at the same FLOPs (with, where run, views "
                      "of the few images in the solve and a recovery fine-tune after it). Top-1: mean ± sample standard "
                      "deviation over few-shot draws (seeds); paired difference: per draw (same K and seed) "
                      "this − uniform, in points, mean (draws where it was ahead / draws). Seconds: wall-clock "
                      "seconds (at the run's threads; report.json records threads and load) of the whole compression (the budget's allocation included), mean over draws, "
                      "and for global its stages: the allocation, capture + moments + slimming, the layer "
                      "solves, and the fine-tune (recovery) where one ran.",
                      ""], {"settings": []})
        cells: dict[tuple, dict[str, dict[tuple[int, int], RunRow]]] = {}
        for row in rows:
            c = row.config
            if row.status != "ok" or c.get("method") != "channels" or row.student_top1 is None:
                continue
            # Runs of other weights, training data or class numbering are not pairs: last in the key,
            # so that the tables keep their order.
            key = (c.get("model"), c.get("eval_data"), _target(c), c.get("objective"), c.get("solver"),
                   json.dumps([c.get("weights"), c.get("data"), c.get("classes")], default=str))
            side, slot = _variant(c), (c["shots"], c["seed"])
            while slot in cells.get(key, {}).get(side, {}):
                # The variant's label leaves out the epochs (they differ by K): a later run of
                # the same cell with other settings (400 epochs where 300 ran) is a table of its
                # own, named by what differs, not a silent replacement of the first.
                diff = _differing(c, cells[key][side][slot].config)
                if not diff:
                    break  # the same run again (latency, device, batch size aside): the later row
                side = f"{side} [{diff}]"
            cells.setdefault(key, {}).setdefault(side, {})[slot] = row
        for key in sorted(cells, key=str):
            uni = cells[key].get("uniform", {})
            for variant in sorted(v for v in cells[key] if v != "uniform"):
                if uni:
                    self._table(r, out, key, uni, cells[key][variant], variant)
        if not r.summary["settings"]:
            r.markdown.append("No model and target has both uniform and global runs.")
        return r

    def _table(self, r: Rendered, out: Path, key: tuple, uni: dict, glo: dict, variant: str) -> None:
        model, eval_data, target, objective, solver, _ = key
        any_row = next(iter(uni.values()))
        r.markdown += [f"### {model}, channels {target}, {objective} / {solver}: uniform vs {variant}",
                       "", f"{any_row.n_eval} images of `{Path(str(eval_data)).name}`; teacher "
                       f"{any_row.teacher_top1:.2f} %, {any_row.teacher_flops / 1e6:.2f} MFLOPs.", "",
                       "| K | seeds | uniform | this | this − uniform | MFLOPs uniform / this "
                       "| seconds uniform / this | this: budget / capture+moments / solves / recovery |",
                       "|---|---|---|---|---|---|---|---|"]
        entry: dict[str, Any] = {"model": model, "eval_data": eval_data, "target": target, "rows": []}
        for k in sorted({s for s, _ in uni} | {s for s, _ in glo}):
            seeds = sorted({sd for s, sd in uni if s == k} & {sd for s, sd in glo if s == k})
            if not seeds:
                continue
            u = [uni[(k, s)] for s in seeds]
            g = [glo[(k, s)] for s in seeds]
            diffs = [b.student_top1 - a.student_top1 for a, b in zip(u, g)]
            mean_diff = round(statistics.fmean(diffs), 2) + 0.0
            su = statistics.fmean(_seconds(x)["compress"] for x in u)
            sg = statistics.fmean(_seconds(x)["compress"] for x in g)
            sb = statistics.fmean(_seconds(x)["budget"] for x in g)
            ss = statistics.fmean(_seconds(x)["solve"] for x in g)
            sr = [_seconds(x).get("recovery") for x in g]
            recovery = f"{statistics.fmean(sr):.1f}" if all(v is not None for v in sr) else "–"
            epochs = sorted({x.config.get("finetune.epochs") for x in g if x.config.get("finetune.epochs")})
            # Whatever the compression spent besides the budget and the solves: capture, moments, slimming.
            rest = max(0.0, sg - sb - ss - (statistics.fmean(sr) if recovery != "–" else 0.0))
            fu = statistics.fmean(x.student_flops for x in u) / 1e6
            fg = statistics.fmean(x.student_flops for x in g) / 1e6
            r.markdown.append(
                f"| {k} | {','.join(map(str, seeds))} | {_mean_sd([x.student_top1 for x in u])} | "
                f"{_mean_sd([x.student_top1 for x in g])} | {mean_diff:+.2f} ({sum(d > 0 for d in diffs)}/"
                f"{len(diffs)}) | {fu:.2f} / {fg:.2f} | {su:.1f} / {sg:.1f} | {sb:.1f} / {rest:.1f} / {ss:.1f} / "
                f"{recovery}{' (' + '/'.join(map(str, epochs)) + ' epochs)' if epochs else ''} |")
            entry["rows"].append({"shots": k, "seeds": seeds, "uniform": [x.student_top1 for x in u],
                                  "global": [x.student_top1 for x in g], "paired_mean": mean_diff,
                                  "seconds_uniform": su, "seconds_global": sg, "seconds_budget": sb,
                                  "seconds_solves": ss, "seconds_recovery": None if recovery == "–" else float(recovery),
                                  "mflops_uniform": fu, "mflops_global": fg})
        # The plan of one draw (the largest K, first seed): which groups gave up channels.
        both = sorted(set(uni) & set(glo), key=lambda ks: (-ks[0], ks[1]))
        # A recovery fine-tune trains after the plan is made: its plan is the budget's own, plotted there.
        if both and "recovery" not in variant and all("channel_groups" in (x.report or {}) for x in (uni[both[0]], glo[both[0]])):
            shots, seed = both[0]
            fig = _plan_plot(uni[both[0]], glo[both[0]],
                             f"{model}, channels {target}: kept share per group (K={shots}, seed {seed})\n"
                             f"uniform vs {variant}")
            name = f"plan-{slug(str(model))}-{slug(target)}-{slug(variant)}.png"
            fig.savefig(out / name)
            r.plots.append(name)
            r.markdown += ["", f"![per-group plan]({name})"]
        r.markdown.append("")
        entry["variant"] = variant
        r.summary["settings"].append(entry)
