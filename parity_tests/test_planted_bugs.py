"""9. The suite catches planted bugs: the same measurements as tests 2-5, each with one known-wrong
piece swapped in (a converter, the normalisation, an optimiser setting, the dropout scaling, the
batch order), must fail their bound, by at least bounds.PLANTED_MARGIN so that "caught" is never a near-tie.

Each bug is a mistake that has really been made porting PyTorch models to Flax (flatten order,
kernel layouts, SGD dampening, Adam's eps placement, unscaled dropout).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import optax
import pytest
import torch

from cnn_parity.weights import FLATTENED_INPUT, LAYERS
from flax_impl import convert as flax_convert
from parity_tests import bounds, harness

CONV_MODELS = [m for m in harness.MODEL_NAMES if m != "mlp"]


def _replace(params, name, kernel):
    return {**params, name: {**params[name], "kernel": kernel}}


# --- wrong converters, torch → Flax (canonical arrays → Flax params) ---------------------------

def flatten_order_ignored(model, arrays):
    """The Dense after the flatten gets weight.T, ignoring that Flax flattens (H, W, C), torch (C, H, W)."""
    params = flax_convert.params_from_canonical(model, arrays)
    layer, _ = FLATTENED_INPUT[model]
    return _replace(params, layer, np.asarray(arrays[f"{layer}.weight"]).T)


def conv_kernel_spatially_transposed(model, arrays):
    """OIHW → WHIO instead of HWIO: shapes still fit (square kernels), H and W swapped."""
    params = flax_convert.params_from_canonical(model, arrays)
    for name, _, _, k in LAYERS[model]:
        if k:
            params = _replace(params, name, np.asarray(arrays[f"{name}.weight"]).transpose(3, 2, 1, 0))
    return params


def dense_kernel_reshaped_not_transposed(model, arrays):
    """(out, in) → (in, out) by reshape instead of transpose: right shape, scrambled weights."""
    params = flax_convert.params_from_canonical(model, arrays)
    name, fan_in, out, _ = [layer for layer in LAYERS[model] if layer[3] is None][-1]
    return _replace(params, name, np.asarray(arrays[f"{name}.weight"]).reshape(fan_in, out))


# --- wrong converters, Flax → torch (Flax params → canonical arrays) ---------------------------

def to_canonical_flatten_order_ignored(model, params):
    arrays = flax_convert.params_to_canonical(model, params)
    layer, _ = FLATTENED_INPUT[model]
    return {**arrays, f"{layer}.weight": np.ascontiguousarray(np.asarray(params[layer]["kernel"]).T)}


def to_canonical_conv_kernel_spatially_transposed(model, params):
    arrays = flax_convert.params_to_canonical(model, params)
    for name, _, _, k in LAYERS[model]:
        if k:
            arrays[f"{name}.weight"] = np.ascontiguousarray(np.asarray(params[name]["kernel"]).transpose(3, 2, 1, 0))
    return arrays


def assert_caught(measured: float, bound: float) -> None:
    assert measured > bounds.PLANTED_MARGIN * bound, f"planted bug not caught: {measured:.2e} vs bound {bound:.0e}"


@pytest.fixture(scope="module")
def real_batches():
    return {m: harness.forward_batch(harness.load_recipe(m), "real", 128) for m in harness.MODEL_NAMES}


@pytest.mark.parametrize("bug", [flatten_order_ignored, conv_kernel_spatially_transposed,
                                 dense_kernel_reshaped_not_transposed])
@pytest.mark.parametrize("model", CONV_MODELS)
def test_forward_catches_wrong_torch_to_flax_conversion(model, bug, real_batches):
    pair = harness.pair_from_torch(model, to_flax=bug)
    assert_caught(harness.measure_forward(pair, real_batches[model]), bounds.FORWARD_ABS)


@pytest.mark.parametrize("bug", [to_canonical_flatten_order_ignored, to_canonical_conv_kernel_spatially_transposed])
@pytest.mark.parametrize("model", CONV_MODELS)
def test_forward_catches_wrong_flax_to_torch_conversion(model, bug, real_batches):
    pair = harness.pair_from_flax(model, to_canonical=bug)
    assert_caught(harness.measure_forward(pair, real_batches[model]), bounds.FORWARD_ABS)


def test_forward_catches_missing_normalisation(measurements):
    """Torch fed ToTensor output without fashion_cnn's Normalize(0.1307, 0.3081), Flax with it."""
    pair = measurements.pair("fashion_cnn")
    images, labels = harness.real_images(pair.recipe, 128)
    good = harness.batch_from_uint8(pair.recipe, images, labels)
    bad = harness.batch_from_uint8(dataclasses.replace(pair.recipe, normalize_mean=0.0, normalize_std=1.0), images, labels)
    batch = harness.Batch(good.flax_x, bad.torch_x, good.flax_y, good.torch_y)
    assert_caught(harness.measure_forward(pair, batch), bounds.FORWARD_ABS)


def test_mlp_is_blind_to_flatten_order_and_the_conv_models_are_not():
    """Why the flatten-order bug is planted in the conv models only: an image has one channel, so
    (H, W, C) and (C, H, W) orders coincide and the 'bug' is no bug for mlp."""
    pair = harness.pair_from_torch("mlp")
    assert np.array_equal(np.asarray(flatten_order_ignored("mlp", pair.canonical)["fc1"]["kernel"]),
                          np.asarray(pair.flax_params["fc1"]["kernel"]))


