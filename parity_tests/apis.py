"""Linen against NNX: one model's two Flax versions given the same canonical weights (torch's init,
seed 0, through the product converter), the same batches and the same dropout keys, compared bit
for bit: eval-mode outputs, train-mode outputs with each API's own dropout, loss and gradients, and
a trajectory of the product's train_step (jitted). Numbers only (bitwise equal is max |Δ| 0); the
verdicts are test_nnx_vs_linen.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax

from cnn_parity.differences import max_abs_diff, tree_max_abs_diff
from cnn_parity.recipes import load_recipe
from parity_tests.batches import Batch, batch_from_uint8, make_batch, train_batches
from parity_tests.dropout_masks import flax_dropout_mask, flax_train_forward, has_dropout
from parity_tests.gradients import GRAD_BATCH
from parity_tests.outputs import flax_forward
from parity_tests.pairs import ModelPair, pair_from_torch
from parity_tests.product_steps import flax_loss_and_gradients, flax_train_state, flax_train_step
from parity_tests.trajectory import TRAJECTORY_BATCH, TRAJECTORY_STEPS, UInt8Batches


@dataclass
class ApiComparison:
    """max |Δ| between the Linen and the NNX side of each measurement."""

    forward: float = 0.0  # eval-mode outputs
    train_forward: float = 0.0  # train-mode outputs, each API drawing its own dropout mask from one key
    dropout_mask: float = 0.0  # the masks themselves (0 / 1), fashion_cnn
    loss: float = 0.0
    gradients: float = 0.0  # eval and train mode
    trajectory_losses: list[float] = field(default_factory=list)  # per step
    trajectory_params: list[float] = field(default_factory=list)  # per step, over all parameters

    @property
    def worst(self) -> float:
        return max([self.forward, self.train_forward, self.dropout_mask, self.loss, self.gradients,
                    *self.trajectory_losses, *self.trajectory_params])


def compare_apis(linen: ModelPair, nnx: ModelPair, batch: Batch, batches: UInt8Batches) -> ApiComparison:
    """The two pairs must hold the same canonical weights. `batch`: the single-batch measurements';
    `batches`: the trajectory's, one step each, step i's dropout key fold_in(key(0), i) (as FlaxTrainer
    folds the step into its key)."""
    if tree_max_abs_diff(linen.canonical, nnx.canonical) != 0:
        raise ValueError("the Linen and NNX pairs must start from the same weights")
    result = ApiComparison(forward=max_abs_diff(flax_forward(linen, batch), flax_forward(nnx, batch)))
    rng = jax.random.key(0)
    result.train_forward = max_abs_diff(flax_train_forward(linen, batch, rng), flax_train_forward(nnx, batch, rng))
    if has_dropout(linen):
        result.dropout_mask = max_abs_diff(flax_dropout_mask(linen.flax_model, linen.flax_params, batch.flax_x, rng),
                                           flax_dropout_mask(nnx.flax_model, nnx.flax_params, batch.flax_x, rng))
    for train in (False, True):
        (loss_l, _), grads_l = flax_loss_and_gradients(linen.flax_model.apply, linen.flax_params, batch.flax_batch,
                                                       rng, train=train)
        (loss_n, _), grads_n = flax_loss_and_gradients(nnx.flax_model.apply, nnx.flax_params, batch.flax_batch,
                                                       rng, train=train)
        result.loss = max(result.loss, abs(float(loss_l) - float(loss_n)))
        result.gradients = max(result.gradients, tree_max_abs_diff(linen.mapping.flax_to_canonical(grads_l),
                                                                   nnx.mapping.flax_to_canonical(grads_n)))
    states = [flax_train_state(p.flax_model.apply, p.flax_params, p.recipe.optimizer) for p in (linen, nnx)]
    for i, (images, labels) in enumerate(batches):
        step_batch = batch_from_uint8(linen.recipe, images, labels).flax_batch
        step_rng = jax.random.fold_in(rng, i)
        (state_l, metrics_l), (state_n, metrics_n) = (flax_train_step(s, step_batch, step_rng) for s in states)
        states = [state_l, state_n]
        result.trajectory_losses.append(abs(float(metrics_l["loss"]) - float(metrics_n["loss"])))
        result.trajectory_params.append(tree_max_abs_diff(linen.mapping.flax_to_canonical(state_l.params),
                                                          nnx.mapping.flax_to_canonical(state_n.params)))
    return result


def measure_apis(name: str) -> ApiComparison:
    """compare_apis for model `name`: torch's seed-0 weights into both APIs, the gradient tests' real
    batch (GRAD_BATCH examples), and the float32 trajectory's batches and length."""
    recipe = load_recipe(name)
    linen, nnx = (pair_from_torch(name, api=api) for api in ("linen", "nnx"))
    batch = make_batch(recipe, "real", GRAD_BATCH, seed=7, start=1000)
    return compare_apis(linen, nnx, batch, train_batches(recipe, TRAJECTORY_STEPS, TRAJECTORY_BATCH))
