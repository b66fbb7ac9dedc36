"""Errors that the CLI turns into one clear line and an exit code, never a traceback."""


class UserError(Exception):
    """Bad input from the user: a file, field or option to fix. Exit code 2."""

    exit_code = 2


class NumericalError(Exception):
    """A non-finite loss or gradient stopped the run; the last good checkpoint is intact. Exit code 3."""

    exit_code = 3
