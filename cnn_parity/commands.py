"""What every command of this project shares: an argument parser whose errors are one line, the
handling that turns any failure into one line and an exit status, and the flag types."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Callable

from cnn_parity.errors import CnnParityError, UsageError


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def report_errors(prog: str, body: Callable[[], int], stopped: Callable[[KeyboardInterrupt], str] | None = None,
                  internal_exit: int = 1, file_error_exit: int = 1) -> int:
    """Run a command's body and map what it raises to one line on stderr and an exit code, the same for
    every command: a CnnParityError its own code (2 bad input, 1 a failed run); an OSError (a file that
    cannot be read or written) `file_error_exit`, naming the path; a stop signal (KeyboardInterrupt, or
    one carrying the `signum` that stopped it) 128 + its number, saying what `stopped` reports was kept;
    any other exception `internal_exit`, as an internal error (a bug: the traceback with
    CNN_PARITY_DEBUG=1). Both are 1 unless the command gives 1 another meaning."""
    try:
        return body()
    except CnnParityError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C, a training run's stop, a study's signal passed on to its children
        signum = getattr(e, "signum", signal.SIGINT)
        said = stopped(e) if stopped is not None else "interrupted" if signum == signal.SIGINT else "terminated"
        print(f"{prog}: {said}", file=sys.stderr)
        return 128 + signum
    except OSError as e:  # the file system refused (unwritable, full, gone): the path and why
        where = f"{e.filename}: " if e.filename is not None else ""
        print(f"{prog}: error: {where}{e.strerror or e}", file=sys.stderr)
        return file_error_exit
    except Exception as e:
        return internal_error(prog, e, internal_exit)


def internal_error(prog: str, error: Exception, exit_code: int = 1) -> int:
    if os.environ.get("CNN_PARITY_DEBUG") == "1":
        raise error
    print(f"{prog}: error: internal error {type(error).__name__}: {error} "
          f"(set CNN_PARITY_DEBUG=1 for the traceback)", file=sys.stderr)
    return exit_code


def require_extra(module: str, extra: str) -> None:
    """Import `module`, a dependency of the optional extra `extra`; a one-line UsageError saying what to
    install where it is missing."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"this command needs {module}, which is not installed: pip install 'cnn-parity[{extra}]'") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer 0 or more, got {text!r}")
    return value


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
