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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_impl import data
from flax_impl.train import FlaxTrainer, train_step

VARIANTS = {
    "jit-loop": dict(loop="python", fast_ops=False),
    "jit-scan": dict(loop="scan", fast_ops=False),
    "gemm-loop": dict(loop="python", fast_ops=True),
    "gemm-scan": dict(loop="scan", fast_ops=True),
}


# ----------------------------------------------------------------------------------------------
# Convolution as im2col + GEMM, and 2x2 max-pooling without reduce_window.

def gemm_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: int) -> jax.Array:
    """Stride-1 2-D convolution (NHWC input, HWIO kernel) as one matrix product.

    The patches are kh·kw shifted slices of the (padded) input, concatenated along channels in
    (i, j, c) order, which is the row order of the HWIO kernel reshaped to (kh·kw·C, O). Under
    autodiff the slices' transposes are pads and adds that XLA fuses, and both gradients are GEMMs.
    """
    kh, kw, cin, cout = kernel.shape
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    patches = jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    y = jnp.dot(patches.reshape(n * ho * wo, kh * kw * cin), kernel.reshape(kh * kw * cin, cout))
    y = y.reshape(n, ho, wo, cout)
    return y if bias is None else y + bias


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


def _fast_ops_interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, nn.Conv):
        (p_h, p_w) = [tuple(p) for p in module.padding]
        assert p_h[0] == p_h[1] == p_w[0] == p_w[1] and module.strides in (None, 1, (1, 1))
        bias = module.get_variable("params", "bias") if module.use_bias else None
        return gemm_conv(args[0], module.get_variable("params", "kernel"), bias, p_h[0])
    return next_fun(*args, **kwargs)


def _patched_max_pool(original):
    def pool(x, window_shape, strides=None, padding="VALID"):
        if tuple(window_shape) == (2, 2) and tuple(strides or ()) == (2, 2) and padding == "VALID" \
                and x.ndim == 4 and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
            return max_pool_2x2(x)
        return original(x, window_shape, strides=strides, padding=padding)
    return pool


def fast_apply(apply_fn):
    """`apply_fn` (a Flax `Module.apply`) with GEMM convolutions and reshape pooling."""

    @functools.wraps(apply_fn)
    def apply(*args, **kwargs):
        import flax_impl.models as models
        original = models.nn.max_pool
        # flax_impl.models calls `nn.max_pool` through the module's `nn` name; swap it while tracing.
        models.nn.max_pool = _patched_max_pool(original)
        try:
            with nn.intercept_methods(_fast_ops_interceptor):
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
            self.state = self.state.replace(apply_fn=fast_apply(self.state.apply_fn))
        self.loop = loop
        normalize = functools.partial(data.normalize, mean=recipe.normalize_mean, std=recipe.normalize_std)
        b = recipe.batch_size

        def train_scan(state, split, perm, rng, num_steps):
            def step(state, i):
                index = jax.lax.dynamic_slice_in_dim(perm, i * b, b)
                batch = {"image": normalize(split.images[index]), "label": split.labels[index]}
                state, metrics = train_step(state, batch, jax.random.fold_in(rng, state.step))
                return state, (metrics["loss"], metrics["correct"])
            return jax.lax.scan(step, state, jnp.arange(num_steps), unroll=unroll)

        self._train_scan = jax.jit(train_scan, donate_argnums=0, static_argnames="num_steps")

    def train_epoch(self, epoch, num_steps, log):
        if self.loop == "python":
            return super().train_epoch(epoch, num_steps, log)
        n, b = len(self.train_data.labels), self.recipe.batch_size
        perm = data.epoch_permutation(self.shuffle_key, epoch, n)
        full = min(num_steps, n // b)
        if full:
            self.state, (losses, correct) = self._train_scan(self.state, self.train_data, perm, self.dropout_key,
                                                             num_steps=full)
            for loss, c in zip(np.asarray(losses), np.asarray(correct)):
                log.record(loss, c, b)
        for i in range(full, num_steps):  # the last, partial batch (never more than one)
            size = min(b, n - i * b)
            self.state, metrics = self._train_on_slice(self.state, self.train_data, perm, i * b, self.dropout_key,
                                                       batch_size=size)
            log.record(metrics["loss"], metrics["correct"], size)


def make_trainer(pipeline: str, recipe, data_dir=None) -> FlaxTrainer:
    if pipeline == "jit-loop":
        return FlaxTrainer(recipe, "device", data_dir)
    return VariantTrainer(recipe, data_dir, **VARIANTS[pipeline])
