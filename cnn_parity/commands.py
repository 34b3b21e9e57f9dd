"""What every command of this project shares: an argument parser whose errors are one line, the
handling that turns any failure into one line and an exit status, and the flag types."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable

from cnn_parity.errors import CnnParityError


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def report_errors(prog: str, body: Callable[[], int], internal_exit: int = 1) -> int:
    """Run a command's body; a CnnParityError becomes one line on stderr and its exit code, and so
    does any other exception (a bug: exit `internal_exit`, 1 unless the command gives 1 another
    meaning; the traceback with CNN_PARITY_DEBUG=1)."""
    try:
        return body()
    except CnnParityError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C, or a signal passed on to children (cnn_parity.runs.Stopped)
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"{prog}: {'interrupted' if signum == signal.SIGINT else 'terminated'}", file=sys.stderr)
        return 128 + signum
    except Exception as e:
        return internal_error(prog, e, internal_exit)


def internal_error(prog: str, error: Exception, exit_code: int = 1) -> int:
    if os.environ.get("CNN_PARITY_DEBUG") == "1":
        raise error
    print(f"{prog}: error: internal error {type(error).__name__}: {error} "
          f"(set CNN_PARITY_DEBUG=1 for the traceback)", file=sys.stderr)
    return exit_code


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
