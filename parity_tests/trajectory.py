"""Training both sides the same way: identical start weights, batches, order and dropout masks (test 5;
its first step is test 4's full training step).

Flax runs `flax_impl.train.train_step` (jitted), torch `torch_ref.train.train_step`, each with its
product's `make_optimizer` for the recipe's optimiser.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn_parity.differences import Canonical, tree_max_abs_diff
from parity_tests.batches import batch_from_uint8
from parity_tests.dropout_masks import flax_dropout_mask, has_dropout, inject_torch_dropout_mask
from parity_tests.pairs import ModelPair
from parity_tests.product_steps import flax_train_state, flax_train_step
from torch_ref import train as torch_train

TRAJECTORY_STEPS = 100
# The trajectory runs the recipe's optimiser (kind, lr, momentum, betas, eps) on batches of 16, not
# the recipes' 64-128: the suite must run in minutes on a 2-core CPU, where cnn_base at batch 100
# costs ~0.6 s a step for the two frameworks together. Parity does not depend on the batch size.
TRAJECTORY_BATCH = 16
# The float64 run of the same trajectory: float64 convolutions are 4-5x slower on CPU in both
# frameworks (cnn_base: 465 vs 97 ms a step in XLA, 216 vs 52 ms in torch, at batch 32), so batches of 4.
FLOAT64_BATCH = 4

UInt8Batches = Sequence[tuple[np.ndarray, np.ndarray]]  # (images uint8 (n, 28, 28), labels) per step


@dataclass
class Trajectory:
    """Two runs side by side: the "flax" and "torch" slots (the torch-vs-torch control fills both
    with torch runs)."""

    flax_losses: list[float] = field(default_factory=list)
    torch_losses: list[float] = field(default_factory=list)
    param_diffs: list[float] = field(default_factory=list)  # max |Δ| over all parameters after each step
    first_step_change: float = 0.0  # max |θ1 - θ0| on the torch side: how far one update moved
    total_change: float = 0.0  # max |θT - θ0| on the torch side: how far training moved
    first_step: tuple[Canonical, Canonical] | None = None  # (Flax, torch) weights after step 1

    @property
    def steps(self) -> int:
        return len(self.flax_losses)

    @property
    def loss_diffs(self) -> list[float]:
        return [abs(a - b) for a, b in zip(self.flax_losses, self.torch_losses)]

    @property
    def max_loss_diff(self) -> float:
        return max(self.loss_diffs)

    @property
    def final_param_diff(self) -> float:
        return self.param_diffs[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "max_loss_diff": self.max_loss_diff, "final_param_diff": self.final_param_diff,
                "loss_diffs": self.loss_diffs, "param_diffs": self.param_diffs,
                "flax_losses": self.flax_losses, "torch_losses": self.torch_losses}


def run_training(pair: ModelPair, batches: UInt8Batches, dtype: str = "float32",
                 torch_dropout_scale: float | None = None, torch_batch_offset: int = 0) -> Trajectory:
    """Train both sides from `pair`'s weights (left untouched) on `batches`, in order, with the
    recipe's optimiser. With dropout, step i's mask is the one Flax's train_step draws from
    fold_in(key(0), i), as FlaxTrainer folds the step into its key, injected into torch.

    dtype="float64" runs both sides in float64 (jax x64, torch .double()): the same code and the
    same algorithm with 29 more mantissa bits, which separates float32 rounding from real differences.
    `torch_dropout_scale` and `torch_batch_offset` plant bugs in the plumbing between the two
    (unscaled dropout, torch's batches shifted by one).
    """
    if dtype == "float64":
        with jax.enable_x64(True):
            return _run_training(pair, batches, dtype, torch_dropout_scale, torch_batch_offset)
    return _run_training(pair, batches, dtype, torch_dropout_scale, torch_batch_offset)


def _run_training(pair, batches, dtype, torch_dropout_scale, torch_batch_offset) -> Trajectory:
    recipe = pair.recipe
    params = pair.flax_params
    if dtype == "float64":
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    state = flax_train_state(pair.flax_model.apply, params, recipe.optimizer)
    module = copy.deepcopy(pair.torch_model)
    if dtype == "float64":
        module.double()
    module.train()
    opt = torch_train.make_optimizer(module.parameters(), recipe.optimizer)
    dropout_key = jax.random.key(0)
    uses_dropout = has_dropout(pair)
    traj = Trajectory()
    for i in range(len(batches)):
        batch = batch_from_uint8(recipe, *batches[i]).astype(dtype)
        rng = jax.random.fold_in(dropout_key, i)
        mask = flax_dropout_mask(pair.flax_model, state.params, batch.flax_x, rng) if uses_dropout else None
        state, metrics = flax_train_step(state, batch.flax_batch, rng)

        t_batch = batch_from_uint8(recipe, *batches[(i + torch_batch_offset) % len(batches)]).astype(dtype)
        with inject_torch_dropout_mask(module, mask, torch_dropout_scale):
            loss, _ = torch_train.train_step(module, opt, t_batch.torch_x, t_batch.torch_y)

        traj.flax_losses.append(float(metrics["loss"]))
        traj.torch_losses.append(loss.item())
        torch_now = pair.mapping.torch_to_canonical(module)
        flax_now = pair.mapping.flax_to_canonical(state.params)
        traj.param_diffs.append(tree_max_abs_diff(flax_now, torch_now))
        if i == 0:
            traj.first_step = (flax_now, torch_now)
        if i in (0, len(batches) - 1):
            change = tree_max_abs_diff(torch_now, {k: v.astype(torch_now[k].dtype) for k, v in pair.canonical.items()})
            traj.first_step_change = change if i == 0 else traj.first_step_change
            traj.total_change = change
    return traj
