"""The Flax side on its own: initialisation, purity of the step, its pipelines, and that it learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_parity.recipes import MODELS, load_recipe
from flax_impl import data
from flax_impl.convert import params_to_canonical
from flax_impl.models import create_model, init_params, num_params
from flax_impl.train import FlaxTrainer, create_train_state, train_step

from .helpers import LEARNING_STEPS, MIN_TEST_ACCURACY, check_init_statistics, short_run, source_num_params


@pytest.mark.parametrize("scheme", ["torch", "flax"])
@pytest.mark.parametrize("model", MODELS)
def test_initialisation_schemes(model, scheme):
    params = init_params(create_model(model, scheme), jax.random.key(0))
    assert num_params(params) == source_num_params(model)
    check_init_statistics(model, scheme, params_to_canonical(model, params))


def test_train_step_is_a_pure_function_of_its_inputs(data_dir):
    recipe = load_recipe("fashion_cnn")
    split = data.load_split("fashion_mnist", "train", "device", data_dir)
    batch = {"image": data.normalize(jnp.asarray(split.images[:64]), 0.1307, 0.3081),
             "label": jnp.asarray(split.labels[:64], jnp.int32)}
    state = create_train_state(recipe, jax.random.key(0))
    step = jax.jit(train_step)
    a, metrics_a = step(state, batch, jax.random.key(1))
    b, metrics_b = step(state, batch, jax.random.key(1))
    c, _ = step(state, batch, jax.random.key(2))  # another dropout mask
    assert jax.tree_util.tree_all(jax.tree.map(jnp.array_equal, a.params, b.params))
    assert float(metrics_a["loss"]) == float(metrics_b["loss"])
    assert not jnp.array_equal(a.params["fc1"]["kernel"], c.params["fc1"]["kernel"])
    assert int(a.step) == 1 and int(state.step) == 0


def test_normalize_is_totensor_then_normalize():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    expected = (images.astype(np.float32)[..., None] / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081)
    np.testing.assert_array_equal(np.asarray(data.normalize(jnp.asarray(images), 0.1307, 0.3081)), expected)


def test_each_epoch_draws_a_fresh_permutation():
    key = jax.random.key(0)
    first, second = (np.asarray(data.epoch_permutation(key, e, 1000)) for e in (1, 2))
    assert sorted(first) == list(range(1000)) and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, np.asarray(data.epoch_permutation(key, 1, 1000)))


@pytest.mark.parametrize("model", MODELS)
def test_learns_far_above_chance_on_real_data(model, data_dir, tmp_path):
    summary = short_run(FlaxTrainer, model, seed=0, workdir=tmp_path / "run", data_dir=data_dir)
    assert summary["steps"] == LEARNING_STEPS[model]
    assert summary["test_accuracy"] >= MIN_TEST_ACCURACY[model]
