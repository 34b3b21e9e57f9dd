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

NNX models have no interceptors; their layers are plain attributes, so inside one traced apply
(`_nnx_apply`, what FunctionalModel.apply does) the merged model's nnx.Dropout is swapped for a
function that feeds it ones and records, or that applies a given mask with nnx.Dropout's formula.
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

from flax import nnx

from flax_impl.models_nnx import FunctionalModel
from parity_tests.batches import Batch
from parity_tests.pairs import FlaxModel, ModelPair


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


def _nnx_apply(model: FunctionalModel, params, x, train: bool, rng, replace_dropout):
    """FunctionalModel.apply with the model's nnx.Dropout replaced by `replace_dropout(dropout)`."""
    net = nnx.merge(model.graphdef, params)
    (name,) = [name for name, layer in vars(net).items() if isinstance(layer, nnx.Dropout)]
    setattr(net, name, replace_dropout(getattr(net, name)))
    return net(x, train=train, dropout_key=rng)


@functools.lru_cache(maxsize=None)
def _flax_dropout_probe(model: FlaxModel, train: bool, feed_ones: bool):
    """Jitted (params, x, rng) → (Dropout input, Dropout output), optionally feeding it ones."""

    def probe(params, x, rng):
        found = []

        def record(call, inputs, *args, **kwargs):
            given = jnp.ones_like(inputs) if feed_ones else inputs
            out = call(given, *args, **kwargs)
            found.append((given, out))
            return out

        if isinstance(model, FunctionalModel):
            _nnx_apply(model, params, x, train, rng, lambda dropout: functools.partial(record, dropout))
        else:
            def interceptor(next_fun, args, kwargs, context):
                if not _is_dropout_call(context):
                    return next_fun(*args, **kwargs)
                return record(next_fun, *args, **kwargs)

            with nn.intercept_methods(interceptor):
                model.apply({"params": params}, x, train=train, rngs={"dropout": rng})
        (io,) = found
        return io

    return jax.jit(probe)


def flax_dropout_io(model: FlaxModel, params, x: jax.Array, rng: jax.Array, train: bool,
                    feed_ones: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of the model's nn.Dropout in one apply with `rng`, optionally fed ones."""
    given, out = _flax_dropout_probe(model, train, feed_ones)(params, x, rng)
    return np.asarray(given), np.asarray(out)


def flax_dropout_mask(model: FlaxModel, params, x: jax.Array, rng: jax.Array) -> np.ndarray:
    """The boolean keep-mask Flax's dropout draws in `apply(..., train=True, rngs={"dropout": rng})`
    (Linen's nn.Dropout or NNX's nnx.Dropout)."""
    _, scaled = flax_dropout_io(model, params, x, rng, train=True, feed_ones=True)
    return scaled != 0


@contextlib.contextmanager
def inject_flax_dropout_mask(mask) -> Iterator[None]:
    """Within the block, Linen's nn.Dropout (train mode) applies `mask` instead of drawing one."""

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


def _nnx_masked_dropout(mask):
    """An nnx.Dropout replacement that applies `mask` in train mode, with nnx.Dropout's own formula."""

    def replace(dropout: nnx.Dropout):
        def call(inputs, deterministic: bool, rngs=None):
            if deterministic:
                return inputs
            keep = 1.0 - dropout.rate
            return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))

        return call

    return replace


@functools.lru_cache(maxsize=None)
def _jitted_train_forward(model: FlaxModel, masked: bool):
    def forward(params, x, rng, mask):
        if isinstance(model, FunctionalModel):
            if masked:
                return _nnx_apply(model, params, x, True, rng, _nnx_masked_dropout(mask))
            return model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
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
