"""A model in both frameworks holding the same weights: the unit every measurement takes.

A `ModelPair` is a torch module and a Flax model with its parameters, the recipe they train with,
and the `WeightMapping` between the two through canonical arrays (PyTorch state_dict names and
layouts). The Flax model is a Linen module or, for the NNX models, their `FunctionalModel`: both
have Linen's `apply`, and both APIs' params dicts have one layout, so every measurement and the
product converters serve either. The five models' pairs use the product's converters
(`product_mapping`); another model pair can be checked by building a `ModelPair` with its own mapping.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import torch

from cnn_parity.differences import Canonical
from cnn_parity.recipes import Recipe, load_recipe
from flax_impl import convert as flax_convert
from flax_impl import kernels
from flax_impl import models as flax_models
from flax_impl import models_nnx as flax_models_nnx
from flax_impl import train as flax_train
from torch_ref import convert as torch_convert
from torch_ref import models as torch_models

DIRECTIONS = ("torch_to_flax", "flax_to_torch")  # which side initialises; the other gets converted weights
APIS = flax_train.APIS  # the Flax APIs whose models the suite checks: "linen", "nnx"

FlaxModel = Union[nn.Module, flax_models_nnx.FunctionalModel]  # anything with Linen's `apply`


@dataclass(frozen=True)
class WeightMapping:
    """How one model's weights correspond across the frameworks, through canonical arrays. The
    measurements map Flax *gradients* with `flax_to_canonical` too: a converter only permutes
    entries, so it maps a gradient exactly as it maps the parameter."""

    flax_to_canonical: Callable[[Any], Canonical]  # Flax params → canonical arrays
    canonical_to_flax: Callable[[Canonical], Any]  # canonical arrays → Flax params
    torch_to_canonical: Callable[[torch.nn.Module], Canonical]  # a module's weights → canonical arrays
    load_into_torch: Callable[[torch.nn.Module, Canonical], torch.nn.Module]  # canonical arrays into a module


def product_mapping(name: str) -> WeightMapping:
    """The product's converters for model `name` (flax_impl.convert, torch_ref.convert)."""
    return WeightMapping(functools.partial(flax_convert.params_to_canonical, name),
                         functools.partial(flax_convert.params_from_canonical, name),
                         functools.partial(torch_convert.state_dict_to_canonical, name),
                         functools.partial(torch_convert.load_canonical, name))


@dataclass(frozen=True)
class ModelPair:
    """The torch model's parameter names are the canonical names (torch's gradients are read by
    name); every measurement leaves the pair's weights as they are."""

    recipe: Recipe  # what both sides train with: optimiser, normalisation, data set
    torch_model: torch.nn.Module
    flax_model: FlaxModel
    flax_params: Any
    mapping: WeightMapping
    canonical: Canonical  # the weights both sides were built from

    @property
    def name(self) -> str:
        return self.recipe.model

    def with_mapping(self, **changes: Callable) -> "ModelPair":
        """The same models, one or more of the mapping's functions replaced (the planted-bug tests)."""
        return dataclasses.replace(self, mapping=dataclasses.replace(self.mapping, **changes))


def torch_init(name: str, seed: int = 0, init_scheme: str = "torch") -> torch.nn.Module:
    """torch_ref's model, initialised after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return torch_models.create_model(name, init_scheme)


@functools.lru_cache(maxsize=None)
def _jitted_init(model: nn.Module):
    return jax.jit(model.init)


def flax_init_params(model: nn.Module, key: jax.Array):
    """flax_impl.models.init_params, with its jitted `model.init` kept per model. The product's
    function re-jits on every call, and XLA:CPU takes ~5 s to compile a conv model's init (the
    threefry RNG), which would cost minutes across the suite. test_conversion checks that the two
    return identical parameters."""
    return _jitted_init(model)(key, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]


def default_conv_impl(name: str) -> str:
    """What the trainer's default (`--conv-impl auto`) convolves model `name` with on this backend."""
    return flax_train.resolve_conv_impl("auto", name)


def flax_model(name: str, init_scheme: str = "torch", api: str = "linen", conv_impl: str | None = None) -> FlaxModel:
    """The product's model `name` in Flax API `api`, convolving per `conv_impl` (flax_impl/kernels.py;
    None: the trainer's default), without parameters."""
    conv_kernels = kernels.of(conv_impl or default_conv_impl(name))
    if api == "nnx":
        return flax_models_nnx.functional_model(name, init_scheme, conv_kernels)
    return flax_models.create_model(name, init_scheme, conv_kernels)


def flax_init(name: str, key: jax.Array, init_scheme: str = "torch", api: str = "linen",
              conv_impl: str | None = None) -> tuple[FlaxModel, Any]:
    """The product's model `name` in API `api` and its own initial parameters drawn from `key`."""
    conv_kernels = kernels.of(conv_impl or default_conv_impl(name))
    if api == "nnx":
        return flax_models_nnx.init_params(name, key, init_scheme, conv_kernels)
    model = flax_models.create_model(name, init_scheme, conv_kernels)
    return model, flax_init_params(model, key)


def pair_from_torch(name: str, seed: int = 0, init_scheme: str = "torch",
                    mapping: WeightMapping | None = None, api: str = "linen", conv_impl: str | None = None) -> ModelPair:
    """Torch initialises; Flax gets the weights through the mapping (direction torch → flax)."""
    mapping = mapping or product_mapping(name)
    module = torch_init(name, seed, init_scheme)
    canonical = mapping.torch_to_canonical(module)
    return ModelPair(load_recipe(name), module, flax_model(name, init_scheme, api, conv_impl),
                     mapping.canonical_to_flax(canonical), mapping, canonical)


def pair_from_flax(name: str, seed: int = 0, init_scheme: str = "torch",
                   mapping: WeightMapping | None = None, api: str = "linen", conv_impl: str | None = None) -> ModelPair:
    """Flax initialises; torch gets the weights through the mapping (direction flax → torch)."""
    mapping = mapping or product_mapping(name)
    model, params = flax_init(name, jax.random.key(seed), init_scheme, api, conv_impl)
    canonical = mapping.flax_to_canonical(params)
    module = mapping.load_into_torch(torch_models.create_model(name, init_scheme), canonical)
    return ModelPair(load_recipe(name), module, model, params, mapping, canonical)


def make_pair(name: str, direction: str, seed: int = 0, api: str = "linen", conv_impl: str | None = None) -> ModelPair:
    return {"torch_to_flax": pair_from_torch, "flax_to_torch": pair_from_flax}[direction](name, seed, api=api,
                                                                                          conv_impl=conv_impl)
