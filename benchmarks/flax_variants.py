"""Flax variants the benchmark compares. Each is flax_impl.train.FlaxTrainer (same data on the device,
same per-epoch permutation, same dropout keys, same state donation, and every step FlaxTrainer's own
gathered step: the batch gathered on the device, then `train_step`) with the convolution formulation
and the step loop chosen:

  jit-loop      XLA convolutions and reduce_window pooling; one jitted step per Python iteration
                (the straightforward Flax implementation).
  jit-scan      XLA convolutions; the epoch's full batches under one jitted `lax.scan`.
  gemm-loop     im2col + GEMM convolutions and reshape pooling (flax_impl/kernels.py, conv_impl="gemm");
                one jitted step per Python iteration.
  gemm-scan     GEMM convolutions; the epoch's full batches under one jitted `lax.scan`.
  gemm-chunked  FlaxTrainer's loop, STEPS_PER_DISPATCH steps per jitted `fori_loop`, with GEMM
                convolutions (`--conv-impl gemm`).
  canonical-chunked  the same loop with the pure-JAX "canonical" tier (`--conv-impl canonical`: XLA's
                convolution kernel for the forward pass and both gradients, YNNPACK's convolutions off).
  jaxlib-onednn-chunked  the same loop with jaxlib's own oneDNN convolution (`--conv-impl
                jaxlib-onednn`): what `python -m flax_impl.train` runs on a CPU where its self-test passes.
  onednn-chunked  the same with the native oneDNN extension, the opt-in (`--conv-impl onednn`,
                flax_impl/onednn_conv.py; an error row where its extension is not built).

The NNX models (flax_impl/models_nnx.py) with GEMM convolutions, so that each compares with a Linen
variant above in its API alone, four ways of driving the same step:
  nnx-jit-loop    `nnx.jit` per step, as NNX's own examples train: the model and an `nnx.Optimizer`
                  are Python objects that nnx.jit splits before and merges after every call. The body
                  is the product's gathered batch and loss_and_gradients; the update, nnx.Optimizer's
                  (the same optax update; tests/test_benchmark_variants.py holds it to the others).
  nnx-cached-loop the same nnx.jit step through `nnx.cached_partial` over the model and optimizer, which
                  caches their graph traversal (the Flax performance guide's other remedy).
  nnx-split-loop  FlaxTrainer(api="nnx"): the graph split once, `jax.jit` per step over the split state
                  (the guide's "functional training loop", docs_nnx/guides/performance.md).
  nnx-chunked     FlaxTrainer(api="nnx")'s loop (`python -m flax_impl.train --api nnx --conv-impl gemm`).

`tiny_step_seconds`: one step of the variant's per-step function on a 1-example batch, what a step
costs beyond its arithmetic (dispatch, and for nnx.jit its object-graph traversal).

tests/test_benchmark_variants.py checks that they compute the same function.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
from flax import nnx

from flax_impl import data, models_nnx
from cnn_parity.trainer import StepMetrics
from flax_impl.train import FlaxTrainer, loss_and_gradients, resolve_conv_impl, train_on_slice

VARIANTS = {  # variant -> (api, conv_impl, loop)
    "jit-loop": ("linen", "xla", "python"),
    "jit-scan": ("linen", "xla", "scan"),
    "gemm-loop": ("linen", "gemm", "python"),
    "gemm-scan": ("linen", "gemm", "scan"),
    "gemm-chunked": ("linen", "gemm", "chunked"),
    "canonical-chunked": ("linen", "canonical", "chunked"),
    "jaxlib-onednn-chunked": ("linen", "jaxlib-onednn", "chunked"),
    "onednn-chunked": ("linen", "onednn", "chunked"),
    "nnx-jit-loop": ("nnx", "gemm", "nnx-jit"),
    "nnx-cached-loop": ("nnx", "gemm", "nnx-cached"),
    "nnx-split-loop": ("nnx", "gemm", "python"),
    "nnx-chunked": ("nnx", "gemm", "chunked"),
}
NNX_OBJECT_LOOPS = ("nnx-jit", "nnx-cached")  # loops that step NNX objects, not FlaxTrainer's state
TINY_STEPS = 100  # timed 1-example steps (after one to compile)


class VariantTrainer(FlaxTrainer):
    def __init__(self, recipe, data_dir=None, conv_impl="gemm", loop="chunked", api="linen"):
        # Before FlaxTrainer's init, which may load_canonical (init_rng=shared), rebuilding the NNX objects.
        self.loop = loop
        self._nnx_step = _nnx_jit_step(recipe) if loop in NNX_OBJECT_LOOPS else None
        super().__init__(recipe, "device", data_dir, conv_impl=conv_impl, api=api)
        b = recipe.batch_size
        if loop in NNX_OBJECT_LOOPS:
            self._build_nnx_objects()

        def train_scan(state, split, perm, rng, start, num_steps):
            def step(state, i):
                # The trainer's gathered step, traced into the scan (donation applies to the scan's state)
                state, metrics = train_on_slice(state, split, perm, i * b, rng, **self.step_options)
                return state, (metrics["loss"], metrics["correct"])
            return jax.lax.scan(step, state, start + jnp.arange(num_steps))

        self._train_scan = jax.jit(train_scan, donate_argnums=0, static_argnames="num_steps",
                                   compiler_options=self.kernels.jit_options())

    def _build_nnx_objects(self):
        """The NNX model and a fresh nnx.Optimizer holding this trainer's current parameters."""
        graphdef = models_nnx.functional_model(self.recipe.model, self.recipe.init, self.kernels).graphdef
        self.model = nnx.merge(graphdef, self.state.params)
        self.optimizer = nnx.Optimizer(self.model, self.state.tx, wrt=nnx.Param)
        if self.loop == "nnx-cached":
            self._cached_step = nnx.cached_partial(self._nnx_step, self.model, self.optimizer)

    def load_canonical(self, arrays):
        super().load_canonical(arrays)
        if self.loop in NNX_OBJECT_LOOPS:
            self._build_nnx_objects()

    def step_once(self, perm, start, batch_size):
        """One step of this variant's per-step function (python and NNX-object loops)."""
        if self.loop == "nnx-cached":
            return self._cached_step(self.train_data, perm, start, self.dropout_key, batch_size=batch_size)
        if self.loop == "nnx-jit":
            return self._nnx_step(self.model, self.optimizer, self.train_data, perm, start, self.dropout_key,
                                  batch_size=batch_size)
        self.state, metrics = self.steps.train_on_slice(self.state, self.train_data, perm, start, self.dropout_key,
                                                        **{**self.step_options, "batch_size": batch_size})
        return metrics

    def sync(self):
        """Wait for the dispatched steps; for NNX-object loops, bring the objects' parameters into
        `state` (what evaluate() and canonical_weights() read)."""
        if self.loop in NNX_OBJECT_LOOPS:
            self.state = self.state.replace(step=self.optimizer.step[...], params=models_nnx.split_params(self.model)[1])
        jax.block_until_ready(self.state)

    def tiny_step_seconds(self) -> float | None:
        """Seconds per step of the per-step function on 1-example batches (None for scan / chunked
        loops, whose steps are not dispatched one by one)."""
        if self.loop not in ("python", *NNX_OBJECT_LOOPS):
            return None
        perm = self.epoch_order(1)
        jax.block_until_ready(self.step_once(perm, 0, 1))  # compiles the 1-example step
        tick = time.perf_counter()
        for i in range(TINY_STEPS):
            metrics = self.step_once(perm, i + 1, 1)
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - tick) / TINY_STEPS
        self.sync()
        return seconds

    def train_steps(self, epoch, start, count):
        if self.loop == "chunked":
            return super().train_steps(epoch, start, count)
        n, b = len(self.train_data.labels), self.recipe.batch_size
        perm = self.epoch_order(epoch)
        full = max(0, min(start + count, n // b) - start) if self.loop == "scan" else 0
        losses, correct, examples = [], [], 0
        if full:
            self.state, (scan_losses, scan_correct) = self._train_scan(self.state, self.train_data, perm,
                                                                       self.dropout_key, start, num_steps=full)
            losses.append(scan_losses)
            correct.append(scan_correct)
            examples += full * b
        for i in range(start + full, start + count):  # python / NNX-object loop; for scan, the last partial batch
            size = min(b, n - i * b)
            metrics = self.step_once(perm, i * b, size)
            losses.append(metrics["loss"])
            correct.append(metrics["correct"])
            examples += size
        return StepMetrics(losses, correct, examples)


def _nnx_jit_step(recipe):
    """The NNX-object step, under nnx.jit: (model, optimizer, split, perm, start, rng, batch_size) -> metrics."""
    normalize = functools.partial(data.normalize, mean=recipe.normalize_mean, std=recipe.normalize_std)

    @functools.partial(nnx.jit, donate_argnums=(0, 1), static_argnames="batch_size")
    def nnx_step(model, optimizer, split, perm, start, rng, batch_size):
        index = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
        batch = {"image": normalize(split.images[index]), "label": split.labels[index]}
        functional, params = models_nnx.split_params(model)
        (loss, outputs), grads = loss_and_gradients(functional.apply, params, batch,
                                                    jax.random.fold_in(rng, optimizer.step[...]))
        # nnx.Optimizer takes gradients as the model's Param state: the gradients merged into the graph.
        optimizer.update(model, nnx.state(nnx.merge(functional.graphdef, grads), nnx.Param))
        return {"loss": loss, "correct": jnp.sum(jnp.argmax(outputs, -1) == batch["label"])}

    return nnx_step


def is_trainer_default(variant: str) -> bool:
    """Whether `variant` is what `python -m flax_impl.train` runs here: the chunked Linen trainer with
    the convolutions conv_impl "auto" chooses for a model with convolutions."""
    api, conv_impl, loop = VARIANTS[variant]
    return (api, loop) == ("linen", "chunked") and conv_impl == resolve_conv_impl("auto", "lenet")


def make_trainer(variant: str, recipe, data_dir=None) -> VariantTrainer:
    api, conv_impl, loop = VARIANTS[variant]
    return VariantTrainer(recipe, data_dir, conv_impl, loop, api)