@pytest.mark.parametrize("model", ["lenet", "fashion_cnn"])
def test_gradients_catch_unpermuted_gradient_conversion(model, measurements):
    """Flax gradients brought to torch layout without the flatten permutation."""
    pair = measurements.pair(model)
    batch = harness.make_batch(pair.recipe, "real", harness.GRAD_BATCH, seed=7, start=1000)
    result = harness.measure_grads(pair, batch, to_canonical=to_canonical_flatten_order_ignored)
    assert_caught(result.max_abs_diff, bounds.GRAD_ABS)


def test_gradients_catch_unscaled_dropout(measurements):
    """Torch keeps the mask but forgets the survivors' x2 (train-mode gradients, fashion_cnn)."""
    pair = measurements.pair("fashion_cnn")
    batch = harness.make_batch(pair.recipe, "real", harness.GRAD_BATCH, seed=7, start=1000)
    result = harness.measure_grads(pair, batch, train=True, torch_dropout_scale=1.0)
    assert_caught(result.max_abs_diff, bounds.GRAD_ABS)


# --- optimiser bugs: the optimiser-alone check (same gradients into both, harness.optimizer_parity),
# over its OPTIMIZER_STEPS updates, as test_training.test_optimiser_update_with_identical_gradients
# runs it bug-free. SGD momentum, dampening and Adam's moments act from step 2 on.

def torch_sgd(**overrides):
    def factory(params, cfg):
        return torch.optim.SGD(params, **({"lr": cfg.lr, "momentum": cfg.momentum} | overrides))
    return factory


def torch_adam(**overrides):
    def factory(params, cfg):
        return torch.optim.Adam(params, **({"lr": cfg.lr, "betas": (cfg.b1, cfg.b2), "eps": cfg.eps} | overrides))
    return factory


OPTIMIZER_BUGS = {
    # bug: (model whose recipe has that optimiser, optimizer_parity arguments that plant it)
    "torch momentum 0.9 where the recipe says 0.5": ("fashion_cnn", {"torch_optimizer": torch_sgd(momentum=0.9)}),
    "torch SGD with dampening = momentum (Lua torch's convention)": ("lenet", {"torch_optimizer": torch_sgd(dampening=0.9)}),
    "flax drops the momentum": ("lenet", {"flax_optimizer": lambda cfg: optax.sgd(cfg.lr)}),
    "flax Nesterov momentum": ("lenet", {"flax_optimizer": lambda cfg: optax.sgd(cfg.lr, cfg.momentum, nesterov=True)}),
    "torch learning rate x10": ("mlp", {"torch_optimizer": lambda p, cfg: torch.optim.SGD(p, lr=10 * cfg.lr)}),
    "flax Adam with eps inside the square root": (
        "cnn_2layer", {"flax_optimizer": lambda cfg: optax.adam(cfg.lr, cfg.b1, cfg.b2, eps=0.0, eps_root=cfg.eps)}),
    "torch Adam b2 = 0.99 instead of 0.999": ("cnn_2layer", {"torch_optimizer": torch_adam(betas=(0.9, 0.99))}),
    "torch AdamW (its default weight decay 0.01) for Adam": (
        "cnn_2layer", {"torch_optimizer": lambda p, cfg: torch.optim.AdamW(p, lr=cfg.lr)}),
}


@pytest.mark.parametrize("bug", list(OPTIMIZER_BUGS))
def test_update_check_catches_wrong_optimiser(bug, measurements):
    model, kwargs = OPTIMIZER_BUGS[bug]
    diffs = harness.optimizer_parity(measurements.pair(model), measurements.batches(model)[:harness.OPTIMIZER_STEPS], **kwargs)
    assert_caught(max(diffs), bounds.UPDATE_ABS)


# --- training-loop bugs: the float32 trajectory check over its first 3 steps ----------------------


def test_trajectory_catches_unscaled_dropout(measurements):
    pair = measurements.pair("fashion_cnn")
    traj = harness.run_training(pair, measurements.batches("fashion_cnn")[:3], torch_dropout_scale=1.0)
    assert_caught(traj.max_loss_diff, bounds.TRAJECTORY_LOSS)


def test_trajectory_catches_batches_out_of_order(measurements):
    """Torch one batch ahead of Flax (an off-by-one in the loader)."""
    pair = measurements.pair("mlp")
    traj = harness.run_training(pair, measurements.batches("mlp")[:3], torch_batch_offset=1)
    assert_caught(traj.max_loss_diff, bounds.TRAJECTORY_LOSS)


def test_trajectory_catches_wrong_dropout_rate(measurements):
    """Flax's masks at p = 0.5, torch scaling survivors as if p were 0.2 (x1.25)."""
    pair = measurements.pair("fashion_cnn")
    traj = harness.run_training(pair, measurements.batches("fashion_cnn")[:3], torch_dropout_scale=1.25)
    assert_caught(traj.max_loss_diff, bounds.TRAJECTORY_LOSS)
