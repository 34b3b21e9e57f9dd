"""The five models as Flax Linen modules (NHWC inputs, float32).

Layer names match torch_ref/models.py attribute names (conv1, fc1, ...), so converting weights is a
matter of layout only (see cnn_parity/weights.py). `init_scheme="torch"` reproduces PyTorch's default
initialisation, U(±1/√fan_in) for weights and biases; `"flax"` keeps Flax's defaults (LeCun-normal
weights, zero biases). A weight the source initialised explicitly (cnn_parity.weights.EXPLICIT_WEIGHT_INITS:
cnn_2layer's final Linear, Xavier-uniform) keeps that under both schemes.

`kernels` says how the convolutions and 2x2 max-pools are computed (a tier of flax_impl/kernels.py;
default `kernels.XLA`, Flax's own layers). The trainer chooses it (flax_impl/train.py); a model
without convolutions ignores it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_parity.weights import EXPLICIT_WEIGHT_INITS
from flax_impl import kernels as conv_kernels
from flax_impl.kernels import Kernels

# PyTorch's kaiming_uniform_(a=√5) is U(±gain·√(3/fan_in)) with gain √(1/3): U(±1/√fan_in).
_torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# Flax's implementation of each initialiser cnn_parity.weights.EXPLICIT_WEIGHT_INITS names.
_EXPLICIT_KERNEL_INITS = {"xavier_uniform": nn.initializers.xavier_uniform()}


def layer_inits(init_scheme: str, fan_in: int, model: str, layer: str) -> dict[str, Any]:
    """The kernel_init / bias_init keywords of `model`'s Dense or Conv layer `layer` with `fan_in`
    inputs (Linen's nn.Dense / nn.Conv and NNX's nnx.Linear / nnx.Conv take the same ones); none:
    Flax's defaults. A kernel the source initialised explicitly keeps that under either scheme."""
    explicit = EXPLICIT_WEIGHT_INITS.get(model, {}).get(layer)
    kernel_init = _EXPLICIT_KERNEL_INITS[explicit] if explicit else None
    if init_scheme == "torch":
        return {"kernel_init": kernel_init or _torch_kernel_init, "bias_init": _torch_bias_init(fan_in)}
    return {"kernel_init": kernel_init} if kernel_init else {}


class _Layers(nn.Module):
    """Base: builds Dense / Conv layers initialised by `init_scheme`, convolving and pooling with
    `kernels` (flax_impl/kernels.py; default: Flax's own layers). `model_name`: the model a
    subclass is (cnn_parity.recipes.MODELS)."""

    model_name = ""  # a class attribute, not a field
    init_scheme: str = "torch"
    kernels: Kernels = conv_kernels.XLA

    def dense(self, x, features: int, name: str):
        return nn.Dense(features, name=name, **layer_inits(self.init_scheme, x.shape[-1], self.model_name, name))(x)

    def conv(self, x, features: int, kernel: int, name: str, padding: int = 0):
        return nn.Conv(features, (kernel, kernel), padding=[(padding, padding)] * 2, name=name,
                       **layer_inits(self.init_scheme, x.shape[-1] * kernel * kernel, self.model_name, name),
                       **self.kernels.conv_keywords())(x)

    def pool(self, x):
        return self.kernels.pool(x)


def flatten(x):
    return x.reshape((x.shape[0], -1))


class MLP(_Layers):
    model_name = "mlp"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.sigmoid(self.dense(flatten(x), 20, "fc1"))
        return self.dense(x, 10, "fc2")


class CNNBase(_Layers):
    model_name = "cnn_base"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(self.conv(x, 16, 5, "conv1"))
        x = self.pool(nn.relu(self.conv(x, 32, 5, "conv2")))
        x = self.pool(nn.relu(self.conv(x, 64, 5, "conv3")))
        x = nn.relu(self.dense(flatten(x), 100, "fc1"))
        return self.dense(x, 10, "fc2")


class CNN2Layer(_Layers):
    model_name = "cnn_2layer"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.pool(nn.relu(self.conv(x, 32, 3, "conv1", padding=1)))
        x = self.pool(nn.relu(self.conv(x, 64, 3, "conv2", padding=1)))
        return self.dense(flatten(x), 10, "fc")


class LeNet(_Layers):
    model_name = "lenet"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.pool(nn.relu(self.conv(x, 6, 5, "conv1")))
        x = self.pool(nn.relu(self.conv(x, 16, 5, "conv2")))
        x = nn.relu(self.dense(flatten(x), 120, "fc1"))
        x = nn.relu(self.dense(x, 84, "fc2"))
        return self.dense(x, 10, "fc3")


class FashionCNN(_Layers):
    """Outputs log-probabilities, as the source does; its loss is cross-entropy on them (= NLL)."""

    model_name = "fashion_cnn"
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(self.pool(self.conv(x, 10, 5, "conv1")))
        x = nn.relu(self.pool(self.conv(x, 20, 5, "conv2")))
        x = nn.relu(self.dense(flatten(x), 50, "fc1"))
        # The source's Dropout2d on a (N, 50) tensor acts element-wise; plain dropout is the intent.
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.log_softmax(self.dense(x, 10, "fc2"))


# The module class of each model named in cnn_parity.recipes.MODELS.
MODULES = {module.model_name: module for module in (MLP, CNNBase, CNN2Layer, LeNet, FashionCNN)}


def create_model(name: str, init_scheme: str = "torch", kernels: Kernels = conv_kernels.XLA) -> nn.Module:
    return MODULES[name](init_scheme=init_scheme, kernels=kernels)


def init_params(model: nn.Module, key: jax.Array) -> Any:
    """The parameter pytree of `model` for 28x28x1 inputs."""
    return jax.jit(model.init)(key, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]


def num_params(params: Any) -> int:
    return sum(p.size for p in jax.tree_util.tree_leaves(params))
