"""A run's folder: `config.json`, `metrics.jsonl` (one JSON object per epoch), `steps.jsonl` (every
--log-every steps), `summary.json`, `model.safetensors` (the final weights), `checkpoints/` and the
TensorBoard event files; locked by the process that writes it. Every record file a run writes is read
back here, and a damaged one is named with its file and line."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from cnn_parity.errors import RunError, UsageError
from cnn_parity.files import write_bytes_atomic, write_json_atomic
from cnn_parity.frameworks import FRAMEWORKS
from cnn_parity.recipes import PROVENANCE, with_defaults
from cnn_parity.tensorboard_log import EVENT_FILE_MARK

# What a run leaves in its workdir, by name; a folder holding any of these belongs to a run, or to
# someone else, and is never taken over unless provably a run's own (Workdir.create).
RUN_FILES = ("config.json", "metrics.jsonl", "steps.jsonl", "summary.json", "model.safetensors", "checkpoints")
# The event files this project's runs write: tensorboardX's name with the writing process's suffix.
_OWN_EVENT_FILE = re.compile(rf"events\.out\.{EVENT_FILE_MARK}\.\d+\.[^/]*\.\d+\.\d+")
# The keys of a run's config.json and their types: anything else is not one.
CONFIG_FIELDS = {"framework": str, "pipeline": str, "max_steps": (int, type(None)), "checkpoint_every": (int, type(None)),
                 "log_every": int, "tensorboard": bool, "options": dict, "segments": list, "command": str,
                 "recipe": dict}
# The longest path a run writes below its workdir is under 100 bytes
# (checkpoints/.tmp-step_NNNNNNNNN-PID/.model.safetensors.XXXXXXXX.tmp); checked up front, so a
# too-deep workdir is refused at the start, not when its first checkpoint is written.
_LONGEST_INSIDE = 128


def run_holding(path: str | os.PathLike) -> Path | None:
    """The run workdir that the real path of `path` (links resolved) lies in, or None."""
    for folder in Path(os.path.realpath(path)).parents:
        if (folder / "metrics.jsonl").is_file() or any((folder / "checkpoints").glob("step_*")) or \
                config_problem(folder / "config.json") is None:
            return folder
    return None


def check_new_output(path: str | os.PathLike, is_ours, force: bool = False) -> Path:
    """The real path (links resolved) to write an output file to, after refusing one inside a run's
    workdir (it belongs to that run) or an existing file that `is_ours(path)` does not recognise as
    this project's own output of the same kind (unless `force`): no command overwrites what it did not
    make, and what was checked is what is written."""
    real = Path(os.path.realpath(path))
    run = run_holding(real)
    if run is not None:
        shown = path if str(real) == os.path.abspath(path) else f"{path} (really {real})"
        raise UsageError(f"{shown} is inside the workdir of a run ({run}), which belongs to that run: write elsewhere")
    if real.exists() and not real.is_dir() and not force and not is_ours(real):
        raise UsageError(f"{path} exists and was not written by this command: pass --force to replace it, "
                         f"or name another file")
    return real


def config_problem(path: Path) -> str | None:
    """Why `path` is not a run's config.json (None if it is one): a JSON object of CONFIG_KEYS with a
    known framework and a recipe naming its model."""
    try:
        config = json.loads(path.read_bytes())
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    except ValueError as e:
        return f"it is not JSON ({e})"
    if not isinstance(config, dict):
        return "it is not a JSON object"
    if unknown := sorted(set(config) - set(CONFIG_FIELDS)):
        return f"it has keys no run writes ({', '.join(map(str, unknown[:3]))})"
    if wrong := [key for key, value in config.items() if not has_type(value, CONFIG_FIELDS[key])]:
        return f"its {wrong[0]} is {config[wrong[0]]!r}"
    if config.get("framework") not in FRAMEWORKS:
        return f"its framework is {config.get('framework')!r}, not one of {', '.join(FRAMEWORKS)}"
    if not isinstance(config.get("recipe"), dict) or not isinstance(config["recipe"].get("model"), str):
        return "it names no recipe"
    return None


class Workdir:
    """The output folder of one training run, owned by one process at a time (an advisory lock on
    `.lock`, released when the process ends however it ends; the file is removed when the run ends, and
    one a killed run left is taken over by the next). With `writer=False` (the other processes
    of a multi-process run) it is only read: every write is left to the primary process. Its path is
    the real one (links resolved): what is checked is what is written."""

    def __init__(self, path: str | os.PathLike, writer: bool = True):
        self.given = Path(path)
        self.path = Path(os.path.realpath(path))
        self.writer = writer
        self.metrics_path = self.path / "metrics.jsonl"
        self.steps_path = self.path / "steps.jsonl"
        self.summary_path = self.path / "summary.json"
        self.config_path = self.path / "config.json"
        self.model_path = self.path / "model.safetensors"
        self._lock_file = None
        self.events = None  # the TensorBoard event log (cnn_parity/tensorboard_log.py), once started

    def create(self) -> None:
        """Make and lock the folder for a new run. A folder holding files of a run's names is refused
        unless they are provably those of a run that stopped before its first record or checkpoint
        (its config by schema, step records and event files of this project): those are replaced."""
        self._open()
        if not self.writer:
            return
        present = sorted(p.name for p in self.path.iterdir() if p.name in RUN_FILES or EVENT_FILE_MARK in p.name)
        if not present:
            return
        foreign = self._foreign(present)
        refusal = None
        if foreign:
            refusal = (f"workdir {self.given} holds files this project did not write or a run cannot be taken "
                       f"over from ({'; '.join(foreign[:3])}): pass another --workdir")
        elif set(present) - {"config.json", "steps.jsonl"} - {p for p in present if _OWN_EVENT_FILE.fullmatch(p)}:
            refusal = (f"workdir {self.given} already holds a run ({', '.join(present)}); continue it with "
                       f"--resume, or pass another --workdir")
        if refusal is not None:
            self._unlock()  # a refused folder is left exactly as it was
            raise UsageError(refusal)
        print(f"workdir {self.given}: its earlier run stopped before its first record or checkpoint; starting anew",
              file=sys.stderr)
        try:
            for name in present:
                (self.path / name).unlink()
        except OSError as e:
            raise UsageError(f"workdir {self.given} is not writable: {e.strerror or e}") from None

    def _foreign(self, present: list[str]) -> list[str]:
        """The files among `present` that are not provably this project's, each with why."""
        why = []
        if "config.json" in present and (problem := config_problem(self.config_path)):
            why.append(f"config.json: {problem}")
        if "steps.jsonl" in present:
            try:
                read_records(self.steps_path, "step")
            except UsageError as e:
                why.append(str(e))
        why += [f"{name}: not an event file of this project's runs" for name in present
                if EVENT_FILE_MARK in name and not _OWN_EVENT_FILE.fullmatch(name)]
        return why

    def open_for_resume(self) -> None:
        """Lock an existing run's folder (or make it, if the run never started)."""
        self._open()

    def _open(self) -> None:
        if not self.writer:
            return
        _check_path_length(self.path)
        lock_path = self.path / ".lock"
        while self._lock_file is None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                lock = open(lock_path, "a+")
            except OSError as e:
                raise UsageError(f"workdir {self.given} is not writable: {e.strerror or e}") from None
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                owner = lock.read().strip() or "another process"
                lock.close()
                raise UsageError(f"workdir {self.given} is in use by a running training process ({owner}); wait for "
                                 f"it to finish, or pass another --workdir") from None
            try:  # the file its holder removed on release, locked in between: lock the path's file anew
                current = os.stat(lock_path).st_ino == os.fstat(lock.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                self._lock_file = lock
            else:
                lock.close()
        self._lock_file.truncate(0)
        self._lock_file.write(f"pid {os.getpid()} on {platform.node()}\n")
        self._lock_file.flush()

    def read_config(self) -> dict[str, Any] | None:
        """The run's recorded configuration, or None if it never wrote one; UsageError if config.json is
        not a run's."""
        if not self.config_path.exists():
            return None
        if problem := config_problem(self.config_path):
            raise UsageError(f"{self.config_path} is not a run's config: {problem}")
        return json.loads(self.config_path.read_bytes())

    def finished_summary(self, steps: int) -> dict[str, Any] | None:
        """summary.json if it is that of this run finished at global step `steps`, else None (a damaged
        one is written again when the run finishes again)."""
        try:
            summary = json.loads(self.summary_path.read_bytes())
        except (OSError, ValueError):
            return None
        fields = {"steps": int, "test_accuracy": float, "test_loss": float, "train_samples_per_s": (float, type(None))}
        valid = isinstance(summary, dict) and all(has_type(summary.get(key), kind) for key, kind in fields.items())
        return summary if valid and summary["steps"] == steps else None

    def write_config(self, config: dict[str, Any]) -> None:
        self._guarded(write_json_atomic, self.config_path, config)

    def records_intact(self, records: list[dict[str, Any]], step: int) -> bool:
        """Whether metrics.jsonl holds exactly `records` (a checkpoint's) and steps.jsonl nothing past
        `step` and nothing damaged: what a finished run left, untouched."""
        try:
            metrics = self.metrics_path.read_bytes() if self.metrics_path.exists() else b""
            steps = read_records(self.steps_path, "step") if self.steps_path.exists() else []
        except (OSError, UsageError):
            return False
        return metrics == _jsonl(records) and all(r["step"] <= step for r in steps)

    def restore_records(self, records: list[dict[str, Any]], step: int) -> None:
        """A resumed run's records: the epoch records its checkpoint holds, and the step records up to
        its step (the rest are trained again)."""
        if not self.writer:
            return
        self._guarded(write_bytes_atomic, self.metrics_path, _jsonl(records))
        if self.steps_path.exists():
            kept = [r for r in read_records(self.steps_path, "step", torn_last_line_ok=True) if r["step"] <= step]
            self._guarded(write_bytes_atomic, self.steps_path, _jsonl(kept))

    def log_steps(self, records: list[dict[str, Any]]) -> None:
        self._append(self.steps_path, records)
        if self.events is not None:
            self._guarded(self.events.steps, records)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self._append(self.metrics_path, [record])
        if self.events is not None:
            self._guarded(self.events.epoch, record)

    def _append(self, path: Path, records: list[dict[str, Any]]) -> None:
        def append():
            with open(path, "ab") as f:
                f.write(_jsonl(records))
        self._guarded(append)

    def start_tensorboard(self, recipe: dict[str, Any], steps: int) -> None:
        """From now on (global step `steps`) keep TensorBoard event files beside the JSON records."""
        if not self.writer:
            return
        from cnn_parity.tensorboard_log import EventLog

        def start():
            self.events = EventLog(self.path, recipe, steps)
        self._guarded(start)

    def flush_events(self) -> None:
        if self.events is not None:
            self._guarded(self.events.flush)

    def close(self) -> None:
        """Flush and close the event log (the JSON records are written as they come)."""
        if self.events is not None:
            self._guarded(self.events.close)
            self.events = None
        self._unlock()

    def _unlock(self) -> None:
        """Release the folder: its `.lock` removed while still held (a process waiting on the removed
        file sees it is gone and locks the path's new one), so a run leaves no lock file behind."""
        if self._lock_file is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path / ".lock")
        self._lock_file.close()
        self._lock_file = None

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._guarded(write_json_atomic, self.summary_path, summary)

    def _guarded(self, write, *args) -> None:
        if not self.writer:
            return
        try:
            write(*args)
        except OSError as e:
            raise RunError(f"cannot write to workdir {self.given}: {e.strerror or e}") from None


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode()


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
    run exactly as a longer run would have gone on, unless its schedule is cosine, which ends at the
    last epoch) and the recipe's provenance (recipes.PROVENANCE: a corrected citation changes no
    number). A recipe recorded by an earlier version, without the keys added since, is read with their
    defaults."""
    changed = [key for key in ("framework", "pipeline") if key in recorded and recorded[key] != current[key]]
    old, new = with_defaults(recorded.get("recipe") or {}), current["recipe"]
    ignored = {*PROVENANCE} | (set() if (new.get("schedule") or {}).get("name") == "cosine" else {"epochs"})
    changed += sorted(f"recipe {key}" for key in set(old) | set(new)
                      if key not in ignored and old.get(key) != new.get(key))
    return changed


# The fields each kind of record must hold, and their types (a bool is no number here).
_RECORD_FIELDS = {
    "epoch": {"epoch": int, "steps": int, "train_loss": float, "train_accuracy": float, "test_loss": float,
              "test_accuracy": float},
    "step": {"step": int, "epoch": int, "loss": float, "learning_rate": float},
}


def read_records(path: Path, kind: str, torn_last_line_ok: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON-lines file a run writes (`kind`: "epoch" for metrics.jsonl, "step" for
    steps.jsonl). UsageError naming the file and line of anything that is not such a record; with
    `torn_last_line_ok`, a last line without its newline (what a killed writer leaves) is left out."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: empty, or a line cut short
    if torn and not torn_last_line_ok:
        lines.append(torn)
    records = []
    for number, line in enumerate(lines, start=1):
        record = _record(line, kind)
        if record is None:
            raise UsageError(f"{path} line {number} is not {'an' if kind == 'epoch' else 'a'} {kind} record: "
                             f"{line[:60].decode(errors='replace')!r}")
        records.append(record)
    return records


def has_type(value: Any, kind: type | tuple[type, ...]) -> bool:
    """Whether a JSON value is of `kind` (a type or a tuple of them): an int is a float too, a bool is
    neither, and a float must be finite."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, float):
        return float in kinds and math.isfinite(value)
    if isinstance(value, int):
        return int in kinds or float in kinds
    return isinstance(value, kinds)


def is_record(record: Any, kind: str) -> bool:
    """Whether `record` is an epoch ("epoch") or step ("step") record as a run writes them."""
    return isinstance(record, dict) and all(has_type(record.get(key), t) for key, t in _RECORD_FIELDS[kind].items())


def _record(line: bytes, kind: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:  # not UTF-8 (UnicodeDecodeError is a ValueError) or not JSON
        return None
    return record if is_record(record, kind) else None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The epoch records of the run in `path` (a workdir): none yet where a run has started but not
    finished an epoch; UsageError names a line that is not a record."""
    metrics = Path(path) / "metrics.jsonl"
    if not metrics.exists() and config_problem(Path(path) / "config.json") is None:
        return []
    return read_records(metrics, "epoch")
