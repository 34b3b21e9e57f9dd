"""1. Shapes: every layer's output, the logits, every parameter, and parameter counts, as the sources
state them (docs/sources.md)."""

from __future__ import annotations

import pytest

from cnn_parity import weights
from cnn_parity.recipes import MODELS
from flax_impl import convert as flax_convert
from parity_tests.outputs import BATCH_SIZES, flax_layer_shapes, forward_batch, torch_layer_shapes

# Written from the sources (docs/sources.md), not from the code: torch NCHW output shape of each layer for a
# batch of N. Flax's are the same in NHWC. fashion_cnn's `dropout` is Linen's unnamed Dropout_0 (NNX: `dropout`).
LAYER_OUTPUTS = {
    "mlp": {"fc1": (20,), "fc2": (10,)},
    "cnn_base": {"conv1": (16, 24, 24), "conv2": (32, 20, 20), "conv3": (64, 6, 6), "fc1": (100,), "fc2": (10,)},
    "cnn_2layer": {"conv1": (32, 28, 28), "conv2": (64, 14, 14), "fc": (10,)},
    "lenet": {"conv1": (6, 24, 24), "conv2": (16, 8, 8), "fc1": (120,), "fc2": (84,), "fc3": (10,)},
    "fashion_cnn": {"conv1": (10, 24, 24), "conv2": (20, 8, 8), "fc1": (50,), "dropout": (50,), "fc2": (10,)},
}
FLAX_NAMES = {"linen": {"dropout": "Dropout_0"}, "nnx": {}}  # per API


def nhwc(shape):
    return (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else shape


@pytest.mark.parametrize("n", BATCH_SIZES)
@pytest.mark.parametrize("model", MODELS)
def test_layer_and_logit_shapes(model, n, measurements):
    pair = measurements.pair(model)
    batch = forward_batch(pair.recipe, "real", n)
    expected = {layer: (n, *shape) for layer, shape in LAYER_OUTPUTS[model].items()} | {"output": (n, 10)}
    assert torch_layer_shapes(pair, batch) == expected
    flax_shapes = flax_layer_shapes(pair, batch)
    names = FLAX_NAMES[measurements.api]
    assert flax_shapes == {names.get(k, k): nhwc(v) for k, v in expected.items()}


@pytest.mark.parametrize("model", MODELS)
def test_parameter_shapes_and_counts(model, measurements):
    pair = measurements.pair(model)
    shapes = weights.canonical_shapes(model)
    assert {k: tuple(v.shape) for k, v in pair.torch_model.state_dict().items()} == shapes
    assert {k: v.shape for k, v in flax_convert.params_to_canonical(model, pair.flax_params).items()} == shapes
    # Flax's own layouts: Conv HWIO, Dense (in, out).
    for name, fan_in, out, k in weights.LAYERS[model]:
        expected = (k, k, fan_in, out) if k else (fan_in, out)
        assert pair.flax_params[name]["kernel"].shape == expected
        assert pair.flax_params[name]["bias"].shape == (out,)
    num_flax, num_torch = measurements.num_params(model)
    assert num_flax == num_torch == pair.recipe.reported["num_params"]


@pytest.mark.parametrize("model", MODELS)
def test_flattened_feature_map_matches_spec(model):
    """The (C, H, W) the converters un-flatten is the spec's last feature map after its 2x2 pool
    (mlp: the image), and its size is the first Dense layer's fan-in."""
    layer, chw = weights.FLATTENED_INPUT[model]
    convs = [shape for name, shape in LAYER_OUTPUTS[model].items() if name.startswith("conv")]
    expected = (convs[-1][0], convs[-1][1] // 2, convs[-1][2] // 2) if convs else (1, 28, 28)
    assert chw == expected
    fan_in = {name: fan for name, fan, _, _ in weights.LAYERS[model]}[layer]
    assert chw[0] * chw[1] * chw[2] == fan_in


@pytest.mark.parametrize("model", MODELS)
def test_convolution_geometry_matches_spec(model):
    """weights.CONV_GEOMETRY (what benchmarks count FLOPs from) gives the sources' conv outputs, and each
    convolution's input is the previous one's output, pooled where the geometry says so."""
    convs = {name: shape for name, shape in LAYER_OUTPUTS[model].items() if name.startswith("conv")}
    assert list(convs) == list(weights.CONV_GEOMETRY[model])
    side = 28
    for name, (channels, height, width) in convs.items():
        input_side, _, pooled = weights.CONV_GEOMETRY[model][name]
        assert input_side == side and weights.conv_output_side(model, name) == height == width
        side = height // 2 if pooled else height
