"""The epoch loop both frameworks share: progress, per-epoch metrics, non-finite-loss stop, summary.

Each framework supplies a `Trainer` (flax_impl/train.py, torch_ref/train.py) that knows how to run
training steps and evaluate; everything around that (what is printed, what is written, when to stop)
lives here once, so the two CLIs behave identically.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from cnn_parity.errors import RunError
from cnn_parity.recipes import Recipe
from cnn_parity.workdir import Workdir, command_line, versions

# Losses stay on the device and are read back in chunks, so a step never waits for the previous one;
# a non-finite loss is therefore caught at most this many steps late, and reported with its step.
_CHECK_EVERY = 50


@dataclass
class EvalResult:
    loss: float  # mean per-example cross-entropy over the whole split
    accuracy: float
    examples: int


class EpochLog:
    """Collects one epoch's per-step loss and correct count (framework scalars, read lazily)."""

    def __init__(self, first_step: int, progress: tqdm):
        self.first_step = first_step  # global index (1-based) of this epoch's first step
        self.progress = progress
        self.losses: list[float] = []
        self.correct = 0.0
        self.examples = 0
        self._pending: list[tuple[Any, Any]] = []

    def record(self, loss, correct, batch_examples: int) -> None:
        self._pending.append((loss, correct))
        self.examples += batch_examples
        self.progress.update(1)
        if len(self._pending) >= _CHECK_EVERY:
            self.flush()

    def flush(self) -> None:
        for loss, correct in self._pending:
            value = float(loss)
            if not math.isfinite(value):
                step = self.first_step + len(self.losses)
                raise RunError(f"loss became {value} at step {step}; stopped (learning rate too high?)")
            self.losses.append(value)
            self.correct += float(correct)
        self._pending.clear()
        if self.losses:
            self.progress.set_postfix(loss=f"{self.losses[-1]:.4f}", refresh=False)

    @property
    def steps(self) -> int:
        return len(self.losses) + len(self._pending)


class Trainer(Protocol):
    framework: str  # "flax" or "torch"
    pipeline: str
    num_params: int
    device: str
    steps_per_epoch: int

    def train_epoch(self, epoch: int, num_steps: int, log: EpochLog) -> None:
        """Run `num_steps` training steps of epoch `epoch` (1-based), calling `log.record` for each."""

    def evaluate(self) -> EvalResult:
        """Loss and accuracy on the whole test split, in evaluation mode."""


def fit(recipe: Recipe, trainer: Trainer, workdir: Workdir, max_steps: int | None = None) -> dict[str, Any]:
    """Train for the recipe's epochs (or `max_steps` steps), logging every epoch; return the summary."""
    started = time.time()
    steps = 0
    train_time = eval_time = 0.0
    examples_seen = 0
    epochs_run = 0
    record: dict[str, Any] = {}
    for epoch in range(1, recipe.epochs + 1):
        num_steps = trainer.steps_per_epoch
        if max_steps is not None:
            num_steps = min(num_steps, max_steps - steps)
        if num_steps <= 0:
            break
        with tqdm(total=num_steps, desc=f"{trainer.framework} {recipe.model} epoch {epoch}/{recipe.epochs}",
                  file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
            log = EpochLog(steps + 1, bar)
            tick = time.perf_counter()
            trainer.train_epoch(epoch, num_steps, log)
            log.flush()
            epoch_train_s = time.perf_counter() - tick
        tick = time.perf_counter()
        result = trainer.evaluate()
        epoch_eval_s = time.perf_counter() - tick
        steps += log.steps
        examples_seen += log.examples
        train_time += epoch_train_s
        eval_time += epoch_eval_s
        epochs_run = epoch
        record = {
            "epoch": epoch,
            "steps": steps,
            "train_loss": float(np.mean(log.losses)),
            "train_accuracy": log.correct / log.examples,
            "test_loss": result.loss,
            "test_accuracy": result.accuracy,
            "train_time_s": epoch_train_s,
            "eval_time_s": epoch_eval_s,
        }
        workdir.log_epoch(record)
        print(f"epoch {epoch:>2}/{recipe.epochs}  train loss {record['train_loss']:.4f}  "
              f"train acc {100 * record['train_accuracy']:6.2f}%  test loss {result.loss:.4f}  "
              f"test acc {100 * result.accuracy:6.2f}%  {epoch_train_s + epoch_eval_s:6.1f} s", flush=True)
    summary = {
        "model": recipe.model,
        "framework": trainer.framework,
        "pipeline": trainer.pipeline,
        "dataset": recipe.dataset,
        "epochs": epochs_run,
        "steps": steps,
        "batch_size": recipe.batch_size,
        "seed": recipe.seed,
        "num_params": trainer.num_params,
        "train_loss": record.get("train_loss"),
        "train_accuracy": record.get("train_accuracy"),
        "test_loss": record.get("test_loss"),
        "test_accuracy": record.get("test_accuracy"),
        "train_time_s": train_time,
        "eval_time_s": eval_time,
        "train_samples_per_s": examples_seen / train_time if train_time else None,
        "wall_time_s": time.time() - started,
        "device": trainer.device,
        "versions": versions(),
        "command": command_line(),
        "recipe": recipe.to_dict(),
    }
    workdir.write_summary(summary)
    return summary
