"""The one exception type the project raises for problems a user can fix, and the warning for a
setting given where it does not apply."""


class CrossDistillError(Exception):
    """Bad input, missing files, corrupt data or an unsupported model.

    The CLI prints its message (no traceback) and exits with status 2.
    """


class ConfigWarning(UserWarning):
    """A setting that was given but does not apply to the selected plug-in."""
