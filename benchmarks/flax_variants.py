"""Flax variants the benchmark compares. Each is flax_impl.train.FlaxTrainer (same data on the device,
same per-epoch permutation, same dropout keys, same state donation, and every step FlaxTrainer's own
gathered step: the batch gathered on the device, then `train_step`) with the convolution formulation
and the step loop chosen:

  jit-loop      XLA convolutions and reduce_window pooling; one jitted step per Python iteration
                (the straightforward Flax implementation).
  jit-scan      XLA convolutions; the epoch's full batches under one jitted `lax.scan`.
  gemm-loop     im2col + GEMM convolutions and reshape pooling (flax_impl.models, conv_impl="gemm");
                one jitted step per Python iteration.
  gemm-scan     GEMM convolutions; the epoch's full batches under one jitted `lax.scan`.
  gemm-chunked  FlaxTrainer as shipped on a CPU: GEMM convolutions, STEPS_PER_DISPATCH steps per
                jitted `fori_loop` (what `python -m flax_impl.train` runs).

benchmarks/check_variants.py verifies that they compute the same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flax_impl.train import FlaxTrainer

VARIANTS = {  # variant -> (conv_impl, loop)
    "jit-loop": ("xla", "python"),
    "jit-scan": ("xla", "scan"),
    "gemm-loop": ("gemm", "python"),
    "gemm-scan": ("gemm", "scan"),
    "gemm-chunked": ("gemm", "chunked"),
}


class VariantTrainer(FlaxTrainer):
    def __init__(self, recipe, data_dir=None, conv_impl="gemm", loop="chunked"):
        super().__init__(recipe, "device", data_dir, conv_impl=conv_impl)
        self.loop = loop
        b = recipe.batch_size

        def train_scan(state, split, perm, rng, start, num_steps):
            def step(state, i):
                # FlaxTrainer's jitted gathered step, inlined into the scan (donation applies to the scan's state)
                state, metrics = self.train_on_slice(state, split, perm, i * b, rng, batch_size=b)
                return state, (metrics["loss"], metrics["correct"])
            return jax.lax.scan(step, state, start + jnp.arange(num_steps))

        self._train_scan = jax.jit(train_scan, donate_argnums=0, static_argnames="num_steps")

    def train_epoch(self, epoch, start, num_steps, log):
        if self.loop == "chunked":
            return super().train_epoch(epoch, start, num_steps, log)
        n, b = len(self.train_data.labels), self.recipe.batch_size
        perm = self.epoch_order(epoch)
        full = max(0, min(start + num_steps, n // b) - start) if self.loop == "scan" else 0
        if full:
            self.state, (losses, correct) = self._train_scan(self.state, self.train_data, perm, self.dropout_key,
                                                             start, num_steps=full)
            log.record_steps(losses, correct, full, b)
        for i in range(start + full, start + num_steps):  # python loop; for scan, the last partial batch
            size = min(b, n - i * b)
            self.state, metrics = self.train_on_slice(self.state, self.train_data, perm, i * b, self.dropout_key,
                                                      batch_size=size)
            log.record(metrics["loss"], metrics["correct"], size)


def make_trainer(variant: str, recipe, data_dir=None) -> FlaxTrainer:
    conv_impl, loop = VARIANTS[variant]
    return VariantTrainer(recipe, data_dir, conv_impl, loop)

