"""The demo's headline figures, as README quotes them.

README's demo sentence is `readme_text(figures)` of a committed demo report
(tests/data/demo_figures.json, written from `make demo`'s report.json by `make demo-figures`),
and a test keeps the two equal, so README cannot drift from what the demo prints:

    python -m crossdistill.demo.figures crossdistill-demo/report.json tests/data/demo_figures.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

# What makes two demo runs comparable: a report made with other settings says nothing about README.
SETTINGS = ("model", "method", "objective", "solver", "shots", "seed", "n_samples")


def figures(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers of a demo report.json and the settings that produced them."""
    rep = summary["report"]

    def head(m: Mapping[str, Any]) -> dict[str, Any]:
        return {"top1": m["top1"], "params": m["params"], "flops": m["flops"]}

    return {
        "teacher": head(summary["teacher"]),
        "prune_only": head(summary["prune_only"]),
        "cross_distilled": head(summary["cross_distilled"]),
        "n_eval": summary["n_eval"],
        "recipe": summary["recipe"],
        # The recipe gives a teacher per machine (training's rounding follows the CPU's vector
        # kernels and thread count); the figures follow from the teacher it gave.
        "teacher_weights": {k: summary["teacher"].get(k) for k in ("sha256", "threads", "cpu_capability")},
        "settings": {k: rep.get(k) for k in SETTINGS},
        "versions": rep.get("versions", {}),
    }


def same_run(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two figure sets come from demo runs with the same settings, test set and teacher."""
    teachers = [(f.get("teacher_weights") or {}).get("sha256") for f in (a, b)]
    return all(a.get(k) == b.get(k) for k in ("n_eval", "recipe", "settings")) and teachers[0] == teachers[1]


def readme_text(fig: Mapping[str, Any]) -> str:
    """The sentence README holds between its demo-figures markers."""
    t, p, c = fig["teacher"], fig["prune_only"], fig["cross_distilled"]
    return (f"teacher {t['top1']:.2f} % ⇒ student {c['top1']:.2f} % (prune-only at the same size "
            f"{p['top1']:.2f} %), {t['params']:,} ⇒ {c['params']:,} params, {t['flops'] / 1e6:.2f} ⇒ "
            f"{c['flops'] / 1e6:.2f} MFLOPs")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m crossdistill.demo.figures DEMO_REPORT.json FIGURES.json", file=sys.stderr)
        return 2
    fig = figures(json.loads(Path(args[0]).read_text()))
    Path(args[1]).write_text(json.dumps(fig, indent=2, ensure_ascii=False) + "\n")
    print(f"{args[1]}: {readme_text(fig)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
