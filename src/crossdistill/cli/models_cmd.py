"""`crossdistill models`: the registered model names, with their size, FLOPs and input."""
from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the registered models (names --model takes besides your own path/to/file.py:function) with params, FLOPs and input size",
        description="The models `--model` accepts: family, input size (C, H, W), classes, parameters and "
        "FLOPs of one forward pass of one image (2 per multiply-add, as `crossdistill evaluate` counts), and "
        "the default mu of the mixed objective. Built on torch's meta device: nothing is allocated.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def model_rows() -> list[dict[str, Any]]:
    """One row per registered model, in name order."""
    import torch

    from crossdistill.evaluation import count_flops, count_params
    from crossdistill.models import create_model, list_models, model_info

    rows = []
    for name in sorted(list_models()):
        info = model_info(name)
        # The meta device gives shapes without memory or compute: ResNet-34 costs milliseconds.
        with torch.device("meta"):
            model = create_model(name).eval()
        rows.append({
            "name": name,
            "family": info.family,
            "input_size": list(info.input_size),
            "num_classes": info.num_classes,
            "params": count_params(model),
            "flops": count_flops(model, info.input_size),
            "default_mu": info.default_mu,
        })
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = ("model", "family", "input (C,H,W)", "classes", "params", "MFLOPs", "mu")
    body = [(r["name"], r["family"], "×".join(str(s) for s in r["input_size"]), str(r["num_classes"]),
             f"{r['params']:,}", f"{r['flops'] / 1e6:,.1f}", f"{r['default_mu']:g}") for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = []
    for row in [head, *body]:
        # Names and families left-aligned, numbers right-aligned.
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = model_rows()
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0
