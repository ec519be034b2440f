"""Entry point of the `crossdistill` command: one sub-command per module in COMMANDS."""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import sqlite3
import sys
import warnings
from typing import Any, Iterator, Sequence

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
    "crossdistill.cli.models_cmd",
    "crossdistill.cli.pack_cmd",
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


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Our own warnings (e.g. data that lacks classes) as one readable line on stderr, not
    Python's `file:line: Category: ...` with a source line; others keep their format."""
    default = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if category.__module__.startswith("crossdistill"):
            print(f"crossdistill: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Arguments; an unknown option is refused by its command's parser (its usage, not the top
    level's) with the nearest option it has."""
    args, extra = parser.parse_known_args(argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    given = list(sys.argv[1:] if argv is None else argv)
    for flag, value in zip(given, given[1:] + [None]):
        # `--out ""` (an unset shell variable) became the current folder: "output . already exists".
        if flag.startswith("--") and (value == "" and "=" not in flag or flag.endswith("=") and flag.count("=") == 1):
            commands[args.command].error(f"{flag.rstrip('=')} was given an empty value")
    if extra:
        sub = commands[args.command]
        options = [o for action in sub._actions for o in action.option_strings]
        flag = extra[0].split("=")[0]
        # An option of another command (compress --fitnet-epochs: baseline's) is named as such,
        # not matched to the nearest spelling here (--finetune-epochs).
        owners = [name for name, p in commands.items() if name != args.command
                  and any(flag in action.option_strings for action in p._actions)]
        near = difflib.get_close_matches(flag, options, n=1)
        hint = f" ({flag} is an option of crossdistill {' and '.join(owners)})" if owners and flag.startswith("--") \
            else f" (did you mean {near[0]}?)" if near else ""
        sub.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _exit_on_sigterm() -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) and SIGHUP leave through the normal exit path, as Ctrl-C
    does, so that a run's claim on --out and its temporary folder are removed, not left for the
    next run to clean."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    # SIGHUP too: a closed terminal or a dropped ssh session.
    from crossdistill import stop_request

    def stop(code: int) -> None:
        stop_request.request(code)  # kept, should the exception below be lost (stop_request.py)
        sys.exit(code)

    for sig, code in ((signal.SIGTERM, 143), (getattr(signal, "SIGHUP", None), 129)):
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, lambda *_, code=code: stop(code))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Building the parser imports every plug-in: seconds in which Ctrl-C is likely too.
        parser = build_parser()
    except KeyboardInterrupt:
        print("\ncrossdistill: interrupted", file=sys.stderr)
        return 130
    args = _parse(parser, argv)
    _exit_on_sigterm()
    try:
        with _one_line_warnings():
            status = int(args.func(args) or 0)
        from crossdistill import stop_request

        return stop_request.requested() or status
    except CrossDistillError as exc:
        print(f"crossdistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        # A sweep's results database failed under it (disk full, a file changed by another
        # program): every finished run is committed, so the message and a rerun are all it needs.
        print(f"crossdistill {args.command}: error: the results database failed: {exc} (every finished run is "
              "recorded; free the disk or fix the file, then run the same command to resume)", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output left (`crossdistill models | head`): not an error of ours. Point
        # stdout at devnull so that flushing it at exit does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if not exc.filename:
            raise  # not about a path the user gave: keep the traceback
        # Permission denied, disk full, a folder where a file belongs: the user's to fix, not a bug.
        print(f"crossdistill {args.command}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # On a line of its own (a progress bar may hold the current one); --out is written only
        # when a run completes, so an interrupted one leaves nothing there.
        print(f"\ncrossdistill {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        from crossdistill import stop_request

        code = stop_request.requested()
        if code is None:
            raise
        # A scheduler's log should say why the job ended (SIGTERM 143, SIGHUP 129).
        name = {143: "SIGTERM", 129: "SIGHUP"}.get(code, "a signal")
        print(f"\ncrossdistill {args.command}: stopped by {name}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
