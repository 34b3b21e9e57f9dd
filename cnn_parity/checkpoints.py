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
from cnn_parity.workdir import has_type, is_record
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


# What a checkpoint's meta.json holds, and the types (a checkpoint of an earlier version has the running
# epoch's losses as a list instead of their sum: cnn_parity/resume.py reads both).
_META_FIELDS = {"framework": str, "model": str, "recipe": dict, "pipeline": str, "steps": int, "records": list,
                "epoch_correct": float, "epoch_examples": int, "examples_seen": int, "train_time_s": float,
                "eval_time_s": float}


def read_meta(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's meta.json; UsageError, naming it, if it is unreadable or not a checkpoint's."""
    path = checkpoint / "meta.json"
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{path} is not a checkpoint's")
    wrong = [key for key, kind in _META_FIELDS.items() if not has_type(meta.get(key), kind)]
    old_losses = meta.get("epoch_losses")
    wrong += [] if has_type(meta.get("epoch_loss_sum"), float) or (
        isinstance(old_losses, list) and all(has_type(x, float) for x in old_losses)) else ["epoch_loss_sum"]
    wrong += [] if all(is_record(r, "epoch") for r in meta.get("records") or []) else ["records"]
    wrong += [] if has_type(meta.get("sessions", []), list) else ["sessions"]
    if wrong:
        raise UsageError(f"{path} is not a checkpoint's: its {wrong[0]} is {str(meta.get(wrong[0]))[:40]!r}")
    return meta


def load_weights(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """(model, canonical weights, info) from a checkpoint folder, a workdir (its newest checkpoint, or
    else its final `model.safetensors`) or a `.safetensors` file; info has `framework` (who trained
    it), `recipe` and `step` where known. A live run may prune the checkpoint found before it is read:
    a workdir is then looked at again, up to `_LIVE_RETRIES` times."""
    path = Path(path)
    for attempt in range(_LIVE_RETRIES):
        found = _weights_file(path)
        try:
            model, arrays, metadata = load_safetensors(found)
        except UsageError:
            if found.exists() or found.parent == path or attempt == _LIVE_RETRIES - 1:
                raise
            continue  # pruned by the run between finding it and reading it: the newer one
        break
    non_finite = [name for name, array in arrays.items() if not np.all(np.isfinite(array))]
    if non_finite:
        more = f" and {len(non_finite) - 1} more" if len(non_finite) > 1 else ""
        raise UsageError(f"{found} holds non-finite values (NaN or inf) in {non_finite[0]}{more}: "
                         f"not usable weights")
    in_checkpoint = found.name == "model.safetensors" and (found.parent / "meta.json").is_file()
    return model, arrays, {"framework": metadata.get("framework", "unknown"), "step": metadata.get("step"),
                           "recipe": _recipe_metadata(found, metadata), "path": str(found.parent if in_checkpoint else found)}


_LIVE_RETRIES = 5


def _weights_file(path: Path) -> Path:
    """The safetensors file `path` names: itself, a checkpoint's, a workdir's newest checkpoint's, or a
    workdir's final model."""
    if path.is_dir() and not (path / "meta.json").is_file():
        newest = latest(path)
        if newest is not None:
            return newest / "model.safetensors"
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        raise UsageError(f"{path} holds no complete checkpoint and no model.safetensors")
    weights_file = path / "model.safetensors" if path.is_dir() else path
    if not weights_file.is_file():
        raise UsageError(f"no checkpoint or weights file at {path}")
    return weights_file


def _recipe_metadata(weights_file: Path, metadata: dict[str, str]) -> dict | None:
    if "recipe" not in metadata:
        return None
    try:
        recipe = json.loads(metadata["recipe"])
    except ValueError:
        recipe = None
    if not isinstance(recipe, dict):
        raise UsageError(f"{weights_file}: its recipe metadata is not a JSON recipe")
    return recipe
