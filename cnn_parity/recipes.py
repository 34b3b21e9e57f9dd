"""Recipes: one TOML file per model in `configs/`, the single source of truth for both frameworks."""

from __future__ import annotations

import importlib.resources
import json
import math
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from cnn_parity.data import DATASETS, NUM_EXAMPLES_OF
from cnn_parity.errors import UsageError

MODELS = ("mlp", "cnn_base", "cnn_2layer", "lenet", "fashion_cnn")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
# The [optimizer] keys each optimizer reads: a recipe's other keys must stay at their defaults; an
# override that switches the optimizer drops the recipe's other ones (lenet's momentum is no setting of
# Adam's), and refuses them when given.
OPTIMIZER_KEYS = {"sgd": ("name", "lr", "momentum", "nesterov", "weight_decay"),
                  "adam": ("name", "lr", "b1", "b2", "eps", "weight_decay"),
                  "adamw": ("name", "lr", "b1", "b2", "eps", "weight_decay"),
                  "rmsprop": ("name", "lr", "alpha", "eps", "momentum", "centered", "weight_decay")}
SCHEDULES = ("constant", "step", "cosine")
# The [schedule] keys each schedule reads (every one reads the linear warm-up's two).
SCHEDULE_KEYS = {"constant": ("name", "warmup_steps", "warmup_start_factor"),
                 "step": ("name", "warmup_steps", "warmup_start_factor", "step_epochs", "gamma"),
                 "cosine": ("name", "warmup_steps", "warmup_start_factor", "final_lr")}
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


def _float32(value: float) -> float:
    """A float setting reaches at least one framework as a float32: it must be one."""
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise ValueError(f"{value!r} is outside float32's range (|x| <= 3.4e38)")
    if value != 0 and abs(value) < FLOAT32_TINY:
        raise ValueError(f"{value!r} is too small for float32 (nonzero |x| >= 1.2e-38)")
    return value


# float32's range: every float setting reaches at least one framework as a float32.
FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38
Float32 = Annotated[float, AfterValidator(_float32)]


class _Strict(BaseModel):
    """A recipe table: known keys only, each of its exact type (an int is no bool, a bool no int; an
    int is taken for a float), immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _only_read_keys(table: BaseModel, name: str, read: tuple[str, ...], what: str) -> None:
    """A key `name`'s kind does not read must keep its default (a recipe recorded by a run holds every
    key; one that sets a key its kind ignores would not run as written)."""
    for key, field in type(table).model_fields.items():
        if key not in read and getattr(table, key) != field.default:
            raise ValueError(f"{key} is no setting of {what} {name} (it reads: {', '.join(read[1:])})")


class Optimizer(_Strict):
    """The update rule: each framework builds its own library's optimizer from it (torch.optim, optax),
    and the parity suite holds the two to the same updates. `weight_decay` is coupled (added to the
    gradient, as torch's SGD, Adam and RMSprop do) except for adamw, which decays the weights directly
    (decoupled); adamw's must be set, since torch.optim.AdamW defaults it to 0.01 and optax.adamw to 1e-4."""

    name: Literal[OPTIMIZERS]
    lr: Float32 = Field(gt=0)
    momentum: Float32 = Field(0.0, ge=0, lt=1)  # sgd, rmsprop; PyTorch's dampening-0 momentum = optax's trace
    nesterov: bool = False  # sgd
    weight_decay: Float32 = Field(0.0, ge=0)
    b1: Float32 = Field(0.9, ge=0, lt=1)  # adam, adamw; PyTorch's and optax's defaults
    b2: Float32 = Field(0.999, ge=0, lt=1)
    eps: Float32 = Field(1e-8, gt=0)  # adam, adamw, rmsprop (added to the root, as torch does)
    alpha: Float32 = Field(0.99, ge=0, lt=1)  # rmsprop's smoothing: torch's default (optax's `decay`, 0.9 there)
    centered: bool = False  # rmsprop

    @model_validator(mode="after")
    def _consistent(self):
        _only_read_keys(self, self.name, OPTIMIZER_KEYS[self.name], "optimizer")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.name == "adamw" and "weight_decay" not in self.model_fields_set:
            raise ValueError("adamw needs its weight_decay set: torch.optim.AdamW defaults to 0.01, optax.adamw "
                             "to 1e-4")
        return self


class Schedule(_Strict):
    """The learning rate over a run's global steps, each framework's own scheduler (torch.optim's
    lr_scheduler, optax's schedules) built from it and held to `learning_rate` by the parity suite:
    a linear warm-up over `warmup_steps` from `warmup_start_factor` x lr to lr (torch's LinearLR), then
    constant; or "step": x `gamma` every `step_epochs` epochs; or "cosine": down to `final_lr` at the
    run's last step (torch's CosineAnnealingLR; optax's cosine decay)."""

    name: Literal[SCHEDULES] = "constant"
    warmup_steps: int = Field(0, ge=0)
    warmup_start_factor: Float32 = Field(1 / 3, gt=0, le=1)  # torch's LinearLR default
    step_epochs: int = Field(1, gt=0)
    gamma: Float32 = Field(0.1, gt=0, le=1)
    final_lr: Float32 = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self):
        _only_read_keys(self, self.name, SCHEDULE_KEYS[self.name], "schedule")
        return self


