"""Flax pipeline variants. Each is flax_impl.train.FlaxTrainer (same data on device, same per-epoch
permutation, same on-device batch gather, same `train_step`, same RNG per step, same state donation)
with one thing changed:

  jit-loop   FlaxTrainer itself: one jitted step per Python iteration.
  jit-scan   the epoch's whole batches run inside one jitted `lax.scan` (one dispatch per epoch).
  gemm-loop  jit-loop, with every convolution computed as im2col + one GEMM (`gemm_conv`), and
             2x2 max-pooling as a reshape + max whose gradient goes to the first maximum of each
             window, exactly as XLA's reduce_window / select_and_scatter (and PyTorch) route it.
  gemm-scan  jit-scan with the GEMM convolutions and the reshape pooling.

The GEMM variants keep the Flax models of flax_impl/models.py and their parameter pytrees unchanged:
the substitution happens at trace time with `flax.linen.intercept_methods`, so any checkpoint or
converter works with them. benchmarks/check_variants.py verifies they compute the same function.
"""

from __future__ import annotations

import functools
import os
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_impl import data
from flax_impl.train import FlaxTrainer, train_step

VARIANTS = {
    "jit-loop": dict(loop="python", fast_ops=False),
    "jit-scan": dict(loop="scan", fast_ops=False),
    "gemm-loop": dict(loop="python", fast_ops="gemm"),
    "gemm-scan": dict(loop="scan", fast_ops="gemm"),
    "hybrid-loop": dict(loop="python", fast_ops="hybrid"),
    "hybrid-scan": dict(loop="scan", fast_ops="hybrid"),
}


# ----------------------------------------------------------------------------------------------
# Convolution as im2col + GEMM, and 2x2 max-pooling without reduce_window.

def gemm_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: int,
              layout: str | None = None) -> jax.Array:
    """Stride-1 2-D convolution (NHWC input, HWIO kernel) as one matrix product (im2col).

    The patch matrix is kh·kw shifted slices of the (padded) input stacked in (i, j, c) order, the
    row order of the HWIO kernel reshaped to (kh·kw·C, O). `layout` "cmajor" builds it channel-major,
    (kh·kw·C, N·Ho·Wo), and computes Wᵀ·P, so the long N·Ho·Wo axis is the contiguous one for the
    GEMM and for the slice copies; "nhwc" builds (N·Ho·Wo, kh·kw·C) and computes P·W. Under autodiff
    the slices' transposes are pads and adds that XLA fuses, and both gradients are GEMMs.
    """
    layout = layout or GEMM_LAYOUT
    kh, kw, cin, cout = kernel.shape
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    k2 = kernel.reshape(kh * kw * cin, cout)
    if layout == "cmajor":
        xc = jnp.transpose(x, (3, 0, 1, 2))  # C, N, H, W
        patches = jnp.concatenate([xc[:, :, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)], axis=0)
        y = jnp.dot(k2.T, patches.reshape(kh * kw * cin, n * ho * wo))  # (O, N·Ho·Wo)
        y = jnp.transpose(y.reshape(cout, n, ho, wo), (1, 2, 3, 0))
    else:
        patches = jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
        y = jnp.dot(patches.reshape(n * ho * wo, kh * kw * cin), k2).reshape(n, ho, wo, cout)
    return y if bias is None else y + bias


GEMM_LAYOUT = os.environ.get("BENCH_GEMM_LAYOUT", "nhwc")


def xla_conv(x, kernel, bias, padding):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(padding, padding)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y if bias is None else y + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def hybrid_conv(x, kernel, bias, padding):
    """XLA's convolution forward (fast on CPU), with the gradients of `gemm_conv` (XLA's CPU
    convolution gradients are its slow part). The same function, the same gradients up to rounding."""
    return xla_conv(x, kernel, bias, padding)


def _hybrid_fwd(x, kernel, bias, padding):
    return xla_conv(x, kernel, bias, padding), (x, kernel, bias)


def _hybrid_bwd(padding, residuals, g):
    x, kernel, bias = residuals
    _, vjp = jax.vjp(lambda x, k, b: gemm_conv(x, k, b, padding), x, kernel, bias)
    return vjp(g)


