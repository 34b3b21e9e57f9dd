"""How the models convolve and max-pool: the `conv_impl` a model is built with (flax_impl/models.py,
models_nnx.py). Every implementation computes the same function with the same parameters (the parity
suite holds each to the same bounds against PyTorch):
  "xla"    `lax.conv_general_dilated` and `nn.max_pool` (reduce_window): stock Flax, XLA's own
           convolutions (cuDNN / the accelerator's kernels).
  "gemm"   pure JAX: im2col + one matrix product per convolution, and pooling as a reshape + max.
           XLA:CPU's convolution *gradients* are 5-17x slower than its forward for these shapes, its
           select_and_scatter (max-pool gradient) is a scalar loop, and a convolution inside
           `lax.scan` loses its fast runtime kernel; matrix products have none of these problems
           (measurements: benchmarks/FINDINGS.md).
  "onednn" opt-in: pooling as "gemm"; convolutions (forward and both gradients) through oneDNN, the
           kernel library PyTorch's CPU convolutions use (flax_impl/onednn_conv.py, a native extension
           built by `python -m flax_impl.onednn_conv build`). CPU only.
  "none"   what a model without convolutions (mlp) records: it neither convolves nor pools.
Which one a run uses is chosen once, where the trainer is built (flax_impl/train.py, resolve_conv_impl).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_impl import onednn_conv

# The implementations a model can be built with, "none" aside.
CONV_IMPLS = ("xla", "gemm", "onednn")


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


_CONV_GENERAL_DILATED = {"gemm": _gemm_conv_general_dilated, "onednn": _onednn_conv_general_dilated}


def conv_function(conv_impl: str) -> dict[str, Any]:
    """The conv_general_dilated keyword of nn.Conv / nnx.Conv for `conv_impl` (none: XLA's)."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"a model convolves with one of {CONV_IMPLS}, not {conv_impl!r}")
    return {"conv_general_dilated": _CONV_GENERAL_DILATED[conv_impl]} if conv_impl in _CONV_GENERAL_DILATED else {}


def pool_2x2(x: jax.Array, conv_impl: str) -> jax.Array:
    """2x2 max-pooling, stride 2, as `conv_impl` computes it ("onednn" pools as "gemm")."""
    if conv_impl in ("gemm", "onednn"):
        return max_pool_2x2(x)
    return nn.max_pool(x, (2, 2), strides=(2, 2))
