"""The five models as Flax Linen modules (NHWC inputs, float32).

Layer names match torch_ref/models.py attribute names (conv1, fc1, ...), so converting weights is a
matter of layout only (see cnn_parity/weights.py). `init_scheme="torch"` reproduces PyTorch's default
initialisation, U(±1/√fan_in) for weights and biases; `"flax"` keeps Flax's defaults (LeCun-normal
weights, zero biases). A layer the source initialised explicitly (cnn_2layer's final Linear,
Xavier-uniform) keeps that under both schemes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's kaiming_uniform_(a=√5) is U(±gain·√(3/fan_in)) with gain √(1/3): U(±1/√fan_in).
_torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class _Layers(nn.Module):
    """Base: builds Dense / Conv layers initialised by `init_scheme`."""

    init_scheme: str = "torch"

    def dense(self, x, features: int, name: str, kernel_init=None):
        if self.init_scheme == "torch":
            fan_in = x.shape[-1]
            layer = nn.Dense(features, name=name, kernel_init=kernel_init or _torch_kernel_init,
                             bias_init=_torch_bias_init(fan_in))
        else:
            layer = nn.Dense(features, name=name, **({"kernel_init": kernel_init} if kernel_init else {}))
        return layer(x)

    def conv(self, x, features: int, kernel: int, name: str, padding: int = 0):
        kwargs: dict[str, Any] = {}
        if self.init_scheme == "torch":
            kwargs = {"kernel_init": _torch_kernel_init, "bias_init": _torch_bias_init(x.shape[-1] * kernel * kernel)}
        return nn.Conv(features, (kernel, kernel), padding=[(padding, padding)] * 2, name=name, **kwargs)(x)


def _pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _flatten(x):
    return x.reshape((x.shape[0], -1))


class MLP(_Layers):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.sigmoid(self.dense(_flatten(x), 20, "fc1"))
        return self.dense(x, 10, "fc2")


class CNNBase(_Layers):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(self.conv(x, 16, 5, "conv1"))
        x = _pool(nn.relu(self.conv(x, 32, 5, "conv2")))
        x = _pool(nn.relu(self.conv(x, 64, 5, "conv3")))
        x = nn.relu(self.dense(_flatten(x), 100, "fc1"))
        return self.dense(x, 10, "fc2")


class CNN2Layer(_Layers):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _pool(nn.relu(self.conv(x, 32, 3, "conv1", padding=1)))
        x = _pool(nn.relu(self.conv(x, 64, 3, "conv2", padding=1)))
        return self.dense(_flatten(x), 10, "fc", kernel_init=nn.initializers.xavier_uniform())


class LeNet(_Layers):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _pool(nn.relu(self.conv(x, 6, 5, "conv1")))
        x = _pool(nn.relu(self.conv(x, 16, 5, "conv2")))
        x = nn.relu(self.dense(_flatten(x), 120, "fc1"))
        x = nn.relu(self.dense(x, 84, "fc2"))
        return self.dense(x, 10, "fc3")


class FashionCNN(_Layers):
    """Outputs log-probabilities, as the source does; its loss is cross-entropy on them (= NLL)."""

    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(_pool(self.conv(x, 10, 5, "conv1")))
        x = nn.relu(_pool(self.conv(x, 20, 5, "conv2")))
        x = nn.relu(self.dense(_flatten(x), 50, "fc1"))
        # The source's Dropout2d on a (N, 50) tensor acts element-wise; plain dropout is the intent.
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.log_softmax(self.dense(x, 10, "fc2"))


MODELS = {"mlp": MLP, "cnn_base": CNNBase, "cnn_2layer": CNN2Layer, "lenet": LeNet, "fashion_cnn": FashionCNN}


def create_model(name: str, init_scheme: str = "torch") -> nn.Module:
    return MODELS[name](init_scheme=init_scheme)


def init_params(model: nn.Module, key: jax.Array) -> Any:
    """The parameter pytree of `model` for 28x28x1 inputs."""
    return jax.jit(model.init)(key, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]


def num_params(params: Any) -> int:
    return sum(p.size for p in jax.tree_util.tree_leaves(params))
