"""A run's folder: `config.json`, `metrics.jsonl` (one JSON object per epoch), `steps.jsonl` (every
--log-every steps), `summary.json`, `model.safetensors` (the final weights) and `checkpoints/`; locked
by the process that writes it."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from cnn_parity.errors import RunError, UsageError
from cnn_parity.files import write_bytes_atomic, write_json_atomic
from cnn_parity.recipes import PROVENANCE

# What a run leaves in its workdir; a folder holding any of these belongs to a run.
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoints")
# The longest path a run writes below its workdir is under 100 bytes
# (checkpoints/.tmp-step_NNNNNNNNN-PID/.model.safetensors.XXXXXXXX.tmp); checked up front, so a
# too-deep workdir is refused at the start, not when its first checkpoint is written.
_LONGEST_INSIDE = 128


def run_holding(path: str | os.PathLike) -> Path | None:
    """The run workdir `path` lies in (a folder with a run's config, records or checkpoints), or None."""
    for folder in Path(path).absolute().parents:
        if (folder / "metrics.jsonl").is_file() or _checkpoints_in(folder) or _holds_run_config(folder):
            return folder
    return None


def _checkpoints_in(folder: Path) -> bool:
    return any((folder / "checkpoints").glob("step_*"))


def _holds_run_config(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"framework", "recipe"} <= set(config)


def check_new_output(path: str | os.PathLike, is_ours, force: bool = False) -> None:
    """Refuse to write an output file into a run's workdir (it belongs to that run), or over an existing
    file that `is_ours(path)` does not recognise as this project's own output of the same kind (unless
    `force`): no command overwrites what it did not make."""
    path = Path(path)
    run = run_holding(path)
    if run is not None:
        raise UsageError(f"{path} is inside the workdir of a run ({run}), which belongs to that run: write elsewhere")
    if path.exists() and not path.is_dir() and not force and not is_ours(path):
        raise UsageError(f"{path} exists and was not written by this command: pass --force to replace it, "
                         f"or name another file")


class Workdir:
    """The output folder of one training run, owned by one process at a time (an advisory lock on
    `.lock`, released when the process ends however it ends). With `writer=False` (the other processes
    of a multi-process run) it is only read: every write is left to the primary process."""

    def __init__(self, path: str | os.PathLike, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.metrics_path = self.path / "metrics.jsonl"
        self.steps_path = self.path / "steps.jsonl"
        self.summary_path = self.path / "summary.json"
        self.config_path = self.path / "config.json"
        self.model_path = self.path / "model.safetensors"
        self._lock_file = None
        self.events = None  # the TensorBoard event log mirroring metrics.jsonl, once started

    def create(self) -> None:
        """Make and lock the folder for a new run, refusing one where a run already left anything."""
        self._open()
        if self.writer:
            left = [name for name in RUN_FILES if (self.path / name).exists()]
            if left == ["config.json"]:  # a run that failed before it logged or kept anything
                self._clear_unstarted_run()
            elif left:
                raise UsageError(f"workdir {self.path} already holds a run ({', '.join(left)}); continue it with "
                                 f"--resume, or pass another --workdir")

    def _clear_unstarted_run(self) -> None:
        """Take over a folder whose run stopped before its first epoch record or checkpoint: only its
        config, step records and TensorBoard events (all written by this project) are there, and they go."""
        print(f"workdir {self.path}: its earlier run stopped before its first record or checkpoint; starting anew",
              file=sys.stderr)
        try:
            for path in [self.config_path, *self.path.glob("events.out.tfevents.*")]:
                path.unlink()
            self.steps_path.unlink(missing_ok=True)
        except OSError as e:
            raise UsageError(f"workdir {self.path} is not writable: {e.strerror or e}") from None

    def open_for_resume(self) -> None:
        """Lock an existing run's folder (or make it, if the run never started)."""
        self._open()

    def _open(self) -> None:
        if not self.writer:
            return
        _check_path_length(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.path / ".lock", "a+")
        except OSError as e:
            raise UsageError(f"workdir {self.path} is not writable: {e.strerror or e}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            owner = self._lock_file.read().strip() or "another process"
            raise UsageError(f"workdir {self.path} is in use by a running training process ({owner}); wait for it "
                             f"to finish, or pass another --workdir") from None
        self._lock_file.truncate(0)
        self._lock_file.write(f"pid {os.getpid()} on {platform.node()}\n")
        self._lock_file.flush()

    def read_config(self) -> dict[str, Any] | None:
        """The run's recorded configuration, or None if it never wrote one."""
        if not self.config_path.is_file():
            return None
        try:
            config = json.loads(self.config_path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{self.config_path} is unreadable ({e}); it is not a run's config") from None
        if not isinstance(config, dict) or not isinstance(config.get("recipe"), dict):
            raise UsageError(f"{self.config_path} is not a run's config (no recipe)")
        return config

    def write_config(self, config: dict[str, Any]) -> None:
        self._guarded(write_json_atomic, self.config_path, config)

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace the epoch records (with those of the checkpoint a run resumes from)."""
        text = "".join(json.dumps(r) + "\n" for r in records)
        self._guarded(write_bytes_atomic, self.metrics_path, text.encode())
        if self.events is not None:
            self._guarded(self.events.rewrite, records, self.read_steps())

    def read_steps(self) -> list[dict[str, Any]]:
        """The step records logged so far (steps.jsonl); a last line cut short by a killed process is
        left out (it lies past the run's last checkpoint)."""
        if not self.writer or not self.steps_path.is_file():
            return []
        records = []
        for line in self.steps_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                break
        return records

    def keep_steps_until(self, step: int) -> None:
        """Drop the step records past `step` (those after the checkpoint a run resumes from)."""
        if self.writer and self.steps_path.is_file():
            kept = [r for r in self.read_steps() if r["step"] <= step]
            self._guarded(write_bytes_atomic, self.steps_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def log_steps(self, records: list[dict[str, Any]]) -> None:
        def append():
            with open(self.steps_path, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))
        self._guarded(append)
        if self.events is not None:
            self._guarded(self.events.append_steps, records)

    def log_epoch(self, record: dict[str, Any]) -> None:
        def append():
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self._guarded(append)
        if self.events is not None:
            self._guarded(self.events.append, record)

    def start_tensorboard(self, recipe: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """From now on keep TensorBoard event files beside metrics.jsonl and steps.jsonl, holding the
        recipe and the same records (cnn_parity/tensorboard_log.py)."""
        if not self.writer:
            return
        from cnn_parity.tensorboard_log import EventLog  # loads tensorboard: only runs that log to it

        def start():
            self.events = EventLog(self.path, recipe, records, self.read_steps())
        self._guarded(start)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._guarded(write_json_atomic, self.summary_path, summary)

    def _guarded(self, write, *args) -> None:
        if not self.writer:
            return
        try:
            write(*args)
        except OSError as e:
            raise RunError(f"cannot write to workdir {self.path}: {e.strerror or e}") from None


def _check_path_length(path: Path) -> None:
    absolute = path.absolute()
    limit = os.pathconf(absolute.anchor, "PC_PATH_MAX")
    if len(os.fsencode(absolute)) + _LONGEST_INSIDE > limit:
        raise UsageError(f"workdir path is {len(os.fsencode(absolute))} bytes long; the files a run writes inside it "
                         f"would exceed this system's {limit}-byte path limit: pass a shorter --workdir")
    existing = Path(absolute.anchor)  # each name is checked against its parent's file system
    for part in absolute.parts[1:]:
        name_limit = os.pathconf(existing, "PC_NAME_MAX")
        if len(os.fsencode(part)) > name_limit:
            raise UsageError(f"workdir name {part[:30]}... is {len(os.fsencode(part))} bytes long; this file system "
                             f"allows {name_limit}: pass a shorter --workdir")
        if not (existing / part).exists():
            break
        existing = existing / part


def run_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What would change a run's meaning between a recorded configuration (config.json or a checkpoint's
    meta) and the current one: framework, pipeline, any recipe key but `epochs` (more epochs continue a
    run exactly as a longer run would have gone on: no recipe has a schedule that depends on them) and
    the recipe's provenance (recipes.PROVENANCE: a corrected citation changes no number)."""
    changed = [key for key in ("framework", "pipeline") if key in recorded and recorded[key] != current[key]]
    old, new = recorded.get("recipe") or {}, current["recipe"]
    ignored = {"epochs", *PROVENANCE}
    changed += sorted(f"recipe {key}" for key in set(old) | set(new)
                      if key not in ignored and old.get(key) != new.get(key))
    return changed


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The epoch records of the run in `path`; UsageError names a line that is not a record."""
    metrics = Path(path) / "metrics.jsonl"
    try:
        lines = metrics.read_text().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read {metrics}: {e.strerror or e}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise UsageError(f"{metrics} line {number} is not an epoch record: {line[:60]!r}")
        records.append(record)
    return records
