"""The project's error types. Each one carries a one-line message and the exit code the CLIs use."""


class CnnParityError(Exception):
    """Base class: a failure the CLIs report as one line, then exit with `exit_code`."""

    exit_code = 1


class UsageError(CnnParityError):
    """Bad input from the user: an unknown model, an invalid flag value, an unusable path."""

    exit_code = 2


class DataError(UsageError):
    """A data set that cannot be found, or a file that is not the data set it claims to be."""


class RunError(CnnParityError):
    """A run that failed while running, e.g. a non-finite loss."""

    exit_code = 1
