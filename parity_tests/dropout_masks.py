"""Dropout: one mask for both frameworks, and each framework's own dropout read back.

Flax draws the mask: its own nn.Dropout, with the rng `train_step` is given. `flax_dropout_mask`
reads that mask back by re-running the same apply with the same rng under an nn.intercept_methods
interceptor that feeds the Dropout ones instead of its input, so its output is exactly
mask / keep_prob (the rng a Flax module draws depends only on the rng passed in, the module's path
and its call count, none of which the interceptor changes; test_dropout checks that the read-back
mask reproduces train_step's own output bit for bit). Torch then applies that mask instead of
drawing its own: a forward hook on the model's nn.Dropout replaces its output by
input * mask / keep_prob, F.dropout's own formula. Each framework's own rate and scaling are tested
in test_dropout.py. A model has at most one dropout layer here.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from parity_tests.batches import Batch
from parity_tests.pairs import ModelPair


def torch_dropout_layer(module: torch.nn.Module) -> torch.nn.Dropout | None:
    """The model's dropout layer, or None when it has none."""
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Dropout)]
    if len(layers) > 1:
        raise ValueError(f"{type(module).__name__} has {len(layers)} dropout layers; one mask per step needs one")
    return layers[0] if layers else None


def has_dropout(pair: ModelPair) -> bool:
    return torch_dropout_layer(pair.torch_model) is not None


def _is_dropout_call(context) -> bool:
    return isinstance(context.module, nn.Dropout) and context.method_name == "__call__"


@functools.lru_cache(maxsize=None)
def _flax_dropout_probe(model: nn.Module, train: bool, feed_ones: bool):
    """Jitted (params, x, rng) → (Dropout input, Dropout output), optionally feeding it ones."""

    def probe(params, x, rng):
        found = []

        def interceptor(next_fun, args, kwargs, context):
            if not _is_dropout_call(context):
                return next_fun(*args, **kwargs)
            given = jnp.ones_like(args[0]) if feed_ones else args[0]
            out = next_fun(given, *args[1:], **kwargs)
            found.append((given, out))
            return out

        with nn.intercept_methods(interceptor):
            model.apply({"params": params}, x, train=train, rngs={"dropout": rng})
        (io,) = found
        return io

    return jax.jit(probe)


def flax_dropout_io(model: nn.Module, params, x: jax.Array, rng: jax.Array, train: bool,
                    feed_ones: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of the model's nn.Dropout in one apply with `rng`, optionally fed ones."""
    given, out = _flax_dropout_probe(model, train, feed_ones)(params, x, rng)
    return np.asarray(given), np.asarray(out)


def flax_dropout_mask(model: nn.Module, params, x: jax.Array, rng: jax.Array) -> np.ndarray:
    """The boolean keep-mask Flax's dropout draws in `apply(..., train=True, rngs={"dropout": rng})`."""
    _, scaled = flax_dropout_io(model, params, x, rng, train=True, feed_ones=True)
    return scaled != 0


@contextlib.contextmanager
def inject_flax_dropout_mask(mask) -> Iterator[None]:
    """Within the block, Flax's nn.Dropout (train mode) applies `mask` instead of drawing one."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if not _is_dropout_call(context) or nn.merge_param("deterministic", module.deterministic,
                                                            kwargs.get("deterministic")):
            return next_fun(*args, **kwargs)
        keep = 1.0 - module.rate
        return jax.lax.select(mask, args[0] / keep, jnp.zeros_like(args[0]))  # nn.Dropout's own formula

    with nn.intercept_methods(interceptor):
        yield


@contextlib.contextmanager
def inject_torch_dropout_mask(module: torch.nn.Module, mask, scale: float | None = None) -> Iterator[None]:
    """Within the block, the model's dropout layer in train mode applies `mask` (None: the block
    changes nothing), survivors × 1/(1-p) (`scale` overrides that factor: the planted-bug tests use it)."""
    if mask is None:
        yield
        return
    dropout = torch_dropout_layer(module)
    scale = 1.0 / (1.0 - dropout.p) if scale is None else scale
    keep = torch.from_numpy(np.array(mask, dtype=bool))

    def hook(m, inputs, output):
        if not m.training:
            return output
        return inputs[0] * keep.to(inputs[0].dtype) * scale

    handle = dropout.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@functools.lru_cache(maxsize=None)
def _jitted_train_forward(model: nn.Module, masked: bool):
    def forward(params, x, rng, mask):
        with inject_flax_dropout_mask(mask) if masked else contextlib.nullcontext():
            return model.apply({"params": params}, x, train=True, rngs={"dropout": rng})

    return jax.jit(forward)


def flax_train_forward(pair: ModelPair, batch: Batch, rng: jax.Array, mask=None) -> np.ndarray:
    """Train-mode outputs: Flax's own dropout drawn from `rng`, or, given `mask`, that mask."""
    return np.asarray(_jitted_train_forward(pair.flax_model, mask is not None)(pair.flax_params, batch.flax_x, rng, mask))


def torch_train_forward(pair: ModelPair, batch: Batch, mask) -> np.ndarray:
    """Torch's train-mode outputs with dropout `mask` injected."""
    module = pair.torch_model
    module.train()
    try:
        with inject_torch_dropout_mask(module, mask), torch.no_grad():
            return module(batch.torch_x).numpy()
    finally:
        module.eval()


def torch_dropout_io(module: torch.nn.Module, x: torch.Tensor, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of the model's dropout layer in one forward pass, torch drawing its own mask."""
    found = []
    handle = torch_dropout_layer(module).register_forward_hook(
        lambda m, i, o: found.append((i[0].detach().numpy().copy(), o.detach().numpy().copy())))
    try:
        module.train(train)
        with torch.no_grad():
            module(x)
    finally:
        handle.remove()
        module.eval()
    (io,) = found
    return io