def _model_name(model: str) -> str:
    if not model or not all(c.isalnum() or c in "_-." for c in model):
        raise ValueError(f"a model's name is letters, digits, '_', '-' and '.', got {model!r}")
    return model


class Pair(_Strict):
    """A model pair of the user's own: where each framework's model comes from (PKG.MOD:ATTR, as
    `python -m parity_check` takes them: a class taking no arguments or a function returning the model;
    on the Flax side a Linen module, or an NNX class built from `nnx.Rngs(seed)`), checked against each
    other before a run trains it."""

    torch: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    flax: str = Field(pattern=r"^[\w.]+:[\w.]+$")


def _seed(seed: int) -> int:
    # JAX's keys (without x64) and PyTorch's CPU generator both keep only a seed's low 32 bits, so seeds
    # 2**32 apart would be the same run.
    if not 0 <= seed < 2**32:
        raise ValueError(f"must be in 0 .. 2**32 - 1 (both frameworks' generators use 32 bits), got {seed}")
    return seed


Normalization = Float32 | Annotated[list[Float32], Field(min_length=1)]


DATA_PATHS = ("data_file", "tfds_dir")  # recipe keys naming a file or folder: relative to the recipe file


class Recipe(_Strict):
    model: Annotated[str, AfterValidator(_model_name)]  # one of MODELS, or the name of the user's `pair`
    dataset: Literal[DATASETS]
    batch_size: int = Field(gt=0)
    epochs: int = Field(gt=0)
    seed: Annotated[int, AfterValidator(_seed)]
    optimizer: Optimizer
    schedule: Schedule = Schedule()
    # (x / 255 - mean) / std for uint8 pixels (torchvision's ToTensor + Normalize), (x - mean) / std for
    # float ones; one number, or one per channel
    normalize_mean: Normalization = 0.0
    normalize_std: Normalization = 1.0
    drop_last: bool = False
    init: Literal[INITS] = "torch"  # built-in models: "torch", PyTorch's default init in both frameworks; "flax"
    eval_batch_size: int = Field(1000, gt=0)  # evaluation only; any value gives the same metrics
    init_rng: Literal[RNG_SOURCES] = "framework"
    shuffle_rng: Literal[RNG_SOURCES] = "framework"
    pair: Pair | None = None  # a model pair of the user's own (then `model` names it)
    data_file: str = ""  # dataset "npz": the .npz file (train and test images and labels; cnn_parity/data.py)
    tfds_name: str = ""  # dataset "tfds": a TFDS data set prepared in tfds_dir (its "image" and "label" features)
    tfds_dir: str = ""  # its TFDS data dir (empty: TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets)
    source: str = ""
    reported: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @property
    def normalization(self) -> tuple[float | tuple[float, ...], float | tuple[float, ...]]:
        """(mean, std), each a float or a tuple per channel: hashable, for tables built once."""
        return tuple(tuple(v) if isinstance(v, list) else v for v in (self.normalize_mean, self.normalize_std))

    @property
    def data_name(self) -> str:
        """The recipe's data, as an error message names it."""
        if self.dataset == "npz":
            return self.data_file
        if self.dataset == "tfds":
            return f"the TFDS data set {self.tfds_name} in {self.tfds_dir or 'the TFDS default data dir'}"
        return self.dataset

    @model_validator(mode="after")
    def _consistent(self):
        if self.pair is None and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}, or name your own "
                             "model pair in a [pair] table")
        if self.pair is not None and self.model in MODELS:
            raise ValueError(f"a [pair] of your own needs a name of its own, not the built-in {self.model!r}")
        if (self.dataset == "npz") != bool(self.data_file):
            raise ValueError("dataset npz reads data_file (a .npz file), and only it does")
        if (self.dataset == "tfds") != bool(self.tfds_name) or (self.tfds_dir and self.dataset != "tfds"):
            raise ValueError("dataset tfds reads tfds_name (a TFDS data set, from tfds_dir), and only it does")
        if any(v <= 0 for v in np.atleast_1d(self.normalize_std)):
            raise ValueError(f"normalize_std must be positive, got {self.normalize_std}")
        if self.dataset in NUM_EXAMPLES_OF:
            for key, split in (("batch_size", "train"), ("eval_batch_size", "test")):
                if getattr(self, key) > NUM_EXAMPLES_OF[self.dataset][split]:
                    raise ValueError(f"{key} {getattr(self, key)} is larger than the {split} split "
                                     f"({NUM_EXAMPLES_OF[self.dataset][split]:,} examples)")
        if self.schedule.name == "cosine" and self.schedule.final_lr > self.optimizer.lr:
            raise ValueError(f"schedule.final_lr {self.schedule.final_lr} is above optimizer.lr {self.optimizer.lr}")
        return self


