"""Entry point of the `crossdistill` command: one sub-command per module in COMMANDS."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from crossdistill._version import __version__
from crossdistill.errors import CrossDistillError

# Each module defines `register(subparsers)`; its parser sets `func(args) -> int`.
COMMANDS = [
    "crossdistill.cli.evaluate_cmd",
    "crossdistill.cli.compress_cmd",
    "crossdistill.cli.sweep_cmd",
    "crossdistill.cli.report_cmd",
    "crossdistill.cli.demo_cmd",
    "crossdistill.cli.baseline_cmd",
    "crossdistill.cli.export_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossdistill",
        description="Compress a pretrained network from a few samples per class by cross distillation.",
    )
    parser.add_argument("--version", action="version", version=f"crossdistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CrossDistillError as exc:
        print(f"crossdistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not exc.filename:
            raise  # not about a path the user gave: keep the traceback
        # Permission denied, disk full, a folder where a file belongs: the user's to fix, not a bug.
        print(f"crossdistill {args.command}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
