"""Framework-neutral checks shared by the mirrored Flax and PyTorch test modules."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np

from cnn_parity.recipes import MODELS, load_recipe
from cnn_parity.shared_rng import TRUNCATED_NORMAL_STD
from cnn_parity.specs import spec
from cnn_parity.stop_signals import StopRequest
from cnn_parity.training import RunOptions, fit
from cnn_parity.weights import EXPLICIT_WEIGHT_INITS, LAYERS
from cnn_parity.workdir import Workdir

# Short real-data budgets (steps at the recipe's own batch size and optimiser) and the test accuracy
# each must beat, with the measurements behind them: each recipe file's [checks] learning.
LEARNING_STEPS = {model: spec(model).learning_steps for model in MODELS}
MIN_TEST_ACCURACY = {model: spec(model).min_test_accuracy for model in MODELS}


def source_num_params(model: str) -> int:
    """The parameter count the model's source states, as its recipe records it ([reported])."""
    return load_recipe(model).reported["num_params"]


def short_run(trainer_class, model: str, seed: int, workdir, data_dir) -> dict:
    recipe = load_recipe(model, overrides={"seed": seed})
    run = Workdir(workdir)
    run.create()
    with contextlib.redirect_stdout(io.StringIO()):
        return fit(recipe, trainer_class(recipe, data_dir=data_dir), run, RunOptions(max_steps=LEARNING_STEPS[model], tensorboard=False),
                   StopRequest())


def check_init_statistics(model: str, scheme: str, weights: dict[str, np.ndarray]) -> None:
    """`weights`: canonical name → array. Checks bounds and spread of the named init scheme."""
    for name, fan_in, fan_out, kernel in LAYERS[model]:
        fan_in = fan_in * (kernel or 1) ** 2
        weight, bias = weights[f"{name}.weight"], weights[f"{name}.bias"]
        if EXPLICIT_WEIGHT_INITS.get(model, {}).get(name) == "xavier_uniform":  # the source's, under both schemes
            bound = math.sqrt(6 / (fan_in + fan_out))
            _check_uniform(weight, bound, f"{name}.weight")
        elif scheme == "torch":
            _check_uniform(weight, 1 / math.sqrt(fan_in), f"{name}.weight")
        else:  # Flax's LeCun normal: std 1/√fan_in, truncated at two (pre-scaling) standard deviations
            std = 1 / math.sqrt(fan_in)
            assert np.abs(weight).max() <= 2 * std / TRUNCATED_NORMAL_STD + 1e-7, name
            if weight.size >= 1000:
                assert abs(weight.std() / std - 1) < 0.1, (name, weight.std(), std)
        if scheme == "torch":
            _check_uniform(bias, 1 / math.sqrt(fan_in), f"{name}.bias")
        else:
            assert not bias.any(), f"{name}.bias should be zeros"


def _check_uniform(x: np.ndarray, bound: float, name: str) -> None:
    assert np.abs(x).max() <= bound * (1 + 1e-6), (name, np.abs(x).max(), bound)
    if x.size >= 1000:  # U(-b, b) has std b/√3; 10 % is > 10 standard errors at these sizes
        assert abs(x.std() / (bound / math.sqrt(3)) - 1) < 0.1, (name, x.std(), bound)
