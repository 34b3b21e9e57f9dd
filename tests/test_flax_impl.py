"""The Flax side on its own (Linen and NNX models): initialisation, purity of the step, its pipelines,
and that it learns."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_parity.recipes import MODELS, load_recipe
from cnn_parity.errors import UsageError
from flax_impl import data, jaxlib_onednn, kernels, models_nnx
from flax_impl.convert import params_from_canonical, params_to_canonical
from flax_impl.models import create_model, init_params, num_params
from flax_impl.train import FlaxTrainer, create_train_state, resolve_conv_impl, train_step

from .helpers import LEARNING_STEPS, MIN_TEST_ACCURACY, check_init_statistics, short_run, source_num_params


@pytest.mark.parametrize("scheme", ["torch", "flax"])
@pytest.mark.parametrize("model", MODELS)
def test_initialisation_schemes(model, scheme):
    params = init_params(create_model(model, scheme), jax.random.key(0))
    assert num_params(params) == source_num_params(model)
    check_init_statistics(model, scheme, params_to_canonical(model, params))


@pytest.mark.parametrize("scheme", ["torch", "flax"])
@pytest.mark.parametrize("model", MODELS)
def test_nnx_initialisation_schemes_and_linen_layout(model, scheme):
    """NNX models draw their own initial weights (same distributions as Linen's, not the same draws)
    into a params dict laid out exactly as Linen's: same tree, shapes and dtypes, so the converters,
    checkpoints and train step serve both."""
    _, params = models_nnx.init_params(model, jax.random.key(0), scheme)
    linen = jax.eval_shape(lambda: init_params(create_model(model, scheme), jax.random.key(0)))
    assert jax.tree.structure(params) == jax.tree.structure(linen)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(lambda a: (a.shape, a.dtype), linen)
    assert num_params(params) == source_num_params(model)
    canonical = params_to_canonical(model, params)
    check_init_statistics(model, scheme, canonical)
    assert jax.tree.all(jax.tree.map(np.array_equal, params_from_canonical(model, canonical), params))


@pytest.mark.parametrize("conv_impl", kernels.CONV_IMPLS)
def test_nnx_layers_use_the_linen_models_convolution_and_pooling(conv_impl):
    """One implementation of each tier's convolution and pooling serves both APIs: the NNX layers and
    the Linen modules hold the same flax_impl.kernels functions."""
    tier = kernels.of(conv_impl)
    nnx_model = models_nnx.create_model("lenet", kernels=tier, rngs=nnx.Rngs(params=0))
    linen = create_model("lenet", kernels=tier)
    expected = tier.conv_general_dilated or jax.lax.conv_general_dilated
    assert nnx_model.conv1.conv_general_dilated is expected and nnx_model.conv2.conv_general_dilated is expected
    assert nnx_model.kernels is tier and linen.kernels is tier
    assert models_nnx.split_params(nnx_model)[0].kernels is tier


@pytest.mark.parametrize("self_test,default", [(True, "jaxlib-onednn"), (False, "canonical")])
def test_default_conv_impl_on_a_cpu_is_jaxlib_onednn_where_its_self_test_passes(self_test, default, monkeypatch,
                                                                                 capsys):
    """"auto" never picks the opt-in extension and does not depend on what is installed; where
    jaxlib's oneDNN fails its self-test it falls back to the pure-JAX tier and says so in one line."""
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(jaxlib_onednn, "status", lambda: (self_test, "why not"))
    assert resolve_conv_impl("auto", "lenet") == default
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ([] if self_test else ["jaxlib's oneDNN convolution is not used: why not; convolving with the "
                                          "pure-JAX 'canonical' tier instead"])
    assert resolve_conv_impl("auto", "lenet", devices=2) == "canonical"  # oneDNN's calls are not partitioned
    if not self_test:
        with pytest.raises(UsageError, match="conv_impl jaxlib-onednn: why not"):
            resolve_conv_impl("jaxlib-onednn", "lenet")


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_default_conv_impl_is_xla_off_the_cpu(backend, monkeypatch):
    """A model without convolutions records "none" whatever was asked for."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert resolve_conv_impl("auto", "lenet") == "xla"
    assert resolve_conv_impl("auto", "mlp") == resolve_conv_impl("onednn", "mlp") == "none"
    assert resolve_conv_impl("gemm", "cnn_base", devices=2) == "gemm"
    with pytest.raises(UsageError, match="runs on the CPU only"):
        resolve_conv_impl("jaxlib-onednn", "lenet")
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        resolve_conv_impl("cudnn", "lenet")


@pytest.mark.parametrize("model", ["lenet", "fashion_cnn"])
def test_nnx_functional_model_is_static_and_holds_no_state(model):
    """The split graph is hashable and equal across instances (jax.jit caches one compilation), and the
    model's only state is its parameters (no RNG stream: dropout keys come with each call)."""
    first, params = models_nnx.init_params(model, jax.random.key(0))
    second = models_nnx.functional_model(model)
    assert first == second and hash(first) == hash(second)
    _, _, rest = nnx.split(nnx.merge(first.graphdef, params), nnx.Param, ...)
    assert not jax.tree.leaves(rest)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_train_step_is_a_pure_function_of_its_inputs(api, data_dir):
    recipe = load_recipe("fashion_cnn")
    split = data.load_split(recipe, "train", "device", data_dir)
    batch = {"image": data.normalize(jnp.asarray(split.images[:64]), 0.1307, 0.3081),
             "label": jnp.asarray(split.labels[:64], jnp.int32)}
    state = create_train_state(recipe, jax.random.key(0), "gemm", api=api)
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


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_learns_far_above_chance_on_real_data(model, data_dir, tmp_path):
    summary = short_run(FlaxTrainer, model, seed=0, workdir=tmp_path / "run", data_dir=data_dir)
    assert summary["steps"] == LEARNING_STEPS[model]
    assert summary["test_accuracy"] >= MIN_TEST_ACCURACY[model]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn_2layer", "fashion_cnn"])
def test_nnx_learns_far_above_chance_on_real_data(model, data_dir, tmp_path):
    """The NNX models through the same trainer (their training is Linen's bit for bit from the same
    weights, parity_tests/test_nnx_vs_linen.py; here, from their own initialisation)."""
    nnx_trainer = functools.partial(FlaxTrainer, api="nnx")
    summary = short_run(nnx_trainer, model, seed=0, workdir=tmp_path / "run", data_dir=data_dir)
    assert summary["steps"] == LEARNING_STEPS[model]
    assert summary["test_accuracy"] >= MIN_TEST_ACCURACY[model]