def learning_rate(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """The learning rate of the update at global step `step` (0-based: the first update is step 0), in
    float64: the recipe's schedule written out once, what steps.jsonl logs and the parity suite holds
    both frameworks' schedulers to."""
    lr, s = recipe.optimizer.lr, recipe.schedule
    if step < s.warmup_steps:
        return lr * (s.warmup_start_factor + (1 - s.warmup_start_factor) * step / s.warmup_steps)
    after = step - s.warmup_steps
    if s.name == "step":
        return lr * s.gamma ** (after // (s.step_epochs * steps_per_epoch))
    if s.name == "cosine":
        span = recipe.epochs * steps_per_epoch - s.warmup_steps
        return s.final_lr + (lr - s.final_lr) * (1 + math.cos(math.pi * min(after, span) / span)) / 2
    return lr


# The Recipe fields that say where a recipe comes from (the source's citation, the figures it reported),
# not what is trained: no number a run produces depends on them, so they are no part of a run's identity
# (cnn_parity.workdir.run_differences), and `--set` does not take them.
PROVENANCE = ("source", "reported")
# A built-in model's facts besides its recipe, in its recipe file (read by cnn_parity/specs.py).
SPEC_TABLES = ("architecture", "checks")


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
    """The recipe of `model` (or the file `config`: a recipe TOML file, or a run's config.json, whose
    recipe it is), with dotted-key `overrides` applied, validated."""
    path = Path(config) if config is not None else config_path(model or "")
    raw = _read_recipe_file(path)
    if model is not None and config is not None and raw.get("model") != model:
        raise UsageError(f"--model {model} disagrees with {path}, which is a recipe for {raw.get('model')!r}")
    return _build(raw, str(path), _apply_overrides(raw, overrides or {}))


def _read_recipe_file(path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read config {path}: {e.strerror}") from None
    if str(path).endswith(".json"):
        try:
            config = json.loads(data)
        except ValueError as e:
            raise UsageError(f"config {path} is not JSON ({e})") from None
        if not isinstance(config, dict) or not isinstance(config.get("recipe"), dict):
            raise UsageError(f"config {path} is no run's config.json (it holds no recipe)")
        return dict(config["recipe"])
    try:
        raw = tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise UsageError(f"config {path} is not UTF-8 text (a TOML recipe file)") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config {path} is not valid TOML: {e}") from None
    for table in SPEC_TABLES:
        raw.pop(table, None)
    for key in DATA_PATHS:  # a recipe's data beside it, wherever it is run
        if isinstance(raw.get(key), str) and raw[key]:
            raw[key] = str((Path(str(path)).parent / raw[key]).resolve())
    return raw


def recipe_from_dict(raw: dict[str, Any], origin: str = "saved recipe",
                     overrides: dict[str, Any] | None = None) -> Recipe:
    """A Recipe from `Recipe.to_dict()` output (e.g. stored in a checkpoint), with dotted-key
    `overrides` applied, validated."""
    raw = {**raw, "optimizer": dict(raw.get("optimizer") or {})}
    return _build(raw, origin, _apply_overrides(raw, overrides or {}))


def with_defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recorded recipe with every key a recipe has now (defaults for those added since it was
    recorded); as it is where it is not a valid recipe."""
    try:
        return Recipe.model_validate(recipe).to_dict()
    except ValidationError:
        return recipe


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
    """The recipe keys `--set` takes (dotted for the optimizer's and the schedule's)."""
    fixed = ("model", "pair", "optimizer", "schedule", *PROVENANCE)  # what a recipe is, and where it comes from
    return [name for name in Recipe.model_fields if name not in fixed] + \
        [f"optimizer.{name}" for name in Optimizer.model_fields] + [f"schedule.{name}" for name in Schedule.model_fields]


# The recipe's kinded tables: `--set TABLE=NAME` switches the kind, keeping only the keys it reads.
_KINDED = {"optimizer": (OPTIMIZER_KEYS, Optimizer), "schedule": (SCHEDULE_KEYS, Schedule)}


def _apply_overrides(raw: dict, overrides: dict[str, Any]) -> set[str]:
    """Set dotted-key `overrides` in a raw recipe, and return the keys set; only `settable_keys()` are.
    `optimizer=NAME` is short for `optimizer.name=NAME` (so is `schedule=NAME`), `optimizer={...}` sets
    the table's keys; switching the kind drops the old one's settings that the new one does not read
    (said on stderr), and refuses such a setting given with it. The recipe's description (`source`)
    says what the overrides changed."""
    overrides = dict(overrides)
    for table in _KINDED:
        if isinstance(overrides.get(table), str):
            overrides[f"{table}.name"] = overrides.pop(table)
        if isinstance(overrides.get(table), dict):
            overrides.update({f"{table}.{key}": value for key, value in overrides.pop(table).items()})
    settable = settable_keys()
    for key in overrides:
        if key not in settable:
            known = key in Recipe.model_fields or key.split(".")[0] in PROVENANCE
            raise UsageError(f"{f'recipe key {key} cannot be set' if known else f'unknown recipe key {key}'} "
                             f"(settable: {', '.join(settable)})")
    before = {table: (raw.get(table) or {}).get("name") if isinstance(raw.get(table), dict) else None
              for table in _KINDED}
    changed = {key: value for key, value in overrides.items() if _get_dotted(raw, key) != value}
    for key in DATA_PATHS:
        if isinstance(overrides.get(key), str) and overrides[key]:
            overrides[key] = str(Path(overrides[key]).resolve())
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    for table, (keys, model) in _KINDED.items():
        _keep_what_the_kind_reads(raw, table, before[table], keys, model, overrides)
    if changed and raw.get("source"):
        raw["source"] += " (changed: " + ", ".join(f"{key}={value}" for key, value in changed.items()) + ")"
    return set(overrides)


def _keep_what_the_kind_reads(raw: dict, table: str, before: str | None, keys: dict, model, overrides: dict) -> None:
    values = raw.get(table)
    name = values.get("name") if isinstance(values, dict) else None
    if name == before or name not in keys:
        return
    foreign = [key for key in values if key not in keys[name]]
    given = [key for key in foreign if f"{table}.{key}" in overrides]
    if given:
        raise UsageError(f"{table}.{given[0]} is no setting of {name} (it reads: "
                         f"{', '.join(f'{table}.{k}' for k in keys[name][1:])})")
    dropped = {key: values.pop(key) for key in foreign}
    if any(key in model.model_fields and value != model.model_fields[key].default for key, value in dropped.items()):
        shown = ", ".join(f"{key}={value}" for key, value in dropped.items())
        print(f"recipe: {table} {before} -> {name}: dropping the {before} setting(s) {shown}", file=sys.stderr)


def _get_dotted(raw: dict, key: str) -> Any:
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"recipe key {'.'.join(parents[:depth + 1])} is not a table: cannot set {key} "
                             f"(settable: {', '.join(settable_keys())})")
    node[leaf] = value


def _build(raw: dict, origin: str, overridden: set[str] = frozenset()) -> Recipe:
    """The validated recipe; a UsageError names the first bad key (and `origin`, unless the key's value
    came from an override)."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        # A value that fits no member of a union (a scalar or a list) fails once per member: the deepest
        # failure, or one past the type check, is the member the value was meant for; the member's label
        # is no part of the key.
        first = max((error for error in errors if error["loc"][:1] == errors[0]["loc"][:1]),
                    key=lambda error: (len(error["loc"]), not error["type"].endswith("_type")))
        key = ".".join(str(part) for part in first["loc"] if "[" not in str(part))
        by_override = any(k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.") for k in overridden) if key else bool(overridden)
        where = "" if by_override else f"{origin}: "
        raise UsageError(where + _one_line(first, key)) from None


def _one_line(error: dict, key: str) -> str:
    """pydantic's complaint as one line: the dotted key, what is wrong, the value given."""
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"recipe is missing {key!r}"
    if error["type"] == "extra_forbidden":
        return f"unknown recipe key {key}"
    if error["type"] == "value_error":
        return f"recipe key {key}: {message}" if key else message
    return f"recipe key {key}: {message[:1].lower()}{message[1:]}, got {error['input']!r}"