hybrid_conv.defvjp(_hybrid_fwd, _hybrid_bwd)
CONV_IMPL = {"gemm": gemm_conv, "hybrid": hybrid_conv}


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """nn.max_pool(x, (2, 2), strides=(2, 2)) on NHWC (even H, W), as a reshape and a max."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _pool_fwd(x):
    return max_pool_2x2(x), x


def _pool_bwd(x, g):
    # The whole gradient goes to the first maximum of each window in row-major order (XLA's
    # select_and_scatter with `ge`, and PyTorch's max_pool2d backward, do the same).
    n, h, w, c = x.shape
    windows = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
    first = jax.nn.one_hot(jnp.argmax(windows, axis=-1), 4, dtype=x.dtype)
    dx = (first * g[..., None]).reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return (dx.reshape(n, h, w, c),)


max_pool_2x2.defvjp(_pool_fwd, _pool_bwd)


def _fast_ops_interceptor(next_fun, args, kwargs, context, conv="gemm"):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, nn.Conv):
        (p_h, p_w) = [tuple(p) for p in module.padding]
        assert p_h[0] == p_h[1] == p_w[0] == p_w[1] and module.strides in (None, 1, (1, 1))
        bias = module.get_variable("params", "bias") if module.use_bias else None
        return CONV_IMPL[conv](args[0], module.get_variable("params", "kernel"), bias, p_h[0])
    return next_fun(*args, **kwargs)


def _patched_max_pool(original):
    def pool(x, window_shape, strides=None, padding="VALID"):
        if tuple(window_shape) == (2, 2) and tuple(strides or ()) == (2, 2) and padding == "VALID" \
                and x.ndim == 4 and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
            return max_pool_2x2(x)
        return original(x, window_shape, strides=strides, padding=padding)
    return pool


def fast_apply(apply_fn, conv="gemm"):
    """`apply_fn` (a Flax `Module.apply`) with `conv` convolutions and reshape pooling."""

    @functools.wraps(apply_fn)
    def apply(*args, **kwargs):
        import flax_impl.models as models
        original = models.nn.max_pool
        # flax_impl.models calls `nn.max_pool` through the module's `nn` name; swap it while tracing.
        models.nn.max_pool = _patched_max_pool(original)
        try:
            with nn.intercept_methods(functools.partial(_fast_ops_interceptor, conv=conv)):
                return apply_fn(*args, **kwargs)
        finally:
            models.nn.max_pool = original

    return apply


# ----------------------------------------------------------------------------------------------
# Trainers.

class VariantTrainer(FlaxTrainer):
    def __init__(self, recipe, data_dir=None, loop="python", fast_ops=False, unroll=1):
        super().__init__(recipe, "device", data_dir)
        if fast_ops:
            self.state = self.state.replace(apply_fn=fast_apply(self.state.apply_fn, fast_ops))
        self.loop = loop
        normalize = functools.partial(data.normalize, mean=recipe.normalize_mean, std=recipe.normalize_std)
        b = recipe.batch_size

        def train_scan(state, split, perm, rng, start, num_steps):
            def step(state, i):
                index = jax.lax.dynamic_slice_in_dim(perm, i * b, b)
                batch = {"image": normalize(split.images[index]), "label": split.labels[index]}
                state, metrics = train_step(state, batch, jax.random.fold_in(rng, state.step))
                return state, (metrics["loss"], metrics["correct"])
            return jax.lax.scan(step, state, start + jnp.arange(num_steps), unroll=unroll)

        self._train_scan = jax.jit(train_scan, donate_argnums=0, static_argnames="num_steps")

    def train_epoch(self, epoch, *args):
        # Same signature as the base class: (epoch, num_steps, log) or (epoch, start, num_steps, log).
        start, num_steps, log = args if len(args) == 3 else (0, *args)
        if self.loop == "python":
            if "start" in inspect.signature(super().train_epoch).parameters:
                return super().train_epoch(epoch, start, num_steps, log)
            assert start == 0
            return super().train_epoch(epoch, num_steps, log)
        n, b = len(self.train_data.labels), self.recipe.batch_size
        perm = data.epoch_permutation(self.shuffle_key, epoch, n)
        full = max(0, min(start + num_steps, n // b) - start)
        if full:
            self.state, (losses, correct) = self._train_scan(self.state, self.train_data, perm, self.dropout_key,
                                                             start, num_steps=full)
            for loss, c in zip(np.asarray(losses), np.asarray(correct)):
                log.record(loss, c, b)
        for i in range(start + full, start + num_steps):  # the last, partial batch (never more than one)
            size = min(b, n - i * b)
            self.state, metrics = self._train_on_slice(self.state, self.train_data, perm, i * b, self.dropout_key,
                                                       batch_size=size)
            log.record(metrics["loss"], metrics["correct"], size)


def make_trainer(pipeline: str, recipe, data_dir=None) -> FlaxTrainer:
    if pipeline == "jit-loop":
        return FlaxTrainer(recipe, "device", data_dir)
    return VariantTrainer(recipe, data_dir, **VARIANTS[pipeline])


def gemm_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                              dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """A drop-in for `lax.conv_general_dilated` as `nn.Conv(conv_general_dilated=...)` calls it, for
    the stride-1, undilated, symmetric-padding NHWC/HWIO convolutions of these models (the
    integration path into flax_impl/models.py; the benchmark itself intercepts instead)."""
    pads = [tuple(p) for p in padding]
    assert tuple(window_strides) == (1, 1) and feature_group_count == 1
    assert all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
    assert all(p == (pads[0][0], pads[0][0]) for p in pads)
    return gemm_conv(lhs, rhs, None, pads[0][0])
