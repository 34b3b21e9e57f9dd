"""The epoch loop both frameworks share: progress, per-epoch metrics, checkpoints and exact resume,
the non-finite-loss stop, stop signals (Ctrl-C, SIGTERM), and the run summary.

Each framework supplies a `Trainer` (flax_impl/train.py, torch_ref/train.py) that runs training steps,
evaluates, and saves/restores its own state; everything around that (what is printed, written and
checkpointed, and when to stop) lives here once, so the two CLIs behave identically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from tqdm import tqdm

from cnn_parity import checkpoints
from cnn_parity.errors import RunError, UsageError
from cnn_parity.recipes import Recipe
from cnn_parity.workdir import Workdir, command_line, read_metrics, run_differences, versions

# Losses stay on the device and are read back in chunks of this many steps, so a step never waits for
# the previous one; a non-finite loss is therefore caught at most this many steps late, and reported
# with its step. A trainer that runs several steps per dispatch runs this many at a time
# (flax_impl/train.py, STEPS_PER_DISPATCH): one dispatch, one read-back.
CHECK_EVERY = 50


@dataclass
class EvalResult:
    loss: float  # mean per-example cross-entropy over the whole split
    accuracy: float
    examples: int


@dataclass
class Progress:
    """Where a run stands; what a checkpoint stores besides the framework state."""

    epoch: int = 1  # the epoch in progress (1-based)
    step_in_epoch: int = 0  # steps of `epoch` done
    steps: int = 0  # global steps done
    epoch_losses: list[float] = field(default_factory=list)  # this epoch's per-step losses so far
    epoch_correct: float = 0.0
    epoch_examples: int = 0
    examples_seen: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    records: list[dict] = field(default_factory=list)  # the epoch records logged so far (metrics.jsonl)


class Trainer(Protocol):
    framework: str  # "flax" or "torch"
    pipeline: str
    is_primary: bool  # the process that writes the workdir and prints (the only one, unless multi-process)
    is_single_process: bool
    num_devices: int  # devices (Flax) or processes (PyTorch) the batch is split over
    num_params: int
    device: str
    steps_per_epoch: int

    def train_epoch(self, epoch: int, start: int, num_steps: int, log: "EpochLog") -> None:
        """Run steps `start` .. `start + num_steps - 1` of epoch `epoch` (1-based), calling `log.record`
        after each one. `start > 0` only right after `restore_state`."""

    def evaluate(self) -> EvalResult:
        """Loss and accuracy on the whole test split, in evaluation mode."""

    def canonical_weights(self) -> dict[str, np.ndarray]: ...

    def save_state(self, folder: Path) -> None:
        """Write everything an exact resume needs (parameters, optimiser, RNG) into `folder`."""

    def restore_state(self, folder: Path) -> None: ...

    def any_process(self, flag: bool) -> bool:
        """Whether `flag` is true in any process of the run; every process calls it at the same point
        (so that a stop signal reaching one rank stops them all at the same step)."""


class EpochLog:
    """Collects one epoch's per-step loss and correct count (framework scalars or arrays, read lazily).

    A trainer reports each step with `record`, or a run of steps it computed in one dispatch with
    `record_steps`; `on_step` (checkpoints, Ctrl-C) runs after each report, so a trainer that runs
    several steps at once keeps each run within `steps_before_checkpoint`. `on_losses(first, losses)`
    receives the losses as they are read back, `first` being the global step of the first of them.
    """

    def __init__(self, progress: Progress, bar: tqdm, on_step: Callable[[EpochLog], None] | None = None,
                 checkpoint_every: int | None = None,
                 on_losses: Callable[[int, list[float]], None] | None = None):
        self.first_step = progress.steps - progress.step_in_epoch + 1  # global index of the epoch's first step
        self.losses = list(progress.epoch_losses)
        self.correct = progress.epoch_correct
        self.examples = progress.epoch_examples
        self.bar, self.on_step, self.checkpoint_every, self.on_losses = bar, on_step, checkpoint_every, on_losses
        self._pending: list[tuple[Any, Any, int | None]] = []  # (loss, correct, number of steps or None: one scalar)
        self._pending_steps = 0

    def record(self, loss, correct, batch_examples: int) -> None:
        self._add((loss, correct, None), 1, batch_examples)

    def record_steps(self, losses, correct, num_steps: int, batch_size: int) -> None:
        """`num_steps` full batches: `losses` and `correct` are arrays whose first `num_steps` entries count."""
        self._add((losses, correct, num_steps), num_steps, num_steps * batch_size)

    def steps_before_checkpoint(self, limit: int) -> int:
        """How many of the next `limit` steps can run before a checkpoint falls due."""
        if self.checkpoint_every is None:
            return limit
        done = self.first_step - 1 + self.steps
        return min(limit, self.checkpoint_every - done % self.checkpoint_every)

    def _add(self, entry, num_steps: int, examples: int) -> None:
        self._pending.append(entry)
        self._pending_steps += num_steps
        self.examples += examples
        self.bar.update(num_steps)
        if self._pending_steps >= CHECK_EVERY:
            self.flush()
        if self.on_step is not None:
            self.on_step(self)

    def flush(self) -> None:
        first_new = len(self.losses)
        for loss, correct, count in self._pending:
            if count is None:
                values, correct_sum = [float(loss)], float(correct)
            else:
                values = np.asarray(loss, np.float64)[:count].tolist()
                correct_sum = float(np.sum(np.asarray(correct)[:count]))
            for value in values:
                if not math.isfinite(value):
                    step = self.first_step + len(self.losses)
                    raise RunError(f"loss became {value} at step {step}; stopped (learning rate too high?)")
                self.losses.append(value)
            self.correct += correct_sum
        self._pending.clear()
        self._pending_steps = 0
        if self.on_losses is not None and len(self.losses) > first_new:
            self.on_losses(self.first_step + first_new, self.losses[first_new:])
        if self.losses:
            self.bar.set_postfix(loss=f"{self.losses[-1]:.4f}", refresh=False)

    @property
    def steps(self) -> int:
        """Steps of this epoch done, including those before a resume."""
        return len(self.losses) + self._pending_steps


class StopRequest:
    """The first SIGINT (Ctrl-C) or SIGTERM (`kill`, `timeout`, a scheduler's pre-emption): finish the
    current step, checkpoint, stop. Another one, a second or more later, stops at once; one sooner is
    the same request delivered twice (a launcher such as torchrun forwards what the terminal already
    sent to its whole process group)."""

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
                raise KeyboardInterrupt
            return
        self.signal, self._received_at = signum, now
        print(f"\n{signal.Signals(signum).name}: checkpointing after this step (send it again to stop at once)",
              file=sys.stderr)

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal after writing its checkpoint; the CLI exits 128 + the signal's number."""

    def __init__(self, checkpoint: Path | None, signum: int):
        super().__init__()
        self.checkpoint, self.signum = checkpoint, signum


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
        if not workdir.writer:  # every process holds the same state; the primary one writes it
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
        progress = _resume(recipe, trainer, workdir, last_step, config) if resume else Progress()
        if resume:
            workdir.keep_steps_until(progress.steps)
        if config is not None:
            config = _record_config(workdir, config, progress.steps)
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

                def on_step(log: EpochLog) -> None:
                    step = log.first_step - 1 + log.steps
                    due = (checkpoint_every is not None and step % checkpoint_every == 0) or step == last_step
                    stopping = trainer.any_process(stop.requested)
                    if due or stopping:
                        log.flush()
                        snapshot = _snapshot(progress, log, time.perf_counter() - tick)
                        if stopping:
                            raise Interrupted(finish(snapshot), stop.signal or signal.SIGTERM)
                        save(snapshot)

                def on_losses(first: int, losses: list[float]) -> None:
                    records = [{"step": step, "epoch": progress.epoch, "loss": loss, "learning_rate": recipe.optimizer.lr}
                               for step, loss in enumerate(losses, start=first) if step % log_every == 0]
                    if records:
                        workdir.log_steps(records)

                with tqdm(total=steps_per_epoch, initial=progress.step_in_epoch, file=sys.stderr, leave=False,
                          desc=f"{trainer.framework} {recipe.model} epoch {progress.epoch}/{recipe.epochs}",
                          dynamic_ncols=True, disable=not workdir.writer) as bar:
                    log = EpochLog(progress, bar, on_step, checkpoint_every, on_losses if log_every else None)
                    trainer.train_epoch(progress.epoch, progress.step_in_epoch, epoch_end - progress.step_in_epoch, log)
                    log.flush()
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
        "versions": versions(),
        "command": command_line(),
        "recipe": recipe.to_dict(),
    }
    workdir.write_summary(summary)
    return summary


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


# Options under which a resumed run still computes bitwise what an uninterrupted one would; the others
# (conv_impl, devices) change float rounding.
_EXACT_ACROSS = ("api",)


def _record_config(workdir: Workdir, config: dict[str, Any], step: int) -> dict[str, Any]:
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


def _resume(recipe: Recipe, trainer: Trainer, workdir: Workdir, last_step: int,
            config: dict[str, Any] | None) -> Progress:
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
        position = {f.name: meta[f.name] for f in dataclasses.fields(Progress) if f.name in meta}
        progress = Progress(**position)
        if "records" not in meta:  # written before checkpoints held the records
            progress.records = [r for r in read_metrics(workdir.path) if r["steps"] <= progress.steps]
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
        raise UsageError(f"the run in {workdir.path} is already at step {progress.steps} (epoch {progress.epoch}); "
                         f"this command would end it at step {last_step}: pass its --epochs and --max-steps or larger")
    workdir.write_metrics(progress.records)
    if workdir.writer:
        print(f"resuming from {checkpoint} (epoch {progress.epoch}, step {progress.steps})", file=sys.stderr)
    return progress
