"""The products' training steps as the suite runs them: nothing here computes a loss or a gradient.

PyTorch: the measurements call `torch_ref.train.train_step` and `loss_and_gradients` directly.
Flax: `flax_impl.train.train_step` and `loss_and_gradients`, jitted once for the whole process per set
of XLA options, each model's being those the trainer compiles it with (its convolution tier's).
Both are looked up through their modules when traced, so a test that monkeypatches the product
(test_planted_bugs.py) is measured with the patch, provided no trace from before the patch is
reused: such a test clears JAX's caches (`jax.clear_caches()`) before and after.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from cnn_parity.recipes import Optimizer
from flax_impl import train as flax_train


def _options(apply_fn) -> tuple[tuple[str, str], ...]:
    """The XLA options the trainer compiles a model with (its convolution tier's), as a jit cache key."""
    return tuple(sorted((flax_train.kernels_of(apply_fn).jit_options() or {}).items()))


@functools.lru_cache(maxsize=None)
def _jitted(function, options: tuple[tuple[str, str], ...], **jit_keywords):
    return jax.jit(function, compiler_options=dict(options) or None, **jit_keywords)


def _train_step(state, batch, rng):
    return flax_train.train_step(state, batch, rng)


def flax_train_step(state: flax_train.TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    """flax_impl.train.train_step, jitted with the XLA options the trainer uses for the state's model."""
    return _jitted(_train_step, _options(state.apply_fn))(state, batch, rng)


def _loss_and_gradients(apply_fn, params, batch, rng, train):
    return flax_train.loss_and_gradients(apply_fn, params, batch, rng, train=train)


def flax_loss_and_gradients(apply_fn, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
                            train: bool):
    """flax_impl.train.loss_and_gradients, jitted with the trainer's XLA options for `apply_fn`'s
    model: ((loss, outputs), gradients)."""
    jitted = _jitted(_loss_and_gradients, _options(apply_fn), static_argnames=("apply_fn", "train"))
    return jitted(apply_fn, params, batch, rng, train=train)


@functools.lru_cache(maxsize=None)
def _built_optimizer(make_optimizer, cfg: Optimizer):
    return make_optimizer(cfg)


def flax_optimizer(cfg: Optimizer):
    """flax_impl.train.make_optimizer(cfg), built once per configuration: a TrainState's optimiser is
    part of the jit cache key (optax closures compare by identity), so a fresh one would recompile
    the train step. Keyed on the factory too, so a patched make_optimizer is honoured."""
    return _built_optimizer(flax_train.make_optimizer, cfg)


def flax_train_state(apply_fn, params: Any, cfg: Optimizer) -> flax_train.TrainState:
    """A fresh TrainState of `params` with the recipe optimiser `cfg`."""
    return flax_train.TrainState.create(apply_fn=apply_fn, params=params, tx=flax_optimizer(cfg))
