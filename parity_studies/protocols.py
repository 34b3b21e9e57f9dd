"""A pre-registered equivalence protocol as data: which models, seeds, endpoints, margins and level
its analysis uses. `FIRST` is reports/equivalence/PROTOCOL.md (tests read that file's own statement of
every number here); `SECOND` is read from the TOML table in reports/equivalence/second/PROTOCOL.md
itself (`load`), so its analysis uses the numbers registered there. Another protocol is another
instance: `load` reads a TOML file, or the TOML block of a Markdown file, of the same shape.

Margins are ratios r: a log-ratio endpoint is equivalent when its 1 − 2·alpha interval lies inside
±log r (×/÷ r); the SD ratio when its interval lies inside [1/r, r]."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cnn_parity.errors import UsageError

from parity_studies import statistics


# A study's designs: design -> (init_rng, shuffle_rng), the recipe settings its runs train with. The last
# two, each sharing one source of randomness only, are for bisecting a difference the independent design
# shows: which of the two random streams carries it.
DESIGNS = {"independent": ("framework", "framework"), "paired": ("shared", "shared"),
           "shared-init": ("shared", "framework"), "shared-order": ("framework", "shared")}


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
    # The escape epoch as a factor adjusting the train-loss endpoint (robustness): levels "1..a",
    # "a+1", ..., "z or later" for escape_levels = (a, ..., z); None: no adjusted analysis.
    escape_levels: tuple[int, ...] | None = None
    # The direction test's statistic: per run, the mean log train loss over epochs first .. last.
    direction_epochs: tuple[int, int] | None = None

    def tested_epochs(self, epochs: int) -> range:
        """The train-loss curve's tested epochs (1-based) of a run of `epochs` epochs."""
        first, last = self.train_loss_epochs
        last = epochs if last is None else min(last, epochs)
        return range(min(first, last), last + 1)


@dataclass(frozen=True)
class Direction:
    """A two-sided difference test of the direction statistic, in a fixed sequence over `order`: each
    model at `alpha`, the next only if the one before rejected."""

    order: tuple[str, ...]
    alpha: float


@dataclass(frozen=True)
class FollowUp:
    """Runs of another design (paired) for the models whose direction test rejected."""

    design: str
    seeds: tuple[int, ...]
    alpha: float


@dataclass(frozen=True)
class Protocol:
    name: str
    document: str  # its PROTOCOL.md, relative to the repository root
    alpha: float  # each one-sided test of every TOST
    designs: tuple[str, ...]
    models: Mapping[str, ModelPlan]
    # Training-CLI flags every run of a framework gets, beyond the design's: what the protocol pins.
    flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    direction: Direction | None = None
    follow_up: FollowUp | None = None
    bootstrap_resamples: int = 9999
    bootstrap_seed: int = 0

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



def _seeds(value: Any) -> tuple[int, ...]:
    return seed_range(value["first"], value["last"]) if isinstance(value, Mapping) else tuple(value)


_TUPLES = ("train_loss_epochs", "escape_levels", "direction_epochs")


def from_dict(table: Mapping[str, Any], document: str = "") -> Protocol:
    """A protocol from its TOML table (the shape of the one in reports/equivalence/second/PROTOCOL.md);
    UsageError names a key that is not a protocol's."""
    known = set(ModelPlan.__dataclass_fields__) - {"seeds"}
    models = {}
    for model, entry in table["models"].items():
        unknown = set(entry) - known - {"seeds"}
        if unknown:
            raise UsageError(f"{document or 'protocol'}: unknown key {sorted(unknown)[0]!r} for model {model}")
        plan = {k: tuple(v) if k in _TUPLES else v for k, v in entry.items() if k != "seeds"}
        models[model] = ModelPlan(_seeds(entry["seeds"]), **plan)
    direction = table.get("direction")
    follow_up = table.get("follow_up")
    bootstrap = table.get("bootstrap", {})
    return Protocol(
        name=table["name"], document=document, alpha=float(table["alpha"]),
        designs=tuple(table.get("designs", ("independent",))), models=models,
        flags={framework: tuple(flags) for framework, flags in table.get("flags", {}).items()},
        direction=Direction(tuple(direction["order"]), float(direction["alpha"])) if direction else None,
        follow_up=FollowUp(follow_up["design"], _seeds(follow_up["seeds"]), float(follow_up["alpha"]))
        if follow_up else None,
        bootstrap_resamples=int(bootstrap.get("resamples", 9999)), bootstrap_seed=int(bootstrap.get("seed", 0)))


REPO = Path(__file__).resolve().parent.parent
SECOND_DOCUMENT = "reports/equivalence/second/PROTOCOL.md"


def load(path: str | Path) -> Protocol:
    """The protocol in a TOML file, or in the one ```toml block of a Markdown file (a PROTOCOL.md)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    if path.suffix == ".md":
        blocks = re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M)
        if len(blocks) != 1:
            raise UsageError(f"{path} holds {len(blocks)} ```toml blocks, not the one protocol table")
        text = blocks[0]
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: {e}") from None
    try:
        relative = str(path.resolve().relative_to(REPO))
    except ValueError:
        relative = str(path)
    try:
        return from_dict(table, relative)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: not a protocol table ({type(e).__name__}: {e})") from None


def __getattr__(name: str) -> Protocol:
    if name == "SECOND":  # read when first used, from the registered file itself
        global SECOND
        SECOND = load(REPO / SECOND_DOCUMENT)
        return SECOND
    raise AttributeError(name)
