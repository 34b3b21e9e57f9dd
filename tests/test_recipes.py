"""Recipe files: the single source of truth for both frameworks."""

from __future__ import annotations

import math

import pytest

from cnn_parity.errors import UsageError
from cnn_parity.recipes import MODELS, config_path, load_recipe, parse_assignment
from cnn_parity.weights import canonical_shapes

from .helpers import source_num_params

@pytest.mark.parametrize("model", MODELS)
def test_every_recipe_loads_and_its_layers_have_the_sources_parameter_count(model):
    recipe = load_recipe(model)
    assert recipe.model == model
    assert sum(math.prod(s) for s in canonical_shapes(model).values()) == source_num_params(model)


def test_source_recipes_as_docs_sources_states():
    lenet, fashion, cnn2 = load_recipe("lenet"), load_recipe("fashion_cnn"), load_recipe("cnn_2layer")
    assert (lenet.batch_size, lenet.epochs, lenet.optimizer.name, lenet.optimizer.lr, lenet.optimizer.momentum) == \
        (128, 21, "sgd", 1e-3, 0.9)
    assert (fashion.dataset, fashion.normalize_mean, fashion.normalize_std, fashion.batch_size) == \
        ("fashion_mnist", 0.1307, 0.3081, 64)
    assert (cnn2.seed, cnn2.optimizer.name, cnn2.optimizer.lr, cnn2.drop_last) == (777, "adam", 1e-3, True)
    assert load_recipe("cnn_base").optimizer.lr == 2e-4
    assert load_recipe("mlp").optimizer.momentum == 0.0


def test_overrides_are_typed_and_dotted():
    recipe = load_recipe("lenet", overrides={"optimizer.momentum": 0.5, "epochs": 3, "optimizer.lr": 1})
    assert recipe.optimizer.momentum == 0.5 and recipe.epochs == 3
    assert recipe.optimizer.lr == 1.0 and isinstance(recipe.optimizer.lr, float)


@pytest.mark.parametrize("text, expected", [
    ("optimizer.lr=1e-3", ("optimizer.lr", 1e-3)), ("drop_last=true", ("drop_last", True)),
    ("init=flax", ("init", "flax")), ("epochs = 4", ("epochs", 4)),
])
def test_parse_assignment(text, expected):
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer.lr": -1.0}, "recipe key optimizer.lr: input should be greater than 0, got -1.0"),
    ({"optimizer.lr": float("nan")}, r"recipe key optimizer.lr: input should be greater than 0, got nan"),
    ({"normalize_mean": float("inf")}, r"recipe key normalize_mean: inf is outside float32's range"),
    ({"batch_size": 0}, "recipe key batch_size: input should be greater than 0, got 0"),
    ({"epochs": 0}, "recipe key epochs: input should be greater than 0"),
    ({"optimizer.momentum": 1.0}, "recipe key optimizer.momentum: input should be less than 1"),
    ({"optimizer.name": "lion"}, "recipe key optimizer.name: input should be 'sgd', 'adam', 'adamw' or 'rmsprop', got 'lion'"),
    ({"init": "xavier"}, "recipe key init: input should be 'torch' or 'flax', got 'xavier'"),
    ({"init_rng": "numpy"}, "recipe key init_rng: input should be 'framework' or 'shared', got 'numpy'"),
    ({"shuffle_rng": 1}, "recipe key shuffle_rng: input should be 'framework' or 'shared', got 1"),
    ({"dataset": "cifar10"}, "recipe key dataset: input should be 'mnist', 'fashion_mnist', 'npz' or 'tfds', got 'cifar10'"),
    ({"batch_size": 1.5}, "recipe key batch_size: input should be a valid integer, got 1.5"),
    ({"drop_last": "yes"}, "recipe key drop_last: input should be a valid boolean, got 'yes'"),
    ({"seed": 2**32}, r"recipe key seed: must be in 0 .. 2\*\*32 - 1"),
    ({"learning_rate": 0.1}, "unknown recipe key learning_rate"),
    ({"optimizer.betas": 0.1}, "unknown recipe key optimizer.betas"),
    ({"reported": 3}, "recipe key reported cannot be set"),
])
def test_invalid_values_are_usage_errors(overrides, message):
    with pytest.raises(UsageError, match=message):
        load_recipe("lenet", overrides=overrides)


def test_unknown_model_names_the_choices():
    with pytest.raises(UsageError, match="unknown model 'resnet'; choose one of: mlp, cnn_base"):
        load_recipe("resnet")


def test_config_file_and_model_must_agree(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(config_path("lenet").read_text().replace("epochs = 21", "epochs = 2"))
    assert load_recipe(config=path).epochs == 2
    with pytest.raises(UsageError, match="disagrees"):
        load_recipe("mlp", config=path)
    path.write_text("model = [")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_recipe(config=path)


def test_switching_the_optimizer_drops_the_old_ones_settings(capsys):
    recipe = load_recipe("lenet", overrides={"optimizer": "adam", "optimizer.lr": 1e-3})  # optimizer=NAME: short form
    assert (recipe.optimizer.name, recipe.optimizer.lr, recipe.optimizer.momentum) == ("adam", 1e-3, 0.0)
    assert "optimizer sgd -> adam: dropping the sgd setting(s) momentum=0.9" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"optimizer\.momentum is no setting of adam"):
        load_recipe("lenet", overrides={"optimizer.name": "adam", "optimizer.momentum": 0.5})


def test_bad_keys_are_named_with_what_is_settable():
    with pytest.raises(UsageError, match=r"unknown recipe key optimizer\.type \(settable: dataset, "):
        load_recipe("lenet", overrides={"optimizer.type": "adam"})
    with pytest.raises(UsageError, match=r"unknown recipe key seed\.x \(settable: dataset, "):
        load_recipe("lenet", overrides={"seed.x": 1})


def test_a_recipe_file_with_a_bad_value_is_named(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(config_path("lenet").read_text().replace("batch_size = 128", "batch_size = -128"))
    with pytest.raises(UsageError, match=f"^{path}: recipe key batch_size: input should be greater than 0, got -128$"):
        load_recipe(config=path)
    path.write_text(config_path("lenet").read_text().replace("epochs = 21", "epochs = 21\nwarmup = 3"))
    with pytest.raises(UsageError, match=f"^{path}: unknown recipe key warmup$"):
        load_recipe(config=path)


