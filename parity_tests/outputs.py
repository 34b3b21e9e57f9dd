"""Eval-mode outputs of a model pair (test 2) and every layer's output shape (test 1)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import torch
from flax import nnx

from cnn_parity.differences import max_abs_diff
from flax_impl import train as flax_train
from flax_impl.models_nnx import FunctionalModel
from cnn_parity.recipes import Recipe
from parity_tests.batches import Batch, make_batch
from parity_tests.pairs import DIRECTIONS, FlaxModel, ModelPair

FORWARD_KINDS = ("real", "uniform", "gaussian")  # real data; random uint8 pixels; N(0, 1) floats
BATCH_SIZES = (1, 7, 128)


@functools.lru_cache(maxsize=None)
def jitted_flax_forward(model: FlaxModel):
    """(params, x) → eval-mode outputs, jitted once per model with the XLA options the trainer compiles
    it with (its convolution tier's)."""
    return jax.jit(lambda params, x: model.apply({"params": params}, x, train=False),
                   compiler_options=flax_train.kernels_of(model.apply).jit_options())


def flax_forward(pair: ModelPair, batch: Batch) -> np.ndarray:
    return np.asarray(jitted_flax_forward(pair.flax_model)(pair.flax_params, batch.flax_x))


def torch_forward(pair: ModelPair, batch: Batch) -> np.ndarray:
    pair.torch_model.eval()
    with torch.no_grad():
        return pair.torch_model(batch.torch_x).numpy()


def measure_forward(pair: ModelPair, batch: Batch) -> float:
    """max |Δ| of the eval-mode outputs (logits; fashion_cnn: log-probabilities)."""
    return max_abs_diff(flax_forward(pair, batch), torch_forward(pair, batch))


def forward_cases() -> list[tuple[str, str, int]]:
    """(direction, input kind, batch size) of every forward comparison."""
    return [(d, k, n) for d in DIRECTIONS for k in FORWARD_KINDS for n in BATCH_SIZES]


def forward_batch(recipe: Recipe, kind: str, n: int) -> Batch:
    # Seeds differ per size so that the sizes are not prefixes of one another.
    return make_batch(recipe, kind, n, seed=1000 + n, start=0)


def flax_layer_shapes(pair: ModelPair, batch: Batch) -> dict[str, tuple[int, ...]]:
    """Output shape of every submodule (conv1, fc1, Linen's Dropout_0 / NNX's dropout, ...) and of the
    model ("output"). Traced abstractly (jax.eval_shape): shapes without computing or compiling anything."""
    if isinstance(pair.flax_model, FunctionalModel):
        return _nnx_layer_shapes(pair.flax_model, pair.flax_params, batch.flax_x)

    def run(params, x):
        return pair.flax_model.apply({"params": params}, x, train=False, capture_intermediates=True,
                                     mutable=["intermediates"])

    _, state = jax.eval_shape(run, pair.flax_params, batch.flax_x)
    inter = state["intermediates"]
    shapes = {name: tuple(v["__call__"][0].shape) for name, v in inter.items() if name != "__call__"}
    shapes["output"] = tuple(inter["__call__"][0].shape)
    return shapes


def _nnx_layer_shapes(model: FunctionalModel, params, x) -> dict[str, tuple[int, ...]]:
    """NNX layers are plain attributes: inside one abstract apply, each is wrapped to record its output."""
    shapes = {}

    def recording(name, layer):
        def call(*args, **kwargs):
            out = layer(*args, **kwargs)
            shapes[name] = tuple(out.shape)
            return out

        return call

    def run(params, x):
        net = nnx.merge(model.graphdef, params)
        for name, layer in list(vars(net).items()):
            if isinstance(layer, nnx.Module):
                setattr(net, name, recording(name, layer))
        shapes["output"] = tuple(net(x, train=False).shape)

    jax.eval_shape(run, params, x)
    return shapes


def torch_layer_shapes(pair: ModelPair, batch: Batch) -> dict[str, tuple[int, ...]]:
    """Output shape of every child module and of the model ("output")."""
    shapes, handles = {}, []
    for name, module in pair.torch_model.named_children():
        handles.append(module.register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape))))
    try:
        shapes["output"] = tuple(torch_forward(pair, batch).shape)
    finally:
        for h in handles:
            h.remove()
    return shapes
