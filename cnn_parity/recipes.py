"""Recipes: one TOML file per model in `configs/`, the single source of truth for both frameworks."""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnn_parity.data import DATASETS, NUM_EXAMPLES
from cnn_parity.errors import UsageError

MODELS = ("mlp", "cnn_base", "cnn_2layer", "lenet", "fashion_cnn")
OPTIMIZERS = ("sgd", "adam")
# The [optimizer] keys each optimizer reads: an override that switches the optimizer drops the recipe's
# other ones (lenet's momentum is no setting of Adam's), and refuses them when given.
OPTIMIZER_KEYS = {"sgd": ("name", "lr", "momentum"), "adam": ("name", "lr", "b1", "b2", "eps")}
INITS = ("torch", "flax")
# Where the initial weights and each epoch's shuffling order come from: each framework's own random
# generators ("framework"), or one neutral numpy generator (cnn_parity/shared_rng.py) that gives both
# frameworks the same weights and the same batches ("shared": paired runs).
RNG_SOURCES = ("framework", "shared")


def recipe_folder():
    """The recipe files: the package data `cnn_parity.configs` where the project is installed (a wheel,
    or an editable install, which maps it to the repository's `configs/`), else a source checkout's
    `configs/`."""
    try:
        return importlib.resources.files("cnn_parity.configs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Optimizer:
    name: str
    lr: float
    momentum: float = 0.0  # sgd only; PyTorch's dampening-0 momentum = optax's trace
    b1: float = 0.9  # adam only; PyTorch's and optax's defaults
    b2: float = 0.999
    eps: float = 1e-8


@dataclass(frozen=True)
class Recipe:
    model: str
    dataset: str
    batch_size: int
    epochs: int
    seed: int
    optimizer: Optimizer
    normalize_mean: float = 0.0
    normalize_std: float = 1.0
    drop_last: bool = False
    init: str = "torch"  # "torch": PyTorch's default init in both frameworks; "flax": Flax's defaults
    eval_batch_size: int = 1000  # evaluation only; any value gives the same metrics
    init_rng: str = "framework"  # RNG_SOURCES
    shuffle_rng: str = "framework"
    source: str = ""
    reported: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The Recipe fields that say where a recipe comes from (the source's citation, the figures it reported),
# not what is trained: no number a run produces depends on them, so they are no part of a run's identity
# (cnn_parity.workdir.run_differences), and `--set` does not take them.
PROVENANCE = ("source", "reported")


def config_path(model: str):
    """The recipe file of `model` (a Path, or an importlib.resources Traversable)."""
    if model not in MODELS:
        raise UsageError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    path = recipe_folder() / f"{model}.toml"
    if not path.is_file():
        raise UsageError(f"recipe file {path} is missing: reinstall cnn-parity")
    return path


def load_recipe(model: str | None = None, config: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe of `model` (or the file `config`), with dotted-key `overrides` applied, validated."""
    path = Path(config) if config is not None else config_path(model or "")
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config {path} is not valid TOML: {e}") from None
    if model is not None and config is not None and raw.get("model") != model:
        raise UsageError(f"--model {model} disagrees with {path}, which is a recipe for {raw.get('model')!r}")
    _apply_overrides(raw, overrides or {})
    return _build(raw, str(path))


def recipe_from_dict(raw: dict[str, Any], origin: str = "saved recipe",
                     overrides: dict[str, Any] | None = None) -> Recipe:
    """A Recipe from `Recipe.to_dict()` output (e.g. stored in a checkpoint), with dotted-key
    `overrides` applied, validated."""
    raw = {**raw, "optimizer": dict(raw.get("optimizer") or {})}
    _apply_overrides(raw, overrides or {})
    return _build(raw, origin)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` from `--set`; the value is read as TOML (so 1e-3, true, "x" work), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set expects key=value, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip(), parsed


def settable_keys() -> list[str]:
    """The recipe keys `--set` takes (dotted for the optimizer's)."""
    fixed = ("model", "optimizer", *PROVENANCE)  # what a recipe is, and where it comes from
    return [f.name for f in dataclasses.fields(Recipe) if f.name not in fixed] + \
        [f"optimizer.{f.name}" for f in dataclasses.fields(Optimizer)]


def _apply_overrides(raw: dict, overrides: dict[str, Any]) -> None:
    """Set dotted-key `overrides` in a raw recipe. `optimizer=NAME` is short for `optimizer.name=NAME`;
    switching the optimizer drops the settings of the old one that the new one does not read (said on
    stderr), and refuses such a setting given with it."""
    overrides = dict(overrides)
    if isinstance(overrides.get("optimizer"), str):
        overrides["optimizer.name"] = overrides.pop("optimizer")
    table = raw.get("optimizer")
    before = table.get("name") if isinstance(table, dict) else None
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    table = raw.get("optimizer")
    name = table.get("name") if isinstance(table, dict) else None
    if name == before or name not in OPTIMIZER_KEYS:
        return
    foreign = [key for key in table if key not in OPTIMIZER_KEYS[name]]
    given = [key for key in foreign if f"optimizer.{key}" in overrides]
    if given:
        raise UsageError(f"optimizer.{given[0]} is no setting of {name} (it reads: "
                         f"{', '.join('optimizer.' + k for k in OPTIMIZER_KEYS[name][1:])})")
    dropped = {key: table.pop(key) for key in foreign}
    if any(value != getattr(Optimizer, key, None) for key, value in dropped.items()):
        shown = ", ".join(f"{key}={value}" for key, value in dropped.items())
        print(f"recipe: optimizer {before} -> {name}: dropping the {before} setting(s) {shown}", file=sys.stderr)


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"recipe key {'.'.join(parents[:depth + 1])} is not a table: cannot set {key} "
                             f"(settable: {', '.join(settable_keys())})")
    node[leaf] = value


def _options(expected) -> tuple:
    """The types a field annotated `expected` admits, generics by their origin (`dict[str, Any]`:
    dict): the members of a union, else `expected` itself."""
    members = typing.get_args(expected) if typing.get_origin(expected) in (typing.Union, types.UnionType) else (expected,)
    return tuple(typing.get_origin(t) or t for t in members)


def _type_name(expected) -> str:
    return " | ".join("None" if t is type(None) else t.__name__ for t in _options(expected))


def _conforms(value, expected) -> bool:
    """Whether `value` is of a type the annotation `expected` admits (an int is no bool, a bool no int)."""
    for option in _options(expected):
        if option is Any or (option is type(None) and value is None):
            return True
        if isinstance(value, bool) == (option is bool) and isinstance(value, option):
            return True
    return False


def _typed(cls, values: dict, where: str):
    """Instantiate a dataclass from `values`, rejecting unknown keys and wrong types (read from the
    fields' annotations); an int is accepted for a float."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UsageError(f"unknown recipe key {where}{unknown[0]}; known: {', '.join(sorted(fields))}")
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UsageError(f"recipe is missing {where}{missing[0]!r}")
    kwargs = {}
    for name, value in values.items():
        expected = hints[name]
        if float in _options(expected) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _conforms(value, expected):
            raise UsageError(f"recipe key {where}{name} must be {_type_name(expected)}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def _build(raw: dict, origin: str) -> Recipe:
    optimizer = raw.get("optimizer")
    if not isinstance(optimizer, dict):
        raise UsageError(f"{origin}: recipe needs an [optimizer] table")
    recipe = _typed(Recipe, {**raw, "optimizer": _typed(Optimizer, optimizer, "optimizer.")}, "")
    _validate(recipe)
    return recipe


def _validate(r: Recipe) -> None:
    o = r.optimizer
    checks = [
        (r.model in MODELS, f"unknown model {r.model!r}; choose one of: {', '.join(MODELS)}"),
        (r.dataset in DATASETS, f"unknown dataset {r.dataset!r}; choose one of: {', '.join(DATASETS)}"),
        (0 < r.batch_size <= NUM_EXAMPLES["train"],
         f"batch size must be positive and at most {NUM_EXAMPLES['train']:,} (the training split), got {r.batch_size}"),
        (0 < r.eval_batch_size <= NUM_EXAMPLES["test"],
         f"eval batch size must be positive and at most {NUM_EXAMPLES['test']:,} (the test split), got {r.eval_batch_size}"),
        (r.epochs > 0, f"epochs must be positive, got {r.epochs}"),
        # JAX's keys (without x64) and PyTorch's CPU generator both keep only a seed's low 32 bits, so
        # seeds 2**32 apart would be the same run.
        (0 <= r.seed < 2**32, f"seed must be in 0 .. 2**32 - 1 (both frameworks' generators use 32 bits), got {r.seed}"),
        (r.init in INITS, f"unknown init {r.init!r}; choose one of: {', '.join(INITS)}"),
        (r.init_rng in RNG_SOURCES, f"unknown init_rng {r.init_rng!r}; choose one of: {', '.join(RNG_SOURCES)}"),
        (r.shuffle_rng in RNG_SOURCES, f"unknown shuffle_rng {r.shuffle_rng!r}; choose one of: {', '.join(RNG_SOURCES)}"),
        (math.isfinite(r.normalize_std) and r.normalize_std > 0, f"normalize_std must be positive, got {r.normalize_std}"),
        (math.isfinite(r.normalize_mean), f"normalize_mean must be finite, got {r.normalize_mean}"),
        (o.name in OPTIMIZERS, f"unknown optimizer {o.name!r}; choose one of: {', '.join(OPTIMIZERS)}"),
        (math.isfinite(o.lr) and o.lr > 0, f"learning rate must be positive, got {o.lr}"),
        (0 <= o.momentum < 1, f"momentum must be in [0, 1), got {o.momentum}"),
        (0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"Adam betas must be in [0, 1), got ({o.b1}, {o.b2})"),
        (math.isfinite(o.eps) and o.eps > 0, f"Adam eps must be positive and finite, got {o.eps}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
