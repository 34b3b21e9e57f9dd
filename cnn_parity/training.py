"""The training loop both frameworks share (`fit`): per-epoch and per-step records, checkpoints at
their steps, the non-finite-loss stop, stop signals (cnn_parity/stop_signals.py), resume
(cnn_parity/resume.py) and the run summary.

Each framework supplies a `Trainer` (cnn_parity/trainer.py; flax_impl/train.py, torch_ref/train.py)
that runs the training steps `fit` asks for and returns their metrics, evaluates, and saves/restores
its own state; everything around that (what is printed, written and checkpointed, and when to stop)
lives here once, so the two CLIs behave identically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from cnn_parity import checkpoints
from cnn_parity.errors import RunError
from cnn_parity.recipes import Recipe
from cnn_parity.resume import record_config
from cnn_parity.resume import restore as resume_from_checkpoint
from cnn_parity.stop_signals import Interrupted, StopRequest
from cnn_parity.trainer import CHECK_EVERY, EvalResult, Progress, StepMetrics, Trainer
from cnn_parity.provenance import command_line, machine_info, versions
from cnn_parity.workdir import Workdir


class EpochLog:
    """One epoch's per-step losses and correct counts, and its examples, as read back so far."""

    def __init__(self, progress: Progress):
        self.first_step = progress.steps - progress.step_in_epoch + 1  # global index of the epoch's first step
        self.losses = list(progress.epoch_losses)
        self.correct = progress.epoch_correct
        self.examples = progress.epoch_examples

    @property
    def steps(self) -> int:
        """Steps of this epoch done, including those before a resume."""
        return len(self.losses)

    def add(self, metrics: StepMetrics) -> list[float]:
        """Read back a run of steps; return its losses. RunError at a non-finite loss, naming its step."""
        losses = [value for piece in metrics.losses for value in np.atleast_1d(np.asarray(piece, np.float64)).tolist()]
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                raise RunError(f"loss became {value} at step {self.first_step + self.steps + i}; stopped "
                               f"(learning rate too high?)")
        self.losses += losses
        self.correct += sum(float(np.sum(np.asarray(piece))) for piece in metrics.correct)
        self.examples += metrics.examples
        return losses


def run_steps(trainer: Trainer, epoch: int, log: EpochLog, end: int,
              checkpoint_every: int | None = None) -> Iterator[list[float]]:
    """Train epoch `epoch` on from where `log` stands up to its step `end`, CHECK_EVERY steps at a time
    and never past a global step that is a multiple of `checkpoint_every`; yield each run's losses."""
    while log.steps < end:
        count = min(CHECK_EVERY, end - log.steps)
        if checkpoint_every is not None:
            done = log.first_step - 1 + log.steps
            count = min(count, checkpoint_every - done % checkpoint_every)
        yield log.add(trainer.train_steps(epoch, log.steps, count))


