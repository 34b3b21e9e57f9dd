"""Stop signals of a training run: the first SIGINT (Ctrl-C) or SIGTERM asks the run to checkpoint and
stop at the end of its current chunk of steps (at most CHECK_EVERY; the first chunk includes XLA's
compilation, and a signal is seen only when Python runs again); the run then ends with `Interrupted`.
A second one, a second or more after the first, stops at once (`StopNow`), keeping the checkpoints
written so far."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


class StopRequest:
    """The first SIGINT (Ctrl-C) or SIGTERM (`kill`, `timeout`, a scheduler's pre-emption): finish the
    current chunk of steps, checkpoint, stop. Another one, a second or more later, stops at once; one
    sooner is the same request delivered twice (a launcher such as torchrun forwards what the terminal
    already sent to its whole process group). Two signals that both arrive while native code runs
    (XLA compiling, a jitted chunk) reach Python together and count as one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_WITHIN_S = 1.0

    def __init__(self):
        self.signal: int | None = None  # the first stop signal received
        self._received_at = 0.0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def reclaim(self) -> None:
        """Handle the signals again after a library took them over (JAX's distributed runtime installs a
        SIGTERM handler of its own, its preemption notifier, in jax.distributed.initialize)."""
        if self._previous:
            for signum in self.SIGNALS:
                signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.signal is not None:
            if now - self._received_at >= self.REPEAT_WITHIN_S:
                raise StopNow(signum)
            return
        self.signal, self._received_at = signum, now
        print(f"\n{signal.Signals(signum).name}: checkpointing after the current steps (send it again to stop at once)",
              file=sys.stderr)

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal after writing its checkpoint; the CLI exits 128 + the signal's number."""

    def __init__(self, checkpoint: Path | None, signum: int):
        super().__init__()
        self.checkpoint, self.signum = checkpoint, signum


class StopNow(KeyboardInterrupt):
    """A second stop signal: the run stops where it is, keeping the checkpoints it wrote; the CLI exits
    128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum
