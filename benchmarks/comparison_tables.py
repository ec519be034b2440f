"""Markdown tables from the JSON lines of benchmarks/comparison.py: one table per
(model, pruning), rows = methods, columns = K; cells = mean ± sample std of top-1 over seeds,
[n seeds], and the mean compression seconds per run (evaluation excluded).

    python benchmarks/comparison_tables.py docs/results/comparison_*.jsonl
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


ORDER = ["l1", "l1+ft", "l1-finetune", "bp", "cp", "cp+ft", "thinet", "thinet+ft", "fskd", "fskd+ft", "fitnet",
         "magnitude", "magnitude+bn", "magnitude+ft", "ours-nocross", "ours-nocross+bn", "ours-nocross+ft",
         "ours", "ours+bn", "ours+ft", "ours+ft(hints)", "ours-mixed", "ours-mixed+bn", "ours-mixed+ft",
         "ours-nocross[closed-form]", "ours[closed-form]", "ours+ft[closed-form]", "ours-mixed[closed-form]", "ours[paper]"]


def rank(method: str) -> tuple[int, str]:
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def cell(values: list[float]) -> str:
    m = statistics.mean(values)
    if len(values) == 1:
        return f"{m:.1f} [1]"
    return f"{m:.1f} ± {statistics.stdev(values):.1f} [{len(values)}]"


def main(paths: list[str]) -> int:
    rows = []
    for p in paths:
        with open(p) as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    rows = [r for r in rows if r.get("eval", "test") == "test"
            and not ("prune" not in r and r.get("overrides"))]  # baselines.md: its ablation lines out
    for r in rows:
        if "prune" not in r and r["method"] == "ours":  # benchmarks/baselines.py line (baselines.md run)
            r["method"] = "ours-mixed (baselines.md run, earlier damping)"
        kind = f"keep {r['keep']}" if r.get("prune", "channels") == "channels" else f"sparsity {r['sparsity']}"
        groups[(r["model"], kind)].append(r)
    for (model, kind), rs in sorted(groups.items()):
        shots = sorted({r["shots"] for r in rs})
        methods = sorted(dict.fromkeys(r["method"] for r in rs), key=rank)
        teacher = rs[0]["teacher_top1"]
        print(f"\n### {model}, {kind} (teacher {teacher:.1f} %, {rs[0]['n_eval']} test images)\n")
        print("| method | " + " | ".join(f"K={k} top-1 (%) | s" for k in shots) + " |")
        print("|---|" + "---|---|" * len(shots))
        for m in methods:
            cells = []
            for k in shots:
                sel = {}
                for r in rs:  # one run per seed (the last line wins if a run was repeated)
                    if r["method"] == m and r["shots"] == k:
                        sel[r["seed"]] = r
                if sel:
                    cells.append(cell([r["top1"] for r in sel.values()]))
                    secs = f"{statistics.mean(r['compress_seconds'] for r in sel.values()):.0f}"
                    if any(r.get("device", "cpu") != "cpu" for r in sel.values()):
                        secs += " (GPU)"  # training steps on a GPU: not comparable with the CPU seconds
                    cells.append(secs)
                else:
                    cells += ["–", ""]
            print(f"| {m} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
