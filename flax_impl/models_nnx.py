"""The five models as Flax NNX modules: the same layers, names, initialisation and convolutions as
the Linen ones in flax_impl/models.py (the same layer helpers: `layer_inits`, `flatten`, and
flax_impl/kernels.py's `Kernels`), so speed work on the kernels serves both APIs.
NNX layers are built before they see an input, so each takes its sizes and padding from the neutral
tables (cnn_parity.weights: LAYERS, CONV_GEOMETRY).

Split into a pure pytree (`nnx.split(model, nnx.Param)`, then `to_pure_dict`), an NNX model's
parameters have exactly the structure of Linen's params dict ({"conv1": {"kernel", "bias"}, ...}), and
`FunctionalModel.apply` has Linen's `apply` signature. The training step, the evaluator, msgpack
checkpoints, the canonical-weight converters and the multi-device code therefore run NNX
models unchanged (flax_impl/train.py, `api="nnx"`): the graph is split once, outside `jax.jit`, and
merged inside the traced function, as the Flax performance guide recommends for small models
(docs_nnx/guides/performance.md: `nnx.split` / `nnx.merge` under `jax.jit`).

Dropout takes an explicit key per call (no `nnx.Rngs` stream lives in the model, so its state is
parameters only), and derives from it the very key Linen's `make_rng("dropout")` gives FashionCNN's
`Dropout_0`: given the same key, both APIs draw the same mask (parity_tests/test_nnx_vs_linen.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from flax.core.scope import LazyRng

from cnn_parity.weights import CONV_GEOMETRY, LAYERS
from flax_impl import kernels as conv_kernels
from flax_impl.kernels import Kernels
from flax_impl.models import flatten, layer_inits


class _Layers(nnx.Module):
    """Base: builds the Linear / Conv layers of model `model_name` (a class attribute) by name, as
    cnn_parity.weights describes them, initialised by `init_scheme`, convolving and pooling with
    `kernels` (a tier of flax_impl/kernels.py)."""

    model_name = ""

    def __init__(self, init_scheme: str, kernels: Kernels):
        self.init_scheme, self.kernels = init_scheme, kernels

    def _sizes(self, name: str) -> tuple[int, int, int | None]:
        """(in features / channels, out, kernel size or None) of layer `name`."""
        return next((fan_in, out, kernel) for layer, fan_in, out, kernel in LAYERS[self.model_name] if layer == name)

    def linear(self, name: str, rngs: nnx.Rngs) -> nnx.Linear:
        fan_in, features, _ = self._sizes(name)
        return nnx.Linear(fan_in, features, rngs=rngs, **layer_inits(self.init_scheme, fan_in, self.model_name, name))

    def conv(self, name: str, rngs: nnx.Rngs) -> nnx.Conv:
        channels, features, kernel = self._sizes(name)
        _, padding, _ = CONV_GEOMETRY[self.model_name][name]
        return nnx.Conv(channels, features, (kernel, kernel), padding=((padding, padding),) * 2, rngs=rngs,
                        **layer_inits(self.init_scheme, channels * kernel * kernel, self.model_name, name),
                        **self.kernels.conv_keywords())

    def pool(self, x):
        return self.kernels.pool(x)


class MLP(_Layers):
    model_name = "mlp"

    def __init__(self, init_scheme: str = "torch", kernels: Kernels = conv_kernels.XLA, *, rngs: nnx.Rngs):
        super().__init__(init_scheme, kernels)
        self.fc1 = self.linear("fc1", rngs)
        self.fc2 = self.linear("fc2", rngs)

    def __call__(self, x, train: bool = False, dropout_key: jax.Array | None = None):
        return self.fc2(nnx.sigmoid(self.fc1(flatten(x))))


class CNNBase(_Layers):
    model_name = "cnn_base"

    def __init__(self, init_scheme: str = "torch", kernels: Kernels = conv_kernels.XLA, *, rngs: nnx.Rngs):
        super().__init__(init_scheme, kernels)
        self.conv1 = self.conv("conv1", rngs)
        self.conv2 = self.conv("conv2", rngs)
        self.conv3 = self.conv("conv3", rngs)
        self.fc1 = self.linear("fc1", rngs)
        self.fc2 = self.linear("fc2", rngs)

    def __call__(self, x, train: bool = False, dropout_key: jax.Array | None = None):
        x = nnx.relu(self.conv1(x))
        x = self.pool(nnx.relu(self.conv2(x)))
        x = self.pool(nnx.relu(self.conv3(x)))
        x = nnx.relu(self.fc1(flatten(x)))
        return self.fc2(x)


class CNN2Layer(_Layers):
    model_name = "cnn_2layer"

    def __init__(self, init_scheme: str = "torch", kernels: Kernels = conv_kernels.XLA, *, rngs: nnx.Rngs):
        super().__init__(init_scheme, kernels)
        self.conv1 = self.conv("conv1", rngs)
        self.conv2 = self.conv("conv2", rngs)
        self.fc = self.linear("fc", rngs)

    def __call__(self, x, train: bool = False, dropout_key: jax.Array | None = None):
        x = self.pool(nnx.relu(self.conv1(x)))
        x = self.pool(nnx.relu(self.conv2(x)))
        return self.fc(flatten(x))


class LeNet(_Layers):
    model_name = "lenet"

    def __init__(self, init_scheme: str = "torch", kernels: Kernels = conv_kernels.XLA, *, rngs: nnx.Rngs):
        super().__init__(init_scheme, kernels)
        self.conv1 = self.conv("conv1", rngs)
        self.conv2 = self.conv("conv2", rngs)
        self.fc1 = self.linear("fc1", rngs)
        self.fc2 = self.linear("fc2", rngs)
        self.fc3 = self.linear("fc3", rngs)

    def __call__(self, x, train: bool = False, dropout_key: jax.Array | None = None):
        x = self.pool(nnx.relu(self.conv1(x)))
        x = self.pool(nnx.relu(self.conv2(x)))
        x = nnx.relu(self.fc1(flatten(x)))
        x = nnx.relu(self.fc2(x))
        return self.fc3(x)


def linen_dropout_key(dropout_key: jax.Array) -> jax.Array:
    """The key Linen's FashionCNN hands its dropout layer when applied with rngs={"dropout": dropout_key}:
    make_rng folds the layer's scope path ("Dropout_0") and its call count (1) into the key
    (flax.core.scope.LazyRng). Drawing from this key, NNX draws Linen's mask, bit for bit."""
    return LazyRng.create(dropout_key, "Dropout_0", 1).as_jax_rng()


