"""The one exception type the project raises for problems a user can fix, and the warning for a
setting given where it does not apply."""


class CrossDistillError(Exception):
    """Bad input, missing files, corrupt data or an unsupported model.

    The CLI prints its message (no traceback) and exits with status 2.
    """


class ConfigWarning(UserWarning):
    """A setting that was given but does not apply to the selected plug-in."""


def outside_stacklevel() -> int:
    """The `stacklevel` that makes a warning point at the first caller outside crossdistill (the
    user's line), however deep in the package it is raised."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (torch appends whole graphs and stacks), or its
    type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
