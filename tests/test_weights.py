"""The neutral architecture tables (cnn_parity/weights.py): the geometry derived from the layer table
and the pooling positions is what it was written out as, and every initialiser a source used
explicitly is implemented on each side."""

from __future__ import annotations

import math

from cnn_parity import shared_rng, weights
from flax_impl import models as flax_models
from torch_ref import models as torch_models

# The values CONV_GEOMETRY and FLATTENED_INPUT held as literals before they were derived.
WRITTEN_CONV_GEOMETRY = {
    "mlp": {},
    "cnn_base": {"conv1": (28, 0, False), "conv2": (24, 0, True), "conv3": (10, 0, True)},
    "cnn_2layer": {"conv1": (28, 1, True), "conv2": (14, 1, True)},
    "lenet": {"conv1": (28, 0, True), "conv2": (12, 0, True)},
    "fashion_cnn": {"conv1": (28, 0, True), "conv2": (12, 0, True)},
}
WRITTEN_FLATTENED_INPUT = {
    "mlp": ("fc1", (1, 28, 28)),
    "cnn_base": ("fc1", (64, 3, 3)),
    "cnn_2layer": ("fc", (64, 7, 7)),
    "lenet": ("fc1", (16, 4, 4)),
    "fashion_cnn": ("fc1", (20, 4, 4)),
}


def test_derived_geometry_is_the_written_one():
    assert weights.CONV_GEOMETRY == WRITTEN_CONV_GEOMETRY
    assert weights.FLATTENED_INPUT == WRITTEN_FLATTENED_INPUT


def test_the_flattened_feature_map_is_its_linear_layers_fan_in():
    for model, (layer, chw) in weights.FLATTENED_INPUT.items():
        fan_in = {name: fan for name, fan, _, _ in weights.LAYERS[model]}[layer]
        assert math.prod(chw) == fan_in, model


def test_every_explicit_initialiser_is_implemented_on_each_side():
    named = {init for layers in weights.EXPLICIT_WEIGHT_INITS.values() for init in layers.values()}
    for implementations in (shared_rng._EXPLICIT_WEIGHT_INITS, flax_models._EXPLICIT_KERNEL_INITS,
                            torch_models._EXPLICIT_WEIGHT_INITS):
        assert named <= set(implementations)
    for model, layers in weights.EXPLICIT_WEIGHT_INITS.items():
        assert set(layers) <= {name for name, *_ in weights.LAYERS[model]}, model
