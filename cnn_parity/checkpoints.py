"""Checkpoint folders, framework-neutral: layout, atomic commit, lookup.

    <workdir>/checkpoints/step_000001200/
        meta.json            position (epoch, step, the epoch's losses so far), the epoch records logged so
                             far, timings, recipe, framework
        model.safetensors    canonical weights (cnn_parity/weights.py): what evaluate/export read, either side
        state.msgpack / state.pt   the framework's own full state (optimiser, RNG) for an exact resume

A checkpoint is assembled in a hidden `.tmp-*` folder and renamed into place only when complete, and
only folders named `step_*` holding `meta.json` are ever picked up: a process killed at any moment
leaves either the previous checkpoint or the new one, never a half-written one that is used. The same
step checkpointed again (after that step's evaluation, or by a resumed run) only replaces `meta.json`,
atomically: the state at a step does not change.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnn_parity.errors import RunError, UsageError
from cnn_parity.files import fsync_dir, write_bytes_atomic
from cnn_parity.weights import load_safetensors, save_safetensors
from cnn_parity.files import write_json_atomic

KEEP = 2  # newest checkpoints kept; older ones are removed after each new commit


def root(workdir: str | os.PathLike) -> Path:
    return Path(workdir) / "checkpoints"


def complete(workdir) -> list[Path]:
    """The workdir's complete checkpoints, oldest first."""
    folder = root(workdir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith("step_") and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))


def latest(workdir: str | os.PathLike) -> Path | None:
    found = complete(workdir)
    return found[-1] if found else None


def write(workdir: str | os.PathLike, step: int, meta: dict[str, Any], canonical: dict[str, np.ndarray],
          save_state: Callable[[Path], None]) -> Path:
    """Commit a checkpoint of global step `step`; `save_state(folder)` writes the framework state into it
    (raising OSError, and only that, when it cannot). Any failure raises RunError and leaves the
    previous checkpoints as they were, and no temporary folder behind."""
    for name, array in canonical.items():
        if not np.all(np.isfinite(array)):
            raise RunError(f"parameter {name} became non-finite by step {step}; stopped, no checkpoint written")
    folder = root(workdir)
    final = folder / f"step_{step:09d}"
    tmp = folder / f".tmp-step_{step:09d}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if (final / "meta.json").is_file():
            write_json_atomic(final / "meta.json", meta)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_state(tmp)
            save_safetensors(tmp / "model.safetensors", meta["model"], canonical,
                             {"framework": meta["framework"], "step": str(step), "recipe": json.dumps(meta["recipe"])})
            write_json_atomic(tmp / "meta.json", meta)  # last: its presence marks the folder complete
            shutil.rmtree(final, ignore_errors=True)  # an incomplete folder of this step, left by a killed writer
            os.rename(tmp, final)
            fsync_dir(folder)
        for old in complete(workdir)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in folder.glob(".tmp-*"):  # left by killed processes
            shutil.rmtree(stale, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"cannot write checkpoint {final}: {e.strerror or e}") from None
    return final


def export_final(workdir: str | os.PathLike, checkpoint: Path) -> Path:
    """Copy a checkpoint's canonical weights to WORKDIR/model.safetensors (the run's final model)."""
    path = Path(workdir) / "model.safetensors"
    try:
        write_bytes_atomic(path, (checkpoint / "model.safetensors").read_bytes())
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def read_meta(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's meta.json; UsageError if it is unreadable or not a checkpoint's."""
    try:
        meta = json.loads((checkpoint / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{checkpoint}/meta.json is unreadable ({e})") from None
    if not isinstance(meta, dict) or not {"framework", "model", "recipe", "steps"} <= set(meta):
        raise UsageError(f"{checkpoint}/meta.json is not a checkpoint's")
    return meta


def load_weights(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """(model, canonical weights, info) from a checkpoint folder, a workdir (its newest checkpoint, or
    else its final `model.safetensors`) or a `.safetensors` file; info has `framework` (who trained
    it), `recipe` and `step` where known."""
    path = Path(path)
    if path.is_dir() and not (path / "meta.json").is_file():
        newest = latest(path)
        if newest is not None:
            path = newest
        elif (path / "model.safetensors").is_file():
            path = path / "model.safetensors"
        else:
            raise UsageError(f"{path} holds no complete checkpoint and no model.safetensors")
    weights_file = path / "model.safetensors" if path.is_dir() else path
    if not weights_file.is_file():
        raise UsageError(f"no checkpoint or weights file at {path}")
    model, arrays, metadata = load_safetensors(weights_file)
    non_finite = [name for name, array in arrays.items() if not np.all(np.isfinite(array))]
    if non_finite:
        more = f" and {len(non_finite) - 1} more" if len(non_finite) > 1 else ""
        raise UsageError(f"{weights_file} holds non-finite values (NaN or inf) in {non_finite[0]}{more}: "
                         f"not usable weights")
    recipe = None
    if "recipe" in metadata:
        try:
            recipe = json.loads(metadata["recipe"])
        except ValueError:
            recipe = None
        if not isinstance(recipe, dict):
            raise UsageError(f"{weights_file}: its recipe metadata is not a JSON recipe")
    info = {"framework": metadata.get("framework", "unknown"), "step": metadata.get("step"), "recipe": recipe,
            "path": str(path)}
    return model, arrays, info
