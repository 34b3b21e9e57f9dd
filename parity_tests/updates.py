"""One optimiser update (test 4), two ways: the optimisers alone, fed the same gradients; and how much
of the first full training step's difference the gradients' own rounding does not explain."""

from __future__ import annotations

import copy

import jax
import numpy as np
import optax

from cnn_parity.differences import tree_max_abs_diff
from flax_impl import train as flax_train
from parity_tests.batches import Batch, batch_from_uint8
from parity_tests.gradients import measure_grads
from parity_tests.pairs import ModelPair
from parity_tests.trajectory import Trajectory, UInt8Batches
from torch_ref import train as torch_train

OPTIMIZER_STEPS = 10  # the optimiser-alone check: steps 2+ exercise momentum / Adam moments


def same_gradient_updates(pair: ModelPair, batches: UInt8Batches) -> list[float]:
    """The optimisers alone: both sides step from the same weights with the *same* gradients.

    Each step's gradient is torch's (`torch_ref.train.loss_and_gradients`, eval mode) at torch's
    current weights; Flax gets it through the pair's mapping (a permutation, exact) and applies
    `flax_impl.train.make_optimizer(cfg)`'s update with optax.apply_updates, torch runs
    `torch_ref.train.make_optimizer(params, cfg).step()`. Returns max |Δθ| after each step: what
    remains is the optimisers' arithmetic, with no gradient rounding for Adam to amplify. Several
    steps, so momentum buffers and Adam's moments and bias corrections act.
    """
    cfg = pair.recipe.optimizer
    tx = flax_train.make_optimizer(cfg)
    params = pair.flax_params
    opt_state = tx.init(params)
    module = copy.deepcopy(pair.torch_model)
    module.eval()
    opt = torch_train.make_optimizer(module.parameters(), cfg)
    diffs = []
    for images, labels in batches:
        batch = batch_from_uint8(pair.recipe, images, labels)
        torch_train.loss_and_gradients(module, batch.torch_x, batch.torch_y)
        grads = pair.mapping.canonical_to_flax({n: p.grad.numpy() for n, p in module.named_parameters()})
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        opt.step()
        diffs.append(tree_max_abs_diff(pair.mapping.flax_to_canonical(params), pair.mapping.torch_to_canonical(module)))
    return diffs


def first_update_excess(pair: ModelPair, traj: Trajectory, batch: Batch) -> float:
    """How much of the first full training step's weight difference the gradients' own rounding
    does *not* explain: max_i |Δθ_i| - |u(g_flax,i) - u(g_torch,i)|, where u is the recipe
    optimiser's first update as a function of the gradient (SGD with or without momentum: lr·g;
    Adam: lr·g/(|g| + eps), its bias corrections being exact at step 1) and g_flax, g_torch are each
    framework's gradient on that batch (`traj`'s first batch). Adam's u is steep near g = 0 (slope
    lr/eps = 2e4 for cnn_base), so there a 1e-9 gradient rounding difference moves a weight by 1e-6
    or more."""
    o = pair.recipe.optimizer
    # train mode with step 0's dropout rng, as run_training's first step
    grads = measure_grads(pair, batch, train=True, dropout_rng=jax.random.fold_in(jax.random.key(0), 0))

    def u(g):
        g = np.asarray(g, np.float64)
        return o.lr * g / (np.abs(g) + o.eps) if o.name == "adam" else o.lr * g

    flax_w, torch_w = traj.first_step
    return max(float(np.max(np.abs(flax_w[k].astype(np.float64) - torch_w[k])
                            - np.abs(u(grads.flax_grads[k]) - u(grads.torch_grads[k])))) for k in torch_w)
