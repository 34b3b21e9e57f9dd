"""The benchmark's Flax variants (benchmarks/flax_variants.py) compute the same function, so that their
timings compare ways of computing one thing: from jit-loop's initial weights, a few steps of epoch 1
through each variant's own loop (same permutation, same dropout keys) leave the parameters within
float rounding of jit-loop's; and XLA's against im2col's convolutions on a real batch (logits,
gradients, parameters after 3 steps)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.candidates import train_to_step
from benchmarks.flax_variants import VARIANTS, make_trainer
from cnn_parity.data import load_split
from cnn_parity.recipes import load_recipe
from flax_impl.data import normalize
from flax_impl.train import create_train_state, loss_and_gradients, train_step
from parity_tests.onednn import skip_unless_built

# max |Δ| of any parameter. Measured after 5 trainer steps: 8.4e-7 (cnn_base gemm, accumulation-order
# rounding; benchmarks/FINDINGS.md, section 8). A variant that skipped, repeated or reordered a step, or
# drew another dropout mask, would differ by the learning rate's order (1e-3) or more.
TOL = 1e-5
TRAINER_STEPS = 5


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("model", ["lenet", "fashion_cnn"])
def test_xla_and_im2col_convolutions_agree_on_a_real_batch(model, data_dir):
    recipe = load_recipe(model)
    split = load_split(recipe.dataset, "train", data_dir)
    b = recipe.batch_size
    batch = {"image": normalize(jnp.asarray(split.images[:b]), recipe.normalize_mean, recipe.normalize_std),
             "label": jnp.asarray(split.labels[:b].astype(np.int32))}
    states = {conv: create_train_state(recipe, jax.random.key(0), conv_impl=conv) for conv in ("xla", "gemm")}
    logits = {c: st.apply_fn({"params": st.params}, batch["image"]) for c, st in states.items()}
    grads = {c: loss_and_gradients(st.apply_fn, st.params, batch, None, train=False)[1] for c, st in states.items()}
    step = jax.jit(train_step)
    for conv, state in states.items():
        for i in range(3):
            state, _ = step(state, batch, jax.random.key(i))
        states[conv] = state
    assert _max_diff(logits["xla"], logits["gemm"]) <= TOL
    assert _max_diff(grads["xla"], grads["gemm"]) <= TOL
    assert _max_diff(states["xla"].params, states["gemm"].params) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lenet", "fashion_cnn"])
def test_every_variant_trains_as_jit_loop(model, data_dir):
    """lenet: SGD; fashion_cnn: Adam and dropout (the variants must draw jit-loop's masks)."""
    skip_unless_built()  # onednn-chunked is one of the variants
    recipe = load_recipe(model)
    trainers = {variant: make_trainer(variant, recipe, data_dir) for variant in VARIANTS}
    initial = trainers["jit-loop"].canonical_weights()
    for trainer in trainers.values():
        trainer.load_canonical(initial)
        train_to_step(trainer, 1, TRAINER_STEPS)
        trainer.sync()
    reference = trainers["jit-loop"].state.params
    diffs = {variant: _max_diff(reference, t.state.params) for variant, t in trainers.items() if variant != "jit-loop"}
    assert max(diffs.values()) <= TOL, diffs
