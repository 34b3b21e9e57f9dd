"""A pre-registered equivalence protocol as data: which models, seeds, endpoints, margins and level
its analysis uses. `FIRST` is reports/equivalence/PROTOCOL.md (tests read that file's own statement of
every number here); another protocol is another instance.

Margins are ratios r: a log-ratio endpoint is equivalent when its 1 − 2·alpha interval lies inside
±log r (×/÷ r); the SD ratio when its interval lies inside [1/r, r]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from parity_studies import statistics


@dataclass(frozen=True)
class ModelPlan:
    """One model's part of a protocol; an endpoint whose margin is None is not tested."""

    seeds: tuple[int, ...]
    # Primary: the ratio of test error rates at the last epoch (Flax / PyTorch, per-seed log error).
    test_error_margin: float | None = None
    # The mean train loss of each tested epoch, as a log ratio; the curve is equivalent only if every
    # tested epoch is (intersection-union). Tested: epochs first .. last (None: the last epoch run).
    train_loss_margin: float | None = None
    train_loss_epochs: tuple[int, int | None] = (1, None)
    # The ratio SD_flax / SD_torch of test accuracy (pp) at the last epoch, two one-sided F-tests.
    sd_ratio_margin: float | None = None
    # Descriptive: the first epoch whose test accuracy exceeds this (leaving the initial plateau).
    escape_accuracy: float | None = None

    def tested_epochs(self, epochs: int) -> range:
        """The train-loss curve's tested epochs (1-based) of a run of `epochs` epochs."""
        first, last = self.train_loss_epochs
        last = epochs if last is None else min(last, epochs)
        return range(min(first, last), last + 1)


@dataclass(frozen=True)
class Protocol:
    name: str
    document: str  # its PROTOCOL.md, relative to the repository root
    alpha: float  # each one-sided test of every TOST
    designs: tuple[str, ...]
    models: Mapping[str, ModelPlan]
    # Training-CLI flags every run of a framework gets, beyond the design's: what the protocol pins.
    flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def seeds(self, model: str) -> list[int]:
        return list(self.models[model].seeds)


def seed_range(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


def _first() -> Protocol:
    seeds = seed_range(2000, 2019)  # never used by any earlier report
    plan = ModelPlan(seeds, test_error_margin=1.2, train_loss_margin=1.2, sd_ratio_margin=2.0)
    lenet = ModelPlan(seeds, test_error_margin=1.2, train_loss_margin=1.2, sd_ratio_margin=2.0,
                      train_loss_epochs=(5, None),  # lenet's epochs 1-4 (the plateau) are the escape endpoint's
                      escape_accuracy=0.5)
    return Protocol(name="first", document="reports/equivalence/PROTOCOL.md", alpha=statistics.ALPHA,
                    designs=("independent",),
                    models={"mlp": plan, "cnn_base": plan, "cnn_2layer": plan, "lenet": lenet, "fashion_cnn": plan})


FIRST = _first()