class FashionCNN(_Layers):
    """Outputs log-probabilities, as the source does; its loss is cross-entropy on them (= NLL)."""

    model_name = "fashion_cnn"

    def __init__(self, init_scheme: str = "torch", kernels: Kernels = conv_kernels.XLA, dropout_rate: float = 0.5, *,
                 rngs: nnx.Rngs):
        super().__init__(init_scheme, kernels)
        self.conv1 = self.conv("conv1", rngs)
        self.conv2 = self.conv("conv2", rngs)
        self.fc1 = self.linear("fc1", rngs)
        # The source's Dropout2d on a (N, 50) tensor acts element-wise; plain dropout is the intent.
        self.dropout = nnx.Dropout(dropout_rate)
        self.fc2 = self.linear("fc2", rngs)

    def __call__(self, x, train: bool = False, dropout_key: jax.Array | None = None):
        x = nnx.relu(self.pool(self.conv1(x)))
        x = nnx.relu(self.pool(self.conv2(x)))
        x = nnx.relu(self.fc1(flatten(x)))
        key = linen_dropout_key(dropout_key) if train else None
        x = self.dropout(x, deterministic=not train, rngs=key)
        return nnx.log_softmax(self.fc2(x))


# The module class of each model named in cnn_parity.recipes.MODELS.
MODULES = {module.model_name: module for module in (MLP, CNNBase, CNN2Layer, LeNet, FashionCNN)}


def create_model(name: str, init_scheme: str = "torch", kernels: Kernels = conv_kernels.XLA, *,
                 rngs: nnx.Rngs) -> nnx.Module:
    """Model `name`, its parameters drawn from `rngs` (its "params" stream, in layer order), convolving
    and pooling with `kernels`."""
    return MODULES[name](init_scheme, kernels, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
    """An NNX model's graph definition, to apply to a Linen-layout params dict: `apply` has
    `nn.Module.apply`'s signature, so the code written for Linen's (train_step, loss_and_gradients,
    the evaluator, the parity suite) runs NNX models as they are. Hashable and compared by its
    graph definition, so `jax.jit` treats it as static (a TrainState's `apply_fn`)."""

    graphdef: nnx.GraphDef
    kernels: Kernels = conv_kernels.XLA  # how the model convolves (its compiled programs' options)

    def apply(self, variables: dict[str, Any], x: jax.Array, train: bool = False,
              rngs: dict[str, jax.Array] | None = None) -> jax.Array:
        model = nnx.merge(self.graphdef, variables["params"])
        return model(x, train=train, dropout_key=(rngs or {}).get("dropout"))


def split_params(model: nnx.Module) -> tuple[FunctionalModel, dict[str, Any]]:
    """(graph definition, parameters as a plain nested dict); the model holds parameters only."""
    graphdef, params = nnx.split(model, nnx.Param)
    return FunctionalModel(graphdef, getattr(model, "kernels", conv_kernels.XLA)), nnx.to_pure_dict(params)


def init_params(name: str, key: jax.Array, init_scheme: str = "torch",
                kernels: Kernels = conv_kernels.XLA) -> tuple[FunctionalModel, dict[str, Any]]:
    """Model `name` initialised from `key`, split: what the trainer trains."""
    return split_params(create_model(name, init_scheme, kernels, rngs=nnx.Rngs(params=key)))


def functional_model(name: str, init_scheme: str = "torch", kernels: Kernels = conv_kernels.XLA) -> FunctionalModel:
    """The graph definition alone (traced abstractly: no parameters are drawn)."""
    abstract = nnx.eval_shape(lambda: create_model(name, init_scheme, kernels, rngs=nnx.Rngs(params=0)))
    return split_params(abstract)[0]
