"""Numerical check of the Flax variants against FlaxTrainer's plain model and loop.

For every model: logits and gradients with XLA vs GEMM convolutions (flax_impl/kernels.py conv_impl) on
a real batch, and the parameters after 3 training steps (so optimiser updates too); then the parameters
after a few steps of every benchmark variant vs `jit-loop`, on the same data, permutation and dropout
keys. Prints max |Δ| per check; exits 1 if any exceeds 1e-5.
Run: `python -m benchmarks.check_variants [--models ...]`.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.candidates import train_to_step
from benchmarks.flax_variants import VARIANTS, make_trainer
from cnn_parity.data import load_split
from cnn_parity.recipes import MODELS, load_recipe
from flax_impl.data import normalize
from flax_impl.train import create_train_state, loss_and_gradients, train_step

TOL = 1e-5


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def check_model(model, data_dir, steps=3):
    recipe = load_recipe(model)
    split = load_split(recipe.dataset, "train", data_dir)
    b = recipe.batch_size
    x = normalize(jnp.asarray(split.images[:b]), recipe.normalize_mean, recipe.normalize_std)
    y = jnp.asarray(split.labels[:b].astype(np.int32))
    results = {}
    states = {conv: create_train_state(recipe, jax.random.key(0), conv_impl=conv) for conv in ("xla", "gemm")}
    logits = {c: jax.jit(lambda p, st=st: st.apply_fn({"params": p}, x))(st.params) for c, st in states.items()}
    batch = {"image": x, "label": y}
    grads = {c: loss_and_gradients(st.apply_fn, st.params, batch, None, train=False)[1] for c, st in states.items()}
    step = jax.jit(train_step)
    for conv, st in states.items():
        for i in range(steps):
            st, _ = step(st, batch, jax.random.key(i))
        states[conv] = st
    results["gemm logits"] = _max_diff(logits["xla"], logits["gemm"])
    results["gemm grads"] = _max_diff(grads["xla"], grads["gemm"])
    results[f"gemm params after {steps} steps"] = _max_diff(states["xla"].params, states["gemm"].params)
    # Whole trainers: K steps of epoch 1 through the training loop, each variant vs jit-loop, all from
    # jit-loop's initial weights (the NNX variants' own init draws other weights).
    k = 5
    trainers = {p: make_trainer(p, recipe, data_dir) for p in VARIANTS}
    initial = trainers["jit-loop"].canonical_weights()
    for t in trainers.values():
        t.load_canonical(initial)
        train_to_step(t, 1, k)
        t.sync()
    for p, t in trainers.items():
        if p != "jit-loop":
            results[f"{p} params after {k} trainer steps"] = _max_diff(trainers["jit-loop"].state.params, t.state.params)
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--data-dir")
    args = p.parse_args()
    worst = 0.0
    for m in args.models:
        for name, d in check_model(m, args.data_dir).items():
            worst = max(worst, d)
            print(f"{m:12s} {name:40s} max|Δ| {d:.2e} {'OK' if d <= TOL else 'FAIL'}", flush=True)
    print(f"worst {worst:.2e} (tolerance {TOL:.0e})")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
