"""Continuing a run: what its workdir records (config.json and the options of each segment), and the
checkpoint it continues from, refusing what would change the run's meaning."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from cnn_parity import checkpoints
from cnn_parity.errors import UsageError
from cnn_parity.recipes import Recipe
from cnn_parity.trainer import Progress, Trainer
from cnn_parity.workdir import Workdir, run_differences


# Options under which a resumed run still computes bitwise what an uninterrupted one would; the others
# (conv_impl, devices) change float rounding.
_EXACT_ACROSS = ("api",)


def record_config(workdir: Workdir, config: dict[str, Any], step: int) -> dict[str, Any]:
    """Write config.json (unless it already says the same; its command is the one that started the
    run) and return it. Its `segments` say from which step the run ran with which options: a resume
    with other options starts a segment, and says whether results stay bitwise those of one run."""
    recorded = workdir.read_config()
    segments = list((recorded or {}).get("segments") or
                    ([{"from_step": 0, "options": recorded.get("options", {})}] if recorded else []))
    if not segments or segments[-1]["options"] != config["options"]:
        if segments and workdir.writer:
            before, after = segments[-1]["options"], config["options"]
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            exact = all(k in _EXACT_ACROSS for k in changed)
            changes = ", ".join(f"{k} {before.get(k)} -> {after.get(k)}" for k in changed)
            effect = ("results stay bitwise those of an uninterrupted run" if exact else
                      "float rounding differs from here on: no longer bitwise an uninterrupted run")
            print(f"resume: from step {step} the run changes {changes} ({effect})", file=sys.stderr)
        segments.append({"from_step": step, "options": config["options"]})
    config = {**config, "segments": segments}
    if recorded is None or {k: v for k, v in recorded.items() if k != "command"} != \
            {k: v for k, v in config.items() if k != "command"}:
        workdir.write_config(config)
    return config


def restore(recipe: Recipe, trainer: Trainer, workdir: Workdir, last_step: int) -> Progress:
    """Restore the newest usable checkpoint (falling back past damaged ones), or start afresh where the
    run never checkpointed; refuse anything that would change the run's meaning. The epoch records
    become those the checkpoint holds."""
    current = {"framework": trainer.framework, "pipeline": trainer.pipeline, "recipe": recipe.to_dict()}
    recorded = workdir.read_config()
    if recorded is not None:
        changed = run_differences(recorded, current)
        if changed:
            raise UsageError(f"{workdir.path} holds another run ({recorded['recipe'].get('model')}, "
                             f"{recorded.get('framework')}; differs in: {', '.join(changed)}): resume it with its "
                             f"original flags, or pass another --workdir")
    found = checkpoints.complete(workdir.path)
    progress, damaged = None, []
    for checkpoint in reversed(found):
        try:
            meta = checkpoints.read_meta(checkpoint)
        except UsageError as e:
            damaged.append(str(e))
            continue
        changed = run_differences(meta, current)
        if changed:
            raise UsageError(f"{checkpoint} was written by another run (differs in: {', '.join(changed)}); "
                             f"resume it with its original flags and framework, or evaluate it with --checkpoint")
        try:
            trainer.restore_state(checkpoint)
        except Exception as e:  # a damaged state file fails in whatever way its deserialiser does
            damaged.append(f"{checkpoint}: its state is unreadable ({type(e).__name__})")
            continue
        progress = _progress(meta, trainer.steps_per_epoch)
        break
    if workdir.writer:
        for reason in damaged:
            print(f"skipping damaged checkpoint: {reason}", file=sys.stderr)
    if progress is None:
        if damaged:
            raise UsageError(f"{workdir.path} holds no usable checkpoint ({damaged[0]})")
        if workdir.metrics_path.is_file():
            raise UsageError(f"{workdir.path} has no complete checkpoint to resume from (it was trained without "
                             f"--checkpoint-every and stopped); start it again in another --workdir, or delete this one")
        if workdir.writer:
            print(f"resume: {workdir.path} holds no checkpoint yet; starting the run from step 0", file=sys.stderr)
        return Progress()
    if progress.steps > last_step:
        raise UsageError(f"the run in {workdir.path} is already at step {progress.steps}; "
                         f"this command would end it at step {last_step}: pass its --epochs and --max-steps or larger")
    if workdir.writer:
        print(f"resuming from {checkpoint} (step {progress.steps})", file=sys.stderr)
    return progress


def _progress(meta: dict[str, Any], steps_per_epoch: int) -> Progress:
    """Where a checkpoint's run stands. A checkpoint of an earlier version kept the running epoch's losses
    as a list (their float64 sum is the same exact number the running sum holds now) and recorded an
    epoch that --max-steps cut short, which is no record now."""
    if "epoch_losses" in meta:
        records = meta["records"]
        if meta["steps"] % steps_per_epoch and records and records[-1]["steps"] == meta["steps"]:
            records = records[:-1]
        meta = {**meta, "epoch_loss_sum": sum(float(x) for x in meta["epoch_losses"]), "records": records}
        if records and records[-1]["steps"] == meta["steps"]:  # its epoch recorded: the next one starts
            meta.update(epoch_loss_sum=0.0, epoch_correct=0.0, epoch_examples=0)
    return Progress(**{f.name: meta[f.name] for f in dataclasses.fields(Progress) if f.name in meta})
