"""Checkpoint folders, framework-neutral: layout, atomic commit, lookup.

    <workdir>/checkpoints/step_000001200/
        meta.json            position (epoch, step, the epoch's losses so far), timings, recipe, framework
        model.safetensors    canonical weights (cnn_parity/weights.py): what evaluate/export read, either side
        state/ or state.pt   the framework's own full state (optimiser, RNG) for an exact resume

A checkpoint is assembled in a hidden `.tmp-*` folder and renamed into place only when complete, and
only folders named `step_*` holding `meta.json` are ever picked up: a process killed at any moment
leaves either the previous checkpoint or the new one, never a half-written one that is used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnn_parity.errors import RunError, UsageError
from cnn_parity.weights import load_safetensors, save_safetensors
from cnn_parity.workdir import write_json_atomic

KEEP = 2  # newest checkpoints kept; older ones are removed after each new commit


def root(workdir: str | os.PathLike) -> Path:
    return Path(workdir) / "checkpoints"


def _complete(workdir) -> list[Path]:
    folder = root(workdir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith("step_") and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))


def latest(workdir: str | os.PathLike) -> Path | None:
    complete = _complete(workdir)
    return complete[-1] if complete else None


def write(workdir: str | os.PathLike, step: int, meta: dict[str, Any], canonical: dict[str, np.ndarray],
          save_state: Callable[[Path], None]) -> Path:
    """Commit a checkpoint of global step `step`; `save_state(folder)` writes the framework state into it."""
    for name, array in canonical.items():
        if not np.all(np.isfinite(array)):
            raise RunError(f"parameter {name} became non-finite by step {step}; stopped, no checkpoint written")
    folder = root(workdir)
    final = folder / f"step_{step:09d}"
    tmp = folder / f".tmp-step_{step:09d}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_state(tmp)
        save_safetensors(tmp / "model.safetensors", meta["model"], canonical,
                         {"framework": meta["framework"], "step": str(step), "recipe": json.dumps(meta["recipe"])})
        write_json_atomic(tmp / "meta.json", meta)  # last: its presence marks the folder complete
        if final.exists():  # the same step again (after a resume): the committed one is already complete
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
            _fsync_dir(folder)
        for old in _complete(workdir)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in folder.glob(".tmp-*"):  # left by killed processes
            shutil.rmtree(stale, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"cannot write checkpoint in {folder}: {e.strerror or e}") from None
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_meta(checkpoint: Path) -> dict[str, Any]:
    with open(checkpoint / "meta.json") as f:
        return json.load(f)


def load_weights(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """(model, canonical weights, info) from a checkpoint folder, a workdir (its newest checkpoint) or a
    `.safetensors` file; info has `framework` (who trained it), `recipe` and `step` where known."""
    path = Path(path)
    if path.is_dir() and not (path / "meta.json").is_file():
        newest = latest(path)
        if newest is None:
            raise UsageError(f"{path} holds no complete checkpoint (train with --checkpoint-every N)")
        path = newest
    weights_file = path / "model.safetensors" if path.is_dir() else path
    if not weights_file.is_file():
        raise UsageError(f"no checkpoint or weights file at {path}")
    model, arrays, metadata = load_safetensors(weights_file)
    info = {"framework": metadata.get("framework", "unknown"), "step": metadata.get("step"),
            "recipe": json.loads(metadata["recipe"]) if "recipe" in metadata else None, "path": str(path)}
    return model, arrays, info
