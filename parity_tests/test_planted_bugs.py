"""9. The suite catches planted bugs: the same measurements as tests 2-5, each with one known-wrong
piece swapped in, must fail their bound, by at least bounds.PLANTED_MARGIN so that "caught" is never
a near-tie. The wrong piece is either the product's own (its converters, make_optimizer,
cross_entropy, patched where the product defines them, so the measurements run them exactly as they
run the product) or the plumbing between the two frameworks (the normalisation fed to one side, the
dropout mask's scaling, the batch order).

Each bug is a mistake that has really been made porting PyTorch models to Flax (flatten order,
kernel layouts, SGD dampening, Adam's eps placement, unscaled dropout). Last, bugs in the NNX models
that the bitwise NNX-vs-Linen check (test 10) must catch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from cnn_parity.recipes import MODELS, load_recipe
from cnn_parity.weights import FLATTENED_INPUT, LAYERS
from flax_impl import convert as flax_convert
from flax_impl import models_nnx as flax_models_nnx
from flax_impl import train as flax_train
from parity_tests import bounds
from parity_tests.apis import measure_apis
from parity_tests.batches import Batch, batch_from_uint8, make_batch, real_images
from parity_tests.gradients import GRAD_BATCH, measure_grads
from parity_tests.outputs import forward_batch, measure_forward
from parity_tests.pairs import APIS, pair_from_flax, pair_from_torch, product_mapping
from parity_tests.trajectory import run_training
from parity_tests.updates import OPTIMIZER_STEPS, same_gradient_updates
from torch_ref import train as torch_train

CONV_MODELS = [m for m in MODELS if m != "mlp"]


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


def mapping_with(model, **bugs):
    """The product's weight mapping of `model` with some of its functions replaced by `bugs`
    (each taking the model name first, as the product's converters do)."""
    return dataclasses.replace(product_mapping(model), **{k: functools.partial(f, model) for k, f in bugs.items()})


def assert_caught(measured: float, bound: float) -> None:
    assert measured > bounds.PLANTED_MARGIN * bound, f"planted bug not caught: {measured:.2e} vs bound {bound:.0e}"


@pytest.fixture(scope="module")
def real_batches():
    return {m: forward_batch(load_recipe(m), "real", 128) for m in MODELS}


@pytest.mark.parametrize("bug", [flatten_order_ignored, conv_kernel_spatially_transposed,
                                 dense_kernel_reshaped_not_transposed])
@pytest.mark.parametrize("model", CONV_MODELS)
@pytest.mark.parametrize("api", APIS)
def test_forward_catches_wrong_torch_to_flax_conversion(api, model, bug, real_batches):
    pair = pair_from_torch(model, mapping=mapping_with(model, canonical_to_flax=bug), api=api)
    assert_caught(measure_forward(pair, real_batches[model]), bounds.FORWARD_ABS)


@pytest.mark.parametrize("bug", [to_canonical_flatten_order_ignored, to_canonical_conv_kernel_spatially_transposed])
@pytest.mark.parametrize("model", CONV_MODELS)
@pytest.mark.parametrize("api", APIS)
def test_forward_catches_wrong_flax_to_torch_conversion(api, model, bug, real_batches):
    pair = pair_from_flax(model, mapping=mapping_with(model, flax_to_canonical=bug), api=api)
    assert_caught(measure_forward(pair, real_batches[model]), bounds.FORWARD_ABS)


def test_forward_catches_missing_normalisation(measurements):
    """Torch fed ToTensor output without fashion_cnn's Normalize(0.1307, 0.3081), Flax with it."""
    pair = measurements.pair("fashion_cnn")
    images, labels = real_images(pair.recipe, 128)
    good = batch_from_uint8(pair.recipe, images, labels)
    bad = batch_from_uint8(pair.recipe.model_copy(update={"normalize_mean": 0.0, "normalize_std": 1.0}), images, labels)
    batch = Batch(good.flax_x, bad.torch_x, good.flax_y, good.torch_y)
    assert_caught(measure_forward(pair, batch), bounds.FORWARD_ABS)


def test_mlp_is_blind_to_flatten_order_and_the_conv_models_are_not():
    """Why the flatten-order bug is planted in the conv models only: an image has one channel, so
    (H, W, C) and (C, H, W) orders coincide and the 'bug' is no bug for mlp."""
    pair = pair_from_torch("mlp")
    assert np.array_equal(np.asarray(flatten_order_ignored("mlp", pair.canonical)["fc1"]["kernel"]),
                          np.asarray(pair.flax_params["fc1"]["kernel"]))


@pytest.mark.parametrize("model", ["lenet", "fashion_cnn"])
def test_gradients_catch_unpermuted_gradient_conversion(model, measurements):
    """Flax gradients brought to torch layout without the flatten permutation."""
    pair = measurements.pair(model)
    batch = make_batch(pair.recipe, "real", GRAD_BATCH, seed=7, start=1000)
    bad_pair = pair.with_mapping(flax_to_canonical=functools.partial(to_canonical_flatten_order_ignored, model))
    result = measure_grads(bad_pair, batch)
    assert_caught(result.max_abs_diff, bounds.GRAD_ABS)


def test_gradients_catch_unscaled_dropout(measurements):
    """Torch keeps the mask but forgets the survivors' x2 (train-mode gradients, fashion_cnn)."""
    pair = measurements.pair("fashion_cnn")
    batch = make_batch(pair.recipe, "real", GRAD_BATCH, seed=7, start=1000)
    result = measure_grads(pair, batch, train=True, torch_dropout_scale=1.0)
    assert_caught(result.max_abs_diff, bounds.GRAD_ABS)


# --- optimiser bugs: the product's make_optimizer replaced, on one side, in the optimiser-alone check
# (same gradients into both, updates.same_gradient_updates) over its OPTIMIZER_STEPS updates, as
# test_training.test_optimiser_update_with_identical_gradients runs it. SGD momentum, dampening and
# Adam's moments act from step 2 on.

def torch_sgd(**overrides):
    def make_optimizer(params, cfg):
        return torch.optim.SGD(params, **({"lr": cfg.lr, "momentum": cfg.momentum} | overrides))
    return make_optimizer


def torch_adam(**overrides):
    def make_optimizer(params, cfg):
        return torch.optim.Adam(params, **({"lr": cfg.lr, "betas": (cfg.b1, cfg.b2), "eps": cfg.eps} | overrides))
    return make_optimizer


OPTIMIZER_BUGS = {
    # bug: (model whose recipe has that optimiser, product module, its wrong make_optimizer)
    "torch momentum 0.9 where the recipe says 0.5": ("fashion_cnn", torch_train, torch_sgd(momentum=0.9)),
    "torch SGD with dampening = momentum (Lua torch's convention)": ("lenet", torch_train, torch_sgd(dampening=0.9)),
    "flax drops the momentum": ("lenet", flax_train, lambda cfg: optax.sgd(cfg.lr)),
    "flax Nesterov momentum": ("lenet", flax_train, lambda cfg: optax.sgd(cfg.lr, cfg.momentum, nesterov=True)),
    "torch learning rate x10": ("mlp", torch_train, lambda p, cfg: torch.optim.SGD(p, lr=10 * cfg.lr)),
    "flax Adam with eps inside the square root": (
        "cnn_2layer", flax_train, lambda cfg: optax.adam(cfg.lr, cfg.b1, cfg.b2, eps=0.0, eps_root=cfg.eps)),
    "torch Adam b2 = 0.99 instead of 0.999": ("cnn_2layer", torch_train, torch_adam(betas=(0.9, 0.99))),
    "torch AdamW (its default weight decay 0.01) for Adam": (
        "cnn_2layer", torch_train, lambda p, cfg: torch.optim.AdamW(p, lr=cfg.lr)),
}


@pytest.mark.parametrize("bug", list(OPTIMIZER_BUGS))
def test_update_check_catches_wrong_optimiser(bug, measurements, monkeypatch):
    model, product, wrong_make_optimizer = OPTIMIZER_BUGS[bug]
    monkeypatch.setattr(product, "make_optimizer", wrong_make_optimizer)
    diffs = same_gradient_updates(measurements.pair(model), measurements.batches(model)[:OPTIMIZER_STEPS])
    assert_caught(max(diffs), bounds.UPDATE_ABS)


# --- training bugs: the float32 trajectory check (bounds.check_trajectory) over the first 3 steps ----

def assert_trajectory_check_fails(traj, control) -> None:
    check = bounds.check_trajectory(traj, lambda: control)
    assert not check.ok
    assert_caught(check.max_loss_diff, check.loss_bound)


WRONG_LOSSES = {  # framework: (product module, its cross_entropy 1% too large)
    "flax": (flax_train, lambda outputs, labels: 1.01 * optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()),
    "torch": (torch_train, lambda outputs, labels: 1.01 * F.cross_entropy(outputs, labels)),
}


@contextlib.contextmanager
def patched(monkeypatch, module, name, value):
    """`module.name = value` within the block. JAX's caches are cleared on entry, so that the
    jitted product steps are traced with the patch, and on exit, so that no later test reuses
    such a trace."""
    with monkeypatch.context() as patch:
        patch.setattr(module, name, value)
        jax.clear_caches()
        try:
            yield
        finally:
            jax.clear_caches()


@pytest.mark.parametrize("framework", list(WRONG_LOSSES))
@pytest.mark.parametrize("model", ["mlp", "fashion_cnn"])
def test_trajectory_check_catches_a_wrong_loss_in_the_product(model, framework, measurements, monkeypatch):
    """The trajectory test's own measurement (trajectory.run_training) and verdict
    (bounds.check_trajectory) fail when one product's training step computes a wrong loss: the
    suite measures the products' steps, not copies of them."""
    product, wrong_loss = WRONG_LOSSES[framework]
    control = measurements.control(model)  # measured before the patch: it is shared with other tests
    with patched(monkeypatch, product, "cross_entropy", wrong_loss):
        traj = run_training(measurements.pair(model), measurements.batches(model)[:3])
    assert_trajectory_check_fails(traj, control)


def test_trajectory_catches_unscaled_dropout(measurements):
    traj = run_training(measurements.pair("fashion_cnn"), measurements.batches("fashion_cnn")[:3], torch_dropout_scale=1.0)
    assert_trajectory_check_fails(traj, measurements.control("fashion_cnn"))


def test_trajectory_catches_batches_out_of_order(measurements):
    """Torch one batch ahead of Flax (an off-by-one in the loader)."""
    traj = run_training(measurements.pair("mlp"), measurements.batches("mlp")[:3], torch_batch_offset=1)
    assert_trajectory_check_fails(traj, measurements.control("mlp"))


def test_trajectory_catches_wrong_dropout_rate(measurements):
    """Flax's masks at p = 0.5, torch scaling survivors as if p were 0.2 (x1.25)."""
    traj = run_training(measurements.pair("fashion_cnn"), measurements.batches("fashion_cnn")[:3], torch_dropout_scale=1.25)
    assert_trajectory_check_fails(traj, measurements.control("fashion_cnn"))


# --- NNX bugs: the NNX model differs from the Linen one; the bitwise NNX-vs-Linen check (apis.py) ----

NNX_BUGS = {  # bug: (model, the flax_impl.models_nnx function replaced, its wrong version)
    "NNX dropout drawing from the step key, not the key Linen derives from it": (
        "fashion_cnn", "linen_dropout_key", lambda key: key),
    "NNX flattening (C, H, W), torch's order, instead of Linen's (H, W, C)": (
        "lenet", "flatten", lambda x: x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)),
}


@pytest.mark.parametrize("bug", list(NNX_BUGS))
def test_nnx_vs_linen_check_catches_a_wrong_nnx_model(bug, monkeypatch):
    """Bound 0: any difference fails; these fail by far more than even the forward bound."""
    model, name, wrong = NNX_BUGS[bug]
    with patched(monkeypatch, flax_models_nnx, name, wrong):
        result = measure_apis(model)
    assert_caught(result.worst, bounds.FORWARD_ABS)
