"""Every optimiser and learning-rate schedule a recipe can name, held equal across torch.optim (with its
lr_scheduler) and optax, as the products build them (torch_ref.train.make_optimizer / make_scheduler,
flax_impl.train.make_optimizer / make_schedule):

- the learning rate of every step equals the recipe's, `cnn_parity.recipes.learning_rate`, in both;
- the optimisers alone, fed identical gradients from identical weights, both in float64, take the
  same steps: what is left is float64 rounding (the recipes' own optimisers: test_training.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from cnn_parity.recipes import learning_rate, load_recipe
from flax_impl import train as flax_train
from torch_ref import train as torch_train

STEPS_PER_EPOCH, EPOCHS = 7, 3  # 21 steps: every schedule turns (warm-up, a step decay, the cosine's end)
OPTIMIZERS = {
    "sgd-nesterov-decay": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    "adam-decay": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-2},
    "adamw": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-2},
    "rmsprop": {"name": "rmsprop", "lr": 1e-3},
    "rmsprop-centered-momentum-decay": {"name": "rmsprop", "lr": 1e-3, "momentum": 0.5, "centered": True,
                                        "weight_decay": 1e-3},
}
SCHEDULES = {
    "constant": {},
    "warmup": {"warmup_steps": 5},
    "step": {"name": "step", "step_epochs": 1, "gamma": 0.5},
    "warmup-step": {"name": "step", "warmup_steps": 4, "step_epochs": 2, "gamma": 0.5},
    "cosine": {"name": "cosine", "final_lr": 1e-4},
    "warmup-cosine": {"name": "cosine", "warmup_steps": 5, "warmup_start_factor": 0.1},
}
# Measured (these configurations): learning rates agree with `learning_rate` to 2e-16 relative in both,
# torch's chainable scheduler forms included; parameters after 21 float64 steps to 4e-16. A bound of a
# few hundred float64 ulps leaves room for other inputs and catches any difference of formula.
LR_RELATIVE = 1e-13
UPDATE_ABS = 1e-13


def _recipe(optimizer: dict, schedule: dict):
    return load_recipe("mlp", overrides={"optimizer": optimizer, "schedule": schedule, "epochs": EPOCHS})


def _torch_learning_rates(recipe) -> list[float]:
    weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = torch_train.make_optimizer([weight], recipe.optimizer)
    scheduler = torch_train.make_scheduler(optimizer, recipe, STEPS_PER_EPOCH)
    rates = []
    for _ in range(EPOCHS * STEPS_PER_EPOCH):
        rates.append(optimizer.param_groups[0]["lr"])
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return rates


def _optax_learning_rates(recipe) -> list[float]:
    schedule = flax_train.make_schedule(recipe, STEPS_PER_EPOCH)
    with jax.enable_x64(True):
        return [float(schedule(step)) if callable(schedule) else schedule for step in range(EPOCHS * STEPS_PER_EPOCH)]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_both_schedulers_give_the_recipes_learning_rate_at_every_step(schedule):
    recipe = _recipe(OPTIMIZERS["sgd-nesterov-decay"], SCHEDULES[schedule])
    expected = np.array([learning_rate(recipe, k, STEPS_PER_EPOCH) for k in range(EPOCHS * STEPS_PER_EPOCH)])
    for framework, rates in (("torch", _torch_learning_rates(recipe)), ("optax", _optax_learning_rates(recipe))):
        relative = np.abs(np.array(rates) - expected) / expected
        assert relative.max() <= LR_RELATIVE, (framework, rates, expected.tolist())
    if schedule != "constant":
        assert len(set(np.round(expected, 12))) > 1, "the schedule changes the rate"


def _updates(recipe, gradients: list[dict[str, np.ndarray]], start: dict[str, np.ndarray]):
    """Parameters after each step of each side's optimiser (and scheduler), both in float64, fed the
    same `gradients` from the same `start`."""
    params = {name: torch.nn.Parameter(torch.tensor(value)) for name, value in start.items()}
    optimizer = torch_train.make_optimizer(list(params.values()), recipe.optimizer)
    scheduler = torch_train.make_scheduler(optimizer, recipe, STEPS_PER_EPOCH)
    with jax.enable_x64(True):
        tx = flax_train.make_optimizer(recipe.optimizer, flax_train.make_schedule(recipe, STEPS_PER_EPOCH))
        flax_params = {name: jnp.asarray(value) for name, value in start.items()}
        state = tx.init(flax_params)
        for grads in gradients:
            for name, p in params.items():
                p.grad = torch.tensor(grads[name])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            updates, state = tx.update({k: jnp.asarray(v) for k, v in grads.items()}, state, flax_params)
            flax_params = optax.apply_updates(flax_params, updates)
            yield ({k: np.asarray(v) for k, v in flax_params.items()},
                   {k: p.detach().numpy().copy() for k, p in params.items()})


@pytest.mark.parametrize("schedule", ["constant", "warmup-cosine", "warmup-step"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_optimisers_take_the_same_float64_steps(optimizer, schedule):
    recipe = _recipe(OPTIMIZERS[optimizer], SCHEDULES[schedule])
    rng = np.random.default_rng(0)
    start = {"w": rng.standard_normal((6, 4)), "b": rng.standard_normal(4)}
    gradients = [{k: rng.standard_normal(v.shape) for k, v in start.items()} for _ in range(EPOCHS * STEPS_PER_EPOCH)]
    moved = 0.0
    for step, (flax_params, torch_params) in enumerate(_updates(recipe, gradients, start), start=1):
        worst = max(float(np.max(np.abs(flax_params[k] - torch_params[k]))) for k in start)
        assert worst <= UPDATE_ABS, f"step {step}: max |Δθ| {worst:.2e}"
        moved = max(moved, max(float(np.max(np.abs(torch_params[k] - start[k]))) for k in start))
    assert moved > 1e4 * UPDATE_ABS, "the optimiser moved the weights"


def test_adamw_needs_its_weight_decay_and_the_libraries_defaults_differ():
    """torch.optim.AdamW decays by 0.01 unless told, optax.adamw by 1e-4: a recipe states its own."""
    import inspect

    assert inspect.signature(torch.optim.AdamW).parameters["weight_decay"].default == 0.01
    assert inspect.signature(optax.adamw).parameters["weight_decay"].default == 1e-4
    from cnn_parity.errors import UsageError

    with pytest.raises(UsageError, match="adamw needs its weight_decay set"):
        load_recipe("mlp", overrides={"optimizer": {"name": "adamw", "lr": 1e-3}})
