"""A run's folder: `config.json`, `metrics.jsonl` (one JSON object per epoch) and `summary.json`."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from cnn_parity.errors import RunError, UsageError

_VERSIONED = ("numpy", "jax", "jaxlib", "flax", "optax", "torch", "torchvision")


def versions(packages=_VERSIONED) -> dict[str, str]:
    """Python's and the installed packages' versions (read from metadata: imports nothing)."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def machine_info() -> dict:
    """The machine a result came from: CPU model and count, memory, GPUs (nvidia-smi), versions."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        pass
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
        if gpus.returncode == 0 and gpus.stdout.strip():
            info["gpus"] = gpus.stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        pass
    info["versions"] = versions()
    return info


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that a reader never sees a half-written file, even if this process dies."""
    _write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Workdir:
    """The output folder of one training run. With `writer=False` (the other processes of a
    multi-process run) it is only read: every write is left to the primary process."""

    def __init__(self, path: str | os.PathLike, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"

    def create(self) -> None:
        """Make the folder, refusing one that already holds a run (never overwrite results)."""
        if not self.writer:
            return
        if self.metrics_path.exists() or self.summary_path.exists():
            raise UsageError(f"workdir {self.path} already holds a run; pass another --workdir")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-")
            probe.close()
        except OSError as e:
            raise UsageError(f"workdir {self.path} is not writable: {e.strerror or e}") from None

    def open_for_resume(self) -> None:
        """Use an existing run's folder (or make it, if the run never started)."""
        if not self.path.is_dir():
            self.create()
        elif self.writer and not os.access(self.path, os.W_OK):
            raise UsageError(f"workdir {self.path} is not writable")

    def keep_epochs(self, last_epoch: int) -> None:
        """Drop epoch records after `last_epoch` (written after the checkpoint a run resumes from)."""
        if self.metrics_path.is_file():
            kept = [r for r in read_metrics(self.path) if r["epoch"] <= last_epoch]
            lines = "".join(json.dumps(r) + "\n" for r in kept)
            self._guarded(_write_text_atomic, self.metrics_path, lines)

    def write_config(self, config: dict[str, Any]) -> None:
        self._guarded(write_json_atomic, self.path / "config.json", config)

    def log_epoch(self, record: dict[str, Any]) -> None:
        def append():
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self._guarded(append)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._guarded(write_json_atomic, self.summary_path, summary)

    def _guarded(self, write, *args) -> None:
        if not self.writer:
            return
        try:
            write(*args)
        except OSError as e:
            raise RunError(f"cannot write to workdir {self.path}: {e.strerror or e}") from None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(Path(path) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def command_line() -> str:
    """The command as typed (`python -m flax_impl.train ...`), for rerunning a recorded run."""
    return shlex.join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]])
