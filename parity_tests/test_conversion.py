"""Weight conversion, torch state_dict ↔ Flax params, all five models: exact, both ways, and via files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cnn_parity import weights
from flax_impl import convert as flax_convert
from flax_impl import models as flax_models
from cnn_parity.recipes import INITS, MODELS, load_recipe
from parity_tests import bounds
from parity_tests.batches import make_batch
from parity_tests.outputs import flax_forward, measure_forward, torch_forward
from parity_tests.pairs import ModelPair, flax_init_params, pair_from_torch, torch_init
from torch_ref import convert as torch_convert
from torch_ref import models as torch_models



def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32, name
        assert a[name].shape == b[name].shape, name
        assert np.array_equal(a[name].view(np.uint32), b[name].view(np.uint32)), f"{name} is not bitwise identical"


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("model", MODELS)
def test_torch_to_flax_to_torch_is_bitwise_identical(model, init):
    module = torch_init(model, seed=3, init_scheme=init)
    original = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
    params = flax_convert.params_from_canonical(model, torch_convert.state_dict_to_canonical(model, module))
    back = torch_convert.load_canonical(model, torch_models.create_model(model), flax_convert.params_to_canonical(model, params))
    assert_bitwise_equal(original, {k: v.numpy() for k, v in back.state_dict().items()})


def _random_like(params, seed: int):
    """Gaussian values in the structure and shapes of `params`: conversion moves values, whatever they are."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape, np.float32)), params)


@pytest.mark.parametrize("values", ["init", "random"])
@pytest.mark.parametrize("model", MODELS)
def test_flax_to_torch_to_flax_is_bitwise_identical(model, values, measurements):
    params = measurements.pair(model, "flax_to_torch").flax_params  # Flax's own init (seed 0)
    if values == "random":
        params = _random_like(params, seed=3)
    module = torch_convert.load_canonical(model, torch_models.create_model(model), flax_convert.params_to_canonical(model, params))
    back = flax_convert.params_from_canonical(model, torch_convert.state_dict_to_canonical(model, module))
    flat = lambda tree: {jax.tree_util.keystr(path): np.asarray(leaf)
                         for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    assert_bitwise_equal(flat(params), flat(back))


@pytest.mark.parametrize("model", MODELS)
def test_converted_names_shapes_and_layouts_are_canonical(model, measurements):
    """Both converters emit exactly weights.canonical_shapes, i.e. torch's state_dict names and shapes."""
    expected = weights.canonical_shapes(model)
    module = torch_models.create_model(model)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == expected
    from_flax = flax_convert.params_to_canonical(model, measurements.pair(model, "flax_to_torch").flax_params)
    assert {k: v.shape for k, v in from_flax.items()} == expected
    assert all(v.dtype == np.float32 for v in from_flax.values())


def test_suite_init_is_the_products_init_params():
    """pairs.flax_init_params (a cached jit) returns exactly flax_impl.models.init_params' values."""
    model = flax_models.create_model("mlp")
    ours, product = flax_init_params(model, jax.random.key(4)), flax_models.init_params(model, jax.random.key(4))
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(product)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(product)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("model", MODELS)
def test_safetensors_round_trip_both_frameworks(model, tmp_path):
    """torch → file → Flax and Flax → file → torch: the loaded model computes what the saved one did."""
    recipe = load_recipe(model)
    batch = make_batch(recipe, "real", 7)
    pair = pair_from_torch(model, seed=5)

    path = tmp_path / "from_torch.safetensors"
    weights.save_safetensors(path, model, torch_convert.state_dict_to_canonical(model, pair.torch_model))
    name, arrays, _ = weights.load_safetensors(path)
    assert name == model
    assert_bitwise_equal(pair.canonical, arrays)
    loaded = ModelPair(recipe, pair.torch_model, pair.flax_model, flax_convert.params_from_canonical(model, arrays),
                       pair.mapping, arrays)
    assert np.array_equal(flax_forward(loaded, batch), flax_forward(pair, batch))

    path = tmp_path / "from_flax.safetensors"
    weights.save_safetensors(path, model, flax_convert.params_to_canonical(model, pair.flax_params))
    _, arrays, _ = weights.load_safetensors(path)
    module = torch_convert.load_canonical(model, torch_models.create_model(model), arrays)
    loaded = ModelPair(recipe, module, pair.flax_model, pair.flax_params, pair.mapping, arrays)
    assert np.array_equal(torch_forward(loaded, batch), torch_forward(pair, batch))
    assert measure_forward(loaded, batch) <= bounds.FORWARD_ABS


def test_converted_weights_do_not_alias_their_source():
    """Converting copies: training one side after conversion never moves the other side's weights."""
    module = torch_init("lenet")
    canonical = torch_convert.state_dict_to_canonical("lenet", module)
    before = {k: v.copy() for k, v in canonical.items()}
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    assert_bitwise_equal(before, canonical)
