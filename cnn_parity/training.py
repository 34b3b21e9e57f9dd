"""The training loop both frameworks share (`fit`): one flat loop over the run's global steps, as
Flax's imagenet example and big_vision loop. Each turn trains a chunk of steps (at most CHECK_EVERY,
never across an epoch's end or a due checkpoint), updates the progress bar and the step records; at an
epoch's end it evaluates and records the epoch; then it acts on a stop request (SIGINT / SIGTERM:
checkpoint and stop, cnn_parity/stop_signals.py) and on a due checkpoint.

Each framework supplies a `Trainer` (cnn_parity/trainer.py; flax_impl/train.py, torch_ref/train.py)
that runs the steps asked for and returns their metrics, evaluates, and saves/restores its own state;
what is printed, written and checkpointed, and when to stop, lives here once, so the two CLIs behave
identically. A run that `--max-steps` ends inside an epoch records no partial epoch: its last
evaluation and the part of the epoch it trained are in summary.json (`partial_epoch`), and a longer
run resumed from it goes on with that epoch as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cnn_parity import checkpoints
from cnn_parity.errors import RunError
from cnn_parity.provenance import command_line, machine_info, now, session, versions
from cnn_parity.recipes import Recipe, learning_rate
from cnn_parity.resume import record_config
from cnn_parity.resume import restore as resume_from_checkpoint
from cnn_parity.stop_signals import Interrupted, StopRequest
from cnn_parity.trainer import CHECK_EVERY, EvalResult, Progress, Trainer
from cnn_parity.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What a run is asked to do besides its recipe; every one changes what the run writes, so a
    workdir records them (config.json) and a bare `--resume` continues with them."""

    max_steps: int | None = None  # stop at this global step (smoke runs), else at the recipe's last
    checkpoint_every: int | None = None  # checkpoint every N steps and at each epoch's end
    log_every: int = 0  # a step record (steps.jsonl, TensorBoard) every N steps; 0: none
    tensorboard: bool = True  # TensorBoard event files beside the JSON records


