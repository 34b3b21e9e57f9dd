"""The five models as Flax Linen modules (NHWC inputs, float32).

Layer names match torch_ref/models.py attribute names (conv1, fc1, ...), so converting weights is a
matter of layout only (see cnn_parity/weights.py). `init_scheme="torch"` reproduces PyTorch's default
initialisation, U(±1/√fan_in) for weights and biases; `"flax"` keeps Flax's defaults (LeCun-normal
weights, zero biases). A layer the source initialised explicitly (cnn_2layer's final Linear,
Xavier-uniform) keeps that under both schemes.

`conv_impl` chooses how convolutions and 2x2 max-pooling are computed; all compute the same function
with the same parameters (parity_tests hold them to the same bounds against PyTorch):
  "xla"   `lax.conv_general_dilated` and `nn.max_pool` (reduce_window): cuDNN / the GPU's own kernels.
  "gemm"  im2col + one matrix product per convolution, and pooling as a reshape + max. XLA:CPU's
          convolution *gradients* are 5-17x slower than its forward for these shapes, its
          select_and_scatter (max-pool gradient) is a scalar loop, and a convolution inside
          `lax.scan` loses its fast runtime kernel; matrix products have none of these problems
          (measurements: benchmarks/FINDINGS.md).
  "onednn" pooling as "gemm"; convolutions (forward and both gradients) through oneDNN's direct
          convolution, faster than "gemm" on every layer of the five models (benchmarks/FINDINGS.md,
          section 10): flax_impl/onednn_conv.py, an XLA FFI extension built on first use
          (`apt-get install libdnnl-dev g++`). CPU only.
  "auto"  (default) on one CPU device "onednn" where its extension builds, else "gemm"; on several
          CPU devices "gemm"; on any other backend "xla".
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_parity.errors import UsageError
from flax_impl import onednn_conv

# PyTorch's kaiming_uniform_(a=√5) is U(±gain·√(3/fan_in)) with gain √(1/3): U(±1/√fan_in).
_torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


CONV_IMPLS = ("auto", "xla", "gemm", "onednn")


def resolve_conv_impl(conv_impl: str = "auto", devices: int = 1) -> str:
    """The conv_impl "auto" stands for when training on `devices` devices; UsageError if "onednn" is
    chosen and cannot run. oneDNN's calls are opaque to XLA's partitioner, which would gather the
    whole batch onto every device to run them, so it trains on one device only."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, not {conv_impl!r}")
    if conv_impl == "auto":
        if jax.default_backend() != "cpu":
            return "xla"
        return "onednn" if devices == 1 and onednn_conv.available()[0] else "gemm"
    if conv_impl == "onednn":
        if jax.default_backend() != "cpu":
            raise UsageError(f"conv_impl onednn runs on the CPU only; JAX's backend here is {jax.default_backend()}")
        if devices > 1:
            raise UsageError(f"conv_impl onednn trains on one device, not {devices} (XLA would run every call on the "
                             "whole batch on each device): pass --devices 1, or --conv-impl gemm")
        onednn_conv.require()
    return conv_impl


# Channels from which one channel-axis concatenate of the kh·kw shifted slices builds the patches
# fastest: each slice then copies runs of >= 64 bytes (16 float32, a cache line). With fewer channels
# those runs are a few bytes, and two stacks on a new axis are faster (XLA:CPU fuses each stack of
# <= 8 operands into one loop; it leaves a 25-operand concatenate unfused). Measured per layer,
# forward + backward: benchmarks/FINDINGS.md, section 6.
CONCATENATE_FROM_CHANNELS = 16


def gemm_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """Stride-1 2-D convolution (NHWC input, HWIO kernel) as one matrix product (im2col).

    The patch matrix holds the kh·kw shifted windows of the padded input in (i, j, c) order, the row
    order of the HWIO kernel reshaped to (kh·kw·C, O); how it is assembled depends on C (above), the
    values do not. Under autodiff the slices' transposes are pads and adds that XLA fuses, and both
    gradients are matrix products.
    """
    kh, kw, cin, cout = kernel.shape
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    if cin >= CONCATENATE_FROM_CHANNELS:
        patches = jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    else:
        columns = jnp.stack([x[:, :, j:j + wo, :] for j in range(kw)], axis=3)  # (n, h, wo, kw, c)
        patches = jnp.stack([columns[:, i:i + ho] for i in range(kh)], axis=3)  # (n, ho, wo, kh, kw, c)
    y = jnp.dot(patches.reshape(n * ho * wo, kh * kw * cin), kernel.reshape(kh * kw * cin, cout))
    return y.reshape(n, ho, wo, cout)


def _conv_general_dilated(conv, conv_impl: str):
    """`lax.conv_general_dilated` as nn.Conv calls it, computed by `conv(x, kernel, padding)`, for the
    stride-1, undilated, symmetrically padded NHWC/HWIO convolutions these models have (anything
    else is a programming error)."""

    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1, precision=None, **unused):
        (top, bottom), (left, right) = padding
        if (tuple(window_strides) != (1, 1) or feature_group_count != 1 or not top == bottom == left == right
                or any(d not in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))):
            raise NotImplementedError(f"conv_impl {conv_impl}: only stride 1, no dilation, equal padding")
        return conv(lhs, rhs, top)

    return conv_general_dilated


def onednn_or_gemm_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """oneDNN's convolution in float32, the only dtype the extension computes; `gemm_conv` in any
    other (the parity suite's float64 trajectory)."""
    if x.dtype == kernel.dtype == jnp.float32:
        return onednn_conv.conv(x, kernel, padding)
    return gemm_conv(x, kernel, padding)


