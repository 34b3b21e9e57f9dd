"""What a framework's trainer is (the `Trainer` protocol flax_impl.train.FlaxTrainer and
torch_ref.train.TorchTrainer implement) and what it returns; where a run stands (`Progress`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


# fit asks a trainer for at most this many steps at a time, then reads their losses back: a step never
# waits for the one before it within a chunk; a non-finite loss is caught at most this many steps late
# (and reported with its step); a stop signal or a due checkpoint is acted on between chunks. Flax runs
# a chunk as one dispatch (flax_impl/train.py).
CHECK_EVERY = 50


@dataclass
class EvalResult:
    loss: float  # mean per-example cross-entropy over the whole split
    accuracy: float
    examples: int


@dataclass
class Progress:
    """Where a run stands; what a checkpoint stores besides the framework state. The epoch in
    progress is `steps // steps_per_epoch + 1`; its figures so far are three running sums (a float64
    sum of float32 losses is exact, so their mean is the same number in any order)."""

    steps: int = 0  # global steps done
    epoch_loss_sum: float = 0.0  # the running epoch's per-step losses, summed
    epoch_correct: float = 0.0
    epoch_examples: int = 0
    examples_seen: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    records: list[dict] = field(default_factory=list)  # the epoch records logged so far (metrics.jsonl)
    sessions: list[dict] = field(default_factory=list)  # each process that trained the run (provenance)


@dataclass
class StepMetrics:
    """What a trainer returns for a run of steps, read back by EpochLog: per step, the batch's mean loss
    and its correct count, each as a list of framework arrays or scalars that hold them in order (a
    trainer need not join what it computed in pieces), and the examples trained on in all."""

    losses: list[Any]
    correct: list[Any]
    examples: int


class Trainer(Protocol):
    framework: str  # "flax" or "torch"
    pipeline: str
    is_primary: bool  # the process that writes the workdir and prints (the only one, unless multi-process)
    is_single_process: bool
    num_devices: int  # devices (Flax) or processes (PyTorch) the batch is split over
    num_params: int
    device: str
    steps_per_epoch: int

    def train_steps(self, epoch: int, start: int, count: int) -> StepMetrics:
        """Run steps `start` .. `start + count - 1` of epoch `epoch` (1-based); `count` ≤ CHECK_EVERY.
        Called for consecutive steps of an epoch, except right after `restore_state`."""

    def evaluate(self) -> EvalResult:
        """Loss and accuracy on the whole test split, in evaluation mode."""

    def canonical_weights(self) -> dict[str, np.ndarray]: ...

    def collect_state(self) -> None:
        """Called by every process right before the primary one's `save_state`: a multi-process trainer
        gathers here what only the other processes hold."""

    def save_state(self, folder: Path) -> None:
        """Write everything an exact resume needs (parameters, optimiser, RNG) into `folder`."""

    def restore_state(self, folder: Path) -> None: ...

    def any_process(self, flag: bool) -> bool:
        """Whether `flag` is true in any process of the run; every process calls it at the same point
        (so that a stop signal reaching one rank stops them all at the same step)."""
