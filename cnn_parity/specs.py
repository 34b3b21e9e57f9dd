"""A built-in model's facts besides its recipe, read from the `[architecture]` and `[checks]` tables of
its recipe file (configs/<model>.toml): one place per model, as a workload keeps its facts on one
object, so that adding a model touches its file and its two framework modules, not a dozen tables.

`[architecture]`: the layers in forward order (name, inputs, outputs, kernel or 0 for a Linear, zero
padding, whether a 2x2 max-pool follows) and the weights the source initialised explicitly; read by
the canonical weights (cnn_parity/weights.py), the shared initialisation and both frameworks' models.
`[checks]`: what the project's own checks hold the model to, each with the measurement behind it in a
comment there: a short run's accuracy (tests), the parity suite's accuracy budget, the benchmark's
steps per trial, the reproduction's note on how the recipe deviates from its source.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass

from cnn_parity.errors import UsageError
from cnn_parity.recipes import SPEC_TABLES, config_path


@dataclass(frozen=True)
class Layer:
    name: str
    inputs: int  # features of a Linear, channels of a convolution
    outputs: int
    kernel: int | None  # square kernel size; None: a Linear
    padding: int = 0
    pooled: bool = False  # a 2x2 max-pool follows


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: tuple[Layer, ...]
    explicit_init: dict  # layer -> the initialiser its source gave its weight
    learning_steps: int  # a short run on real data...
    min_test_accuracy: float  # ...must beat this
    parity_accuracy: dict  # steps, bound, floor of the parity suite's accuracy check
    benchmark_steps: int
    deviation: str


@functools.lru_cache(maxsize=None)
def spec(model: str) -> ModelSpec:
    path = config_path(model)
    try:
        tables = tomllib.loads(path.read_text())
        architecture, checks = (tables[name] for name in SPEC_TABLES)
        return ModelSpec(model, tuple(Layer(name, n_in, n_out, kernel or None, padding, pooled)
                                      for name, n_in, n_out, kernel, padding, pooled in architecture["layers"]),
                         dict(architecture.get("explicit_init", {})), checks["learning"]["steps"],
                         checks["learning"]["min_test_accuracy"], dict(checks["parity_accuracy"]),
                         checks["benchmark_steps"], checks["deviation"])
    except (KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path}: its model facts ([architecture], [checks]) are incomplete ({e}): reinstall "
                         "cnn-parity") from None