_gemm_conv_general_dilated = _conv_general_dilated(gemm_conv, "gemm")
# Every convolution of the five models: oneDNN's beats gemm_conv on each, first layers included
# (forward + backward, interleaved, loaded machine; benchmarks/FINDINGS.md, section 10).
_onednn_conv_general_dilated = _conv_general_dilated(onednn_or_gemm_conv, "onednn")


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """nn.max_pool(x, (2, 2), strides=(2, 2)) on NHWC with even H and W, as a reshape and a max."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool_fwd(x):
    return max_pool_2x2(x), x


def _max_pool_bwd(x, g):
    # The whole gradient goes to the first maximum of each window in row-major order, as XLA's
    # select_and_scatter and PyTorch's max_pool2d backward route it (ties included); jnp.max's own
    # gradient would split it between tied maxima.
    n, h, w, c = x.shape
    windows = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
    first = jax.nn.one_hot(jnp.argmax(windows, axis=-1), 4, dtype=x.dtype)
    dx = (first * g[..., None]).reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return (dx.reshape(n, h, w, c),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def layer_inits(init_scheme: str, fan_in: int, kernel_init=None) -> dict[str, Any]:
    """The kernel_init / bias_init keywords of a Dense or Conv layer with `fan_in` inputs (Linen's
    nn.Dense / nn.Conv and NNX's nnx.Linear / nnx.Conv take the same ones); none: Flax's defaults.
    `kernel_init`: a layer the source initialised explicitly, under either scheme."""
    if init_scheme == "torch":
        return {"kernel_init": kernel_init or _torch_kernel_init, "bias_init": _torch_bias_init(fan_in)}
    return {"kernel_init": kernel_init} if kernel_init else {}


_CONV_GENERAL_DILATED = {"gemm": _gemm_conv_general_dilated, "onednn": _onednn_conv_general_dilated}


def conv_function(conv_impl: str) -> dict[str, Any]:
    """The conv_general_dilated keyword of nn.Conv / nnx.Conv for a resolved `conv_impl` (none: XLA's)."""
    return {"conv_general_dilated": _CONV_GENERAL_DILATED[conv_impl]} if conv_impl in _CONV_GENERAL_DILATED else {}


def pool_2x2(x: jax.Array, conv_impl: str) -> jax.Array:
    """2x2 max-pooling, stride 2, as a resolved `conv_impl` computes it ("onednn" pools as "gemm")."""
    if conv_impl in ("gemm", "onednn"):
        return max_pool_2x2(x)
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class _Layers(nn.Module):
    """Base: builds Dense / Conv layers initialised by `init_scheme`, convolving and pooling per
    `conv_impl` ("xla", "gemm" or "onednn"; create_model resolves "auto")."""

    init_scheme: str = "torch"
    conv_impl: str = "xla"

    def dense(self, x, features: int, name: str, kernel_init=None):
        return nn.Dense(features, name=name, **layer_inits(self.init_scheme, x.shape[-1], kernel_init))(x)

    def conv(self, x, features: int, kernel: int, name: str, padding: int = 0):
        return nn.Conv(features, (kernel, kernel), padding=[(padding, padding)] * 2, name=name,
                       **layer_inits(self.init_scheme, x.shape[-1] * kernel * kernel),
                       **conv_function(self.conv_impl))(x)

    def pool(self, x):
        return pool_2x2(x, self.conv_impl)


def flatten(x):
    return x.reshape((x.shape[0], -1))


class MLP(_Layers):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.sigmoid(self.dense(flatten(x), 20, "fc1"))
        return self.dense(x, 10, "fc2")


class CNNBase(_Layers):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(self.conv(x, 16, 5, "conv1"))
        x = self.pool(nn.relu(self.conv(x, 32, 5, "conv2")))
        x = self.pool(nn.relu(self.conv(x, 64, 5, "conv3")))
        x = nn.relu(self.dense(flatten(x), 100, "fc1"))
        return self.dense(x, 10, "fc2")


class CNN2Layer(_Layers):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.pool(nn.relu(self.conv(x, 32, 3, "conv1", padding=1)))
        x = self.pool(nn.relu(self.conv(x, 64, 3, "conv2", padding=1)))
        return self.dense(flatten(x), 10, "fc", kernel_init=nn.initializers.xavier_uniform())


class LeNet(_Layers):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.pool(nn.relu(self.conv(x, 6, 5, "conv1")))
        x = self.pool(nn.relu(self.conv(x, 16, 5, "conv2")))
        x = nn.relu(self.dense(flatten(x), 120, "fc1"))
        x = nn.relu(self.dense(x, 84, "fc2"))
        return self.dense(x, 10, "fc3")


class FashionCNN(_Layers):
    """Outputs log-probabilities, as the source does; its loss is cross-entropy on them (= NLL)."""

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
MODULES = {"mlp": MLP, "cnn_base": CNNBase, "cnn_2layer": CNN2Layer, "lenet": LeNet, "fashion_cnn": FashionCNN}


def create_model(name: str, init_scheme: str = "torch", conv_impl: str = "auto") -> nn.Module:
    return MODULES[name](init_scheme=init_scheme, conv_impl=resolve_conv_impl(conv_impl))


def init_params(model: nn.Module, key: jax.Array) -> Any:
    """The parameter pytree of `model` for 28x28x1 inputs."""
    return jax.jit(model.init)(key, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]


def num_params(params: Any) -> int:
    return sum(p.size for p in jax.tree_util.tree_leaves(params))