def fit(recipe: Recipe, trainer: Trainer, workdir: Workdir, max_steps: int | None = None,
        checkpoint_every: int | None = None, resume: bool = False,
        config: dict[str, Any] | None = None, tensorboard: bool = False,
        stop: StopRequest | None = None, log_every: int | None = None) -> dict[str, Any]:
    """Train for the recipe's epochs (or until global step `max_steps`), logging every epoch, checkpointing
    every `checkpoint_every` steps and at each epoch end (if set), on SIGINT / SIGTERM and at the end; return the
    summary. The run ends with its final checkpoint and its final weights in WORKDIR/model.safetensors.
    `config` (the run's configuration, config.json) is recorded once the run is known to start or go on.
    `tensorboard`: also log the epochs as TensorBoard events in the workdir (cnn_parity/tensorboard_log.py).
    `log_every`: also log every `log_every`-th step's batch loss and the learning rate (steps.jsonl, and
    TensorBoard); None or 0: no step records.
    `stop`: a StopRequest the caller entered earlier (so that a signal during its setup counts), else
    one held for the run."""
    started = time.time()
    steps_per_epoch = trainer.steps_per_epoch
    last_step = recipe.epochs * steps_per_epoch if max_steps is None else min(max_steps, recipe.epochs * steps_per_epoch)

    def save(snapshot: Progress) -> Path | None:
        trainer.collect_state()
        if not workdir.writer:  # the primary process writes the checkpoint
            return None
        meta = {"framework": trainer.framework, "model": recipe.model, "recipe": recipe.to_dict(),
                "pipeline": trainer.pipeline, **dataclasses.asdict(snapshot)}
        return checkpoints.write(workdir.path, snapshot.steps, meta, trainer.canonical_weights(), trainer.save_state)

    def finish(snapshot: Progress) -> Path | None:
        """The final checkpoint, and its weights as the run's model."""
        path = save(snapshot)
        if path is not None:
            checkpoints.export_final(workdir.path, path)
        return path

    with StopRequest() if stop is None else contextlib.nullcontext(stop) as stop:
        progress = resume_from_checkpoint(recipe, trainer, workdir, last_step) if resume else Progress()
        if resume:
            workdir.keep_steps_until(progress.steps)
        if config is not None:
            config = record_config(workdir, config, progress.steps)
        if tensorboard:
            workdir.start_tensorboard(recipe.to_dict(), progress.records)
        while True:
            # This epoch ends at its last step, or earlier where max_steps falls inside it.
            epoch_end = min(steps_per_epoch, last_step - (progress.steps - progress.step_in_epoch))
            if progress.step_in_epoch < epoch_end:
                if progress.records and progress.records[-1]["epoch"] == progress.epoch:
                    # Recorded when an earlier --max-steps cut this epoch short; the epoch now goes on.
                    progress = dataclasses.replace(progress, records=progress.records[:-1])
                    workdir.write_metrics(progress.records)
                tick = time.perf_counter()
                log = EpochLog(progress)
                with tqdm(total=steps_per_epoch, initial=progress.step_in_epoch, file=sys.stderr, leave=False,
                          desc=f"{trainer.framework} {recipe.model} epoch {progress.epoch}/{recipe.epochs}",
                          dynamic_ncols=True, disable=not workdir.writer) as bar:
                    for losses in run_steps(trainer, progress.epoch, log, epoch_end, checkpoint_every):
                        bar.update(len(losses))
                        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                        step = log.first_step - 1 + log.steps
                        if log_every:
                            _log_steps(workdir, recipe, progress.epoch, step - len(losses) + 1, losses, log_every)
                        due = (checkpoint_every is not None and step % checkpoint_every == 0) or step == last_step
                        stopping = trainer.any_process(stop.requested)
                        if due or stopping:
                            snapshot = _snapshot(progress, log, time.perf_counter() - tick)
                            if stopping:
                                raise Interrupted(finish(snapshot), stop.signal or signal.SIGTERM)
                            save(snapshot)
                progress = _snapshot(progress, log, time.perf_counter() - tick)
            if not _logged(progress):
                tick = time.perf_counter()
                result = trainer.evaluate()
                progress.eval_time_s += time.perf_counter() - tick
                progress = _log_epoch(workdir, recipe, progress, result)
                if trainer.any_process(stop.requested):
                    raise Interrupted(finish(progress), stop.signal or signal.SIGTERM)
                if checkpoint_every is not None:
                    save(progress)
            if progress.steps >= last_step:
                break
            progress = _next_epoch(progress)
    finish(progress)

    last_record = progress.records[-1]
    summary = {
        "model": recipe.model,
        "framework": trainer.framework,
        "pipeline": trainer.pipeline,
        "options": (config or {}).get("options", {}),
        "segments": (config or {}).get("segments", []),
        "dataset": recipe.dataset,
        "epochs": last_record["epoch"],
        "steps": progress.steps,
        "batch_size": recipe.batch_size,
        "seed": recipe.seed,
        "num_params": trainer.num_params,
        "train_loss": last_record["train_loss"],
        "train_accuracy": last_record["train_accuracy"],
        "test_loss": last_record["test_loss"],
        "test_accuracy": last_record["test_accuracy"],
        "train_time_s": progress.train_time_s,
        "eval_time_s": progress.eval_time_s,
        "train_samples_per_s": progress.examples_seen / progress.train_time_s if progress.train_time_s else None,
        "wall_time_s": time.time() - started,
        "resumed": resume,
        "device": trainer.device,
        "machine": machine_info(with_versions=False),  # so a run's timings can be read against its CPU
        "versions": versions(),
        "command": command_line(),
        "recipe": recipe.to_dict(),
    }
    workdir.write_summary(summary)
    return summary


def _log_steps(workdir: Workdir, recipe: Recipe, epoch: int, first: int, losses: list[float], every: int) -> None:
    """The step records of every `every`-th step among `losses` (global steps from `first`)."""
    records = [{"step": step, "epoch": epoch, "loss": loss, "learning_rate": recipe.optimizer.lr}
               for step, loss in enumerate(losses, start=first) if step % every == 0]
    if records:
        workdir.log_steps(records)


def _snapshot(progress: Progress, log: EpochLog, seconds: float) -> Progress:
    """`progress` advanced by what `log` recorded since it began, `seconds` of training later."""
    new_steps = log.steps - progress.step_in_epoch
    new_examples = log.examples - progress.epoch_examples
    return dataclasses.replace(
        progress, step_in_epoch=log.steps, steps=progress.steps + new_steps, epoch_losses=list(log.losses),
        epoch_correct=log.correct, epoch_examples=log.examples, examples_seen=progress.examples_seen + new_examples,
        train_time_s=progress.train_time_s + seconds)


def _next_epoch(progress: Progress) -> Progress:
    return dataclasses.replace(progress, epoch=progress.epoch + 1, step_in_epoch=0, epoch_losses=[],
                               epoch_correct=0.0, epoch_examples=0)


def _logged(progress: Progress) -> bool:
    """Whether the epoch record of this very position is logged (evaluation done)."""
    return bool(progress.records) and progress.records[-1]["steps"] == progress.steps


def _log_epoch(workdir: Workdir, recipe: Recipe, progress: Progress, result: EvalResult) -> Progress:
    record = {
        "epoch": progress.epoch,
        "steps": progress.steps,
        "train_loss": float(np.mean(progress.epoch_losses)),
        "train_accuracy": progress.epoch_correct / progress.epoch_examples,
        "test_loss": result.loss,
        "test_accuracy": result.accuracy,
        "train_time_s": progress.train_time_s,
        "eval_time_s": progress.eval_time_s,
    }
    workdir.log_epoch(record)
    if workdir.writer:
        print(f"epoch {progress.epoch:>2}/{recipe.epochs}  train loss {record['train_loss']:.4f}  "
              f"train acc {100 * record['train_accuracy']:6.2f}%  test loss {result.loss:.4f}  "
              f"test acc {100 * result.accuracy:6.2f}%  (total {progress.train_time_s + progress.eval_time_s:.1f} s)",
              flush=True)
    return dataclasses.replace(progress, records=[*progress.records, record])
