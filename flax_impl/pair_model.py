"""The Flax side of a model pair of the user's own (a recipe's `[pair]`, cnn_parity/pairs.py): built from
`PKG.MOD:ATTR` and run through the same training step as the five models. A Linen module's `apply`,
or an NNX model split into its parameters and graph (as flax_impl/models_nnx.py splits the built-in
ones), with `train` passed as the module's own mode argument (train, training, deterministic or
use_running_average, whichever it takes). Its weights cross to the canonical form (torch's names and
layouts) through the checked transfer table.

The training CLIs train models whose only state is their parameters: a model that keeps other state
(BatchNorm's running statistics, NNX's Rngs for dropout) is refused with one line; the model checker
checks it all the same.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnn_parity.errors import UsageError
from cnn_parity.pairs import TransferTable, import_attr
from cnn_parity.recipes import Recipe

_MODE_ARGUMENTS = {"train": True, "training": True, "is_training": True, "deterministic": False,
                   "use_running_average": False}


def mode_kwargs(call, train: bool) -> dict[str, bool]:
    """The keyword arguments that put a module's `__call__` in train or eval mode, by their names."""
    try:
        names = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return {}
    return {name: train == value for name, value in _MODE_ARGUMENTS.items() if name in names}


@dataclass(eq=False)
class LinenPairModel:
    """A Linen module with the trainer's `apply(variables, x, train, rngs)`; hashed by identity, so a
    TrainState holding its `apply` is static under jit."""

    module: nn.Module

    def apply(self, variables: dict[str, Any], x: jax.Array, train: bool = False,
              rngs: dict[str, jax.Array] | None = None) -> jax.Array:
        return self.module.apply(variables, x, rngs=rngs or {}, **mode_kwargs(self.module.__call__, train))


@dataclass(eq=False)
class NnxPairModel:
    """An NNX model's graph definition, applied to its parameters in train or eval mode."""

    graphdef: Any
    call: Any = field(default=None)

    def apply(self, variables: dict[str, Any], x: jax.Array, train: bool = False,
              rngs: dict[str, jax.Array] | None = None) -> jax.Array:
        model = nnx.merge(self.graphdef, variables["params"])
        model.train() if train else model.eval()
        return model(x, **mode_kwargs(type(model).__call__, train))


def _built(recipe: Recipe, key: jax.Array):
    """The user's Flax model: a Linen module, or an NNX model built with its parameters drawn from `key`."""
    target, flag = import_attr(recipe.pair.flax, "[pair] flax"), f"[pair] flax {recipe.pair.flax}"
    if isinstance(target, (nn.Module, nnx.Module)):
        return target
    takes_rngs = callable(target) and "rngs" in inspect.signature(target).parameters
    try:
        return target(rngs=nnx.Rngs(params=key)) if takes_rngs else target()
    except Exception as e:  # noqa: BLE001 (the user's constructor failing is bad input)
        raise UsageError(f"{flag}: building the model raised {type(e).__name__}: {e}") from None


def init(recipe: Recipe, key: jax.Array, example: np.ndarray) -> tuple[LinenPairModel | NnxPairModel, dict]:
    """(the model, its parameters) for one channels-last example batch; UsageError for a model with
    state besides its parameters."""
    model = _built(recipe, key)
    flag = f"[pair] flax {recipe.pair.flax}"
    if isinstance(model, nnx.Module):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise UsageError(f"{flag}: the model keeps state besides its parameters ({', '.join(sorted(_kinds(rest)))}): "
                             "the training CLIs train parameter-only models")
        return NnxPairModel(graphdef), nnx.to_pure_dict(params)
    if not isinstance(model, nn.Module):
        raise UsageError(f"{flag} gives a {type(model).__name__}, not a Linen or NNX module")
    try:
        variables = model.init({"params": key, "dropout": key}, jnp.asarray(example),
                               **mode_kwargs(model.__call__, False))
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"{flag} rejects input of shape {example.shape} ({type(e).__name__}: {e})") from None
    if set(variables) != {"params"}:
        raise UsageError(f"{flag}: the model keeps state besides its parameters ({', '.join(sorted(set(variables) - {'params'}))}): "
                         "the training CLIs train parameter-only models")
    return LinenPairModel(model), jax.tree.map(jnp.asarray, dict(variables["params"]))


def _kinds(state) -> set[str]:
    return {type(v).__name__ for v in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))}


def _prefix(model) -> str:
    """Where the transfer table's paths put the parameters: Linen's under its `params` collection."""
    return "params/" if isinstance(model, LinenPairModel) else ""


def _paths(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out.update(_paths(v, f"{path}/") if isinstance(v, dict) else {path: v})
    return out


def _rebuilt(template: dict, values: dict[str, Any], prefix: str = "") -> dict:
    return {k: _rebuilt(v, values, f"{prefix}{k}/") if isinstance(v, dict) else values[f"{prefix}{k}"]
            for k, v in template.items()}


def to_canonical(model, params: dict, table: TransferTable) -> dict[str, np.ndarray]:
    return table.to_canonical({path: np.asarray(v) for path, v in _paths(params, _prefix(model)).items()})


def from_canonical(model, template: dict, arrays: dict[str, np.ndarray], table: TransferTable) -> dict:
    """Parameters shaped as `template` from canonical weights."""
    values = table.to_flax(arrays)
    unknown = set(_paths(template, _prefix(model))) - set(values)
    if unknown:
        raise UsageError(f"the transfer table has no values for {sorted(unknown)[0]}: not this model's table")
    return _rebuilt(template, {p: jnp.asarray(v) for p, v in values.items()}, _prefix(model))
