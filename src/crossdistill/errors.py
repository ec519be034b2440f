"""The one exception type the project raises for problems a user can fix."""


class CrossDistillError(Exception):
    """Bad input, missing files, corrupt data or an unsupported model.

    The CLI prints its message (no traceback) and exits with status 2.
    """