def fit(recipe: Recipe, trainer: Trainer, workdir: Workdir, options: RunOptions, stop: StopRequest,
        resume: bool = False, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `recipe` to its last step (or `options.max_steps`), then write and return the summary; the
    run ends with its final checkpoint and its weights in WORKDIR/model.safetensors. `config` (the
    run's configuration) is recorded once the run is known to start or go on. A resumed run that has
    nothing left to do changes nothing and returns its summary."""
    started, load_at_start = time.time(), os.getloadavg()[0]
    last_step = recipe.epochs * trainer.steps_per_epoch
    last_step = last_step if options.max_steps is None else min(options.max_steps, last_step)
    progress = resume_from_checkpoint(recipe, trainer, workdir, last_step) if resume else Progress()
    if resume and progress.steps == last_step and (summary := workdir.finished_summary(progress.steps)) and \
            workdir.records_intact(progress.records, progress.steps):
        if workdir.writer:
            print(f"{workdir.path}: the run is finished at step {last_step}; nothing to do", file=sys.stderr)
        return summary
    if resume:
        workdir.restore_records(progress.records, progress.steps)
    progress.sessions.append(session(progress.steps))
    if config is not None:
        config = record_config(workdir, config, progress.steps)
    if options.tensorboard:
        workdir.start_tensorboard(recipe.to_dict(), progress.steps)
    progress = _train(recipe, trainer, workdir, options, stop, progress, last_step)
    partial = None
    if progress.steps % trainer.steps_per_epoch:
        _save(recipe, trainer, workdir, progress)  # kept, should the final evaluation be cut short
        progress, partial = _partial_epoch(trainer, progress)
    _finish(recipe, trainer, workdir, progress)
    summary = _summary(recipe, trainer, progress, partial, config or {}, started, resume)
    summary["speed_conditions"] = speed_conditions((config or {}).get("options", {}).get("threads"), load_at_start)
    if summary["speed_conditions"]["busy"] and workdir.writer:
        print(f"note: this run's speed was measured on a busy machine ({summary['speed_conditions']['why']}): its "
              f"samples/s is no clean figure (--threads and an idle machine make one)", file=sys.stderr)
    workdir.write_summary(summary)
    return summary


def speed_conditions(threads: int | None, load_at_start: float) -> dict[str, Any]:
    """What a run's speed was measured under: the threads it computed with and the machine's 1-minute
    load average at its start and end; busy where, at the end, the load beyond this run's own threads
    exceeds half a core (other work took cores from it)."""
    cores = os.cpu_count() or 1
    load_at_end = os.getloadavg()[0]
    others = load_at_end - min(threads or cores, cores)
    return {"threads": threads, "cores": cores, "load_average": {"start": load_at_start, "end": load_at_end},
            "busy": others > 0.5, "why": f"1-minute load average {load_at_end:.1f} on {cores} cores with this run's "
                                        f"{threads or cores} thread(s)"}


def _train(recipe: Recipe, trainer: Trainer, workdir: Workdir, options: RunOptions, stop: StopRequest,
           progress: Progress, last_step: int) -> Progress:
    """The loop: from `progress` to `last_step`; returns where it ended."""
    every = options.checkpoint_every
    with tqdm(total=last_step, initial=progress.steps, desc=f"{trainer.framework} {recipe.model}", unit="step",
              file=sys.stderr, leave=False, dynamic_ncols=True, disable=not workdir.writer) as bar:
        while progress.steps < last_step or _epoch_unrecorded(progress, trainer.steps_per_epoch):
            epoch_end = False
            if not _epoch_unrecorded(progress, trainer.steps_per_epoch):
                count = _chunk(progress.steps, trainer.steps_per_epoch, last_step, every)
                progress, losses = _train_chunk(trainer, progress, count)
                bar.update(count)
                bar.set_postfix(epoch=_epoch(progress, trainer), loss=f"{losses[-1]:.4f}", refresh=False)
                _log_steps(workdir, recipe, trainer, progress.steps - count + 1, losses, options.log_every)
            due = every is not None and progress.steps % every == 0
            if _epoch_unrecorded(progress, trainer.steps_per_epoch):
                if due or progress.steps == last_step:  # its training kept, should its evaluation be cut short
                    _save(recipe, trainer, workdir, progress)
                progress, epoch_end = _record_epoch(recipe, trainer, workdir, progress), True
            if trainer.any_process(stop.requested):
                raise Interrupted(_finish(recipe, trainer, workdir, progress), stop.signal or signal.SIGTERM)
            if progress.steps < last_step and (due or (every is not None and epoch_end)):
                _save(recipe, trainer, workdir, progress)
    return progress


def train_to(trainer: Trainer, progress: Progress, end: int) -> Progress:
    """Train from `progress` to global step `end` in the loop's own chunks, recording nothing: the
    training the benchmarks time."""
    while progress.steps < end:
        progress, _ = _train_chunk(trainer, progress, _chunk(progress.steps, trainer.steps_per_epoch, end, None))
    return progress


def _epoch(progress: Progress, trainer: Trainer) -> int:
    """The epoch the last step done belongs to (1-based)."""
    return max(progress.steps - 1, 0) // trainer.steps_per_epoch + 1


def _epoch_unrecorded(progress: Progress, steps_per_epoch: int) -> bool:
    """Whether the last step done ends an epoch whose record is not logged yet."""
    recorded = bool(progress.records) and progress.records[-1]["steps"] == progress.steps
    return progress.steps > 0 and progress.steps % steps_per_epoch == 0 and not recorded


def _chunk(steps: int, steps_per_epoch: int, last_step: int, checkpoint_every: int | None) -> int:
    """How many steps the next chunk trains: up to CHECK_EVERY, never past the epoch's end, the last
    step or a step where a checkpoint is due."""
    limits = [CHECK_EVERY, steps_per_epoch - steps % steps_per_epoch, last_step - steps]
    if checkpoint_every is not None:
        limits.append(checkpoint_every - steps % checkpoint_every)
    return min(limits)


def _train_chunk(trainer: Trainer, progress: Progress, count: int) -> tuple[Progress, list[float]]:
    """`count` steps from `progress`, read back: the new progress and the steps' losses. RunError at a
    non-finite loss, naming its step."""
    tick = time.perf_counter()
    epoch, start = progress.steps // trainer.steps_per_epoch + 1, progress.steps % trainer.steps_per_epoch
    metrics = trainer.train_steps(epoch, start, count)
    losses = [value for piece in metrics.losses for value in np.atleast_1d(np.asarray(piece, np.float64)).tolist()]
    correct = sum(float(np.sum(np.asarray(piece))) for piece in metrics.correct)
    seconds = time.perf_counter() - tick
    for i, value in enumerate(losses):
        if not math.isfinite(value):
            raise RunError(f"loss became {value} at step {progress.steps + i + 1}; stopped (learning rate too high?)")
    return dataclasses.replace(
        progress, steps=progress.steps + count, epoch_loss_sum=progress.epoch_loss_sum + sum(losses),
        epoch_correct=progress.epoch_correct + correct, epoch_examples=progress.epoch_examples + metrics.examples,
        examples_seen=progress.examples_seen + metrics.examples, train_time_s=progress.train_time_s + seconds), losses


def _evaluate(trainer: Trainer, progress: Progress) -> tuple[Progress, EvalResult]:
    """The test split's loss and accuracy; RunError if the loss is not finite (the weights diverged)."""
    tick = time.perf_counter()
    result = trainer.evaluate()
    if not math.isfinite(result.loss):
        raise RunError(f"the test loss became {result.loss} by step {progress.steps}; stopped (learning rate too high?)")
    return dataclasses.replace(progress, eval_time_s=progress.eval_time_s + time.perf_counter() - tick), result


def _epoch_figures(trainer: Trainer, progress: Progress, result: EvalResult) -> dict[str, Any]:
    """The running epoch's figures: its mean train loss and accuracy so far, and `result`'s test ones."""
    steps = progress.steps - (_epoch(progress, trainer) - 1) * trainer.steps_per_epoch
    return {"epoch": _epoch(progress, trainer), "steps": progress.steps,
            "train_loss": progress.epoch_loss_sum / steps, "train_accuracy": progress.epoch_correct / progress.epoch_examples,
            "test_loss": result.loss, "test_accuracy": result.accuracy}


def _record_epoch(recipe: Recipe, trainer: Trainer, workdir: Workdir, progress: Progress) -> Progress:
    """Evaluate the epoch just trained, log its record, and start the next epoch's sums."""
    progress, result = _evaluate(trainer, progress)
    record = {**_epoch_figures(trainer, progress, result), "train_time_s": progress.train_time_s,
              "eval_time_s": progress.eval_time_s}
    workdir.log_epoch(record)
    if workdir.writer:
        tqdm.write(f"epoch {record['epoch']:>2}/{recipe.epochs}  train loss {record['train_loss']:.4f}  "
                   f"train acc {100 * record['train_accuracy']:6.2f}%  test loss {result.loss:.4f}  "
                   f"test acc {100 * result.accuracy:6.2f}%  (total {progress.train_time_s + progress.eval_time_s:.1f} s)",
                   file=sys.stdout)
        sys.stdout.flush()
    return dataclasses.replace(progress, records=[*progress.records, record], epoch_loss_sum=0.0, epoch_correct=0.0,
                               epoch_examples=0)


def _partial_epoch(trainer: Trainer, progress: Progress) -> tuple[Progress, dict[str, Any]]:
    """A run stopped inside an epoch (--max-steps): that epoch's figures so far, and an evaluation of the
    final weights, for summary.json (no epoch record: the epoch is not over)."""
    progress, result = _evaluate(trainer, progress)
    return progress, {**_epoch_figures(trainer, progress, result), "steps_in_epoch": progress.steps % trainer.steps_per_epoch,
                      "train_time_s": progress.train_time_s, "eval_time_s": progress.eval_time_s}


def _log_steps(workdir: Workdir, recipe: Recipe, trainer: Trainer, first: int, losses: list[float], every: int) -> None:
    """The step records of every `every`-th step among `losses` (global steps from `first`), each with
    the learning rate its update used."""
    records = [{"step": step, "epoch": (step - 1) // trainer.steps_per_epoch + 1, "loss": loss,
                "learning_rate": learning_rate(recipe, step - 1, trainer.steps_per_epoch)}
               for step, loss in enumerate(losses, start=first) if every and step % every == 0]
    if records:
        workdir.log_steps(records)


def _save(recipe: Recipe, trainer: Trainer, workdir: Workdir, progress: Progress) -> Path | None:
    """A checkpoint of `progress` (written by the primary process); its session ends here so far."""
    trainer.collect_state()
    if not workdir.writer:
        return None
    progress.sessions[-1].update(to_step=progress.steps, ended_at=now())
    workdir.flush_events()
    meta = {"framework": trainer.framework, "model": recipe.model, "recipe": recipe.to_dict(),
            "pipeline": trainer.pipeline, **dataclasses.asdict(progress)}
    return checkpoints.write(workdir.path, progress.steps, meta, trainer.canonical_weights(), trainer.save_state)


def _finish(recipe: Recipe, trainer: Trainer, workdir: Workdir, progress: Progress) -> Path | None:
    """The final checkpoint, and its weights as the run's model."""
    path = _save(recipe, trainer, workdir, progress)
    if path is not None:
        checkpoints.export_final(workdir.path, path)
    return path


def _summary(recipe: Recipe, trainer: Trainer, progress: Progress, partial: dict[str, Any] | None,
             config: dict[str, Any], started: float, resumed: bool) -> dict[str, Any]:
    last = partial or progress.records[-1]
    return {
        "model": recipe.model, "framework": trainer.framework, "pipeline": trainer.pipeline,
        "options": config.get("options", {}), "segments": config.get("segments", []), "dataset": recipe.dataset,
        "epochs": len(progress.records), "steps": progress.steps, "partial_epoch": partial,
        "batch_size": recipe.batch_size, "seed": recipe.seed, "num_params": trainer.num_params,
        **{key: last[key] for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")},
        "train_time_s": progress.train_time_s, "eval_time_s": progress.eval_time_s,
        "train_samples_per_s": progress.examples_seen / progress.train_time_s if progress.train_time_s else None,
        "wall_time_s": time.time() - started, "resumed": resumed, "device": trainer.device,
        "machine": machine_info(with_versions=False),  # so a run's timings can be read against its CPU
        "versions": versions(), "provenance": {"sessions": progress.sessions},
        "command": command_line(), "recipe": recipe.to_dict(),
    }
