"""Check your own model on the project's five pairs: with no mapping file the checker maps, transfers
and passes each (Linen and NNX), and localises the parity suite's planted conversion bugs
(test_planted_bugs.py) to the layer they break, with their cause."""

from __future__ import annotations

import pytest
from flax import nnx

from cnn_parity.recipes import MODELS
from cnn_parity.weights import FLATTENED_INPUT, LAYERS
from flax_impl import convert as flax_convert
from flax_impl import models as flax_models
from flax_impl import models_nnx as flax_models_nnx
from parity_check import check_pair
from parity_check.examples import example_input
from parity_tests.pairs import APIS
from parity_tests.test_planted_bugs import (conv_kernel_spatially_transposed,
                                            dense_kernel_reshaped_not_transposed, flatten_order_ignored,
                                            to_canonical_conv_kernel_spatially_transposed,
                                            to_canonical_flatten_order_ignored)
from torch_ref import convert as torch_convert
from torch_ref import models as torch_models

X = example_input((8, 1, 28, 28))


def flax_model(name: str, api: str):
    return flax_models.MODULES[name]() if api == "linen" else flax_models_nnx.MODULES[name](rngs=nnx.Rngs(0))


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("model", MODELS)
def test_five_models_pass_with_inferred_mapping(model, api):
    report = check_pair(torch_models.create_model(model), flax_model(model, api), X)
    assert report.passed, report.summary()
    assert [m.torch_name for m in report.mapping.layers] == [name for name, *_ in LAYERS[model]]
    flattened = {m.torch_name: m.flatten for m in report.mapping.layers if m.flatten}
    layer, (c, h, w) = FLATTENED_INPUT[model]
    assert flattened == ({} if model == "mlp" else {layer: (c, h, w)})


def _last_dense(model):
    return [name for name, _, _, k in LAYERS[model] if k is None][-1]


TORCH_TO_FLAX_BUGS = {  # the suite's wrong converter: (the layer it breaks, the cause)
    flatten_order_ignored: (lambda m: FLATTENED_INPUT[m][0], "flatten_order"),
    conv_kernel_spatially_transposed: (lambda m: "conv1", "kernel_layout"),
    dense_kernel_reshaped_not_transposed: (_last_dense, "missing_transpose"),
}


@pytest.mark.parametrize("bug", list(TORCH_TO_FLAX_BUGS), ids=lambda f: f.__name__)
@pytest.mark.parametrize("model", ["lenet", "cnn_2layer"])
def test_planted_torch_to_flax_conversion_bugs_are_localised(model, bug):
    torch_model = torch_models.create_model(model)
    params = bug(model, torch_convert.state_dict_to_canonical(model, torch_model))
    report = check_pair(torch_model, flax_models.MODULES[model](), X, variables={"params": params}, direction="none")
    layer, cause = TORCH_TO_FLAX_BUGS[bug]
    d = report.first_divergence
    assert (d["torch_name"], d["status"], d["cause"]) == (layer(model), "introduced", cause), report.summary()


@pytest.mark.parametrize("bug, layer, cause", [
    (to_canonical_flatten_order_ignored, lambda m: FLATTENED_INPUT[m][0], "flatten_order"),
    (to_canonical_conv_kernel_spatially_transposed, lambda m: "conv1", "kernel_layout")],
    ids=["flatten_order", "kernel_layout"])
@pytest.mark.parametrize("model", ["fashion_cnn", "cnn_base"])
def test_planted_flax_to_torch_conversion_bugs_are_localised(model, bug, layer, cause):
    flax_side = flax_models_nnx.MODULES[model](rngs=nnx.Rngs(0))
    params = flax_models_nnx.split_params(flax_side)[1]
    torch_model = torch_convert.load_canonical(model, torch_models.create_model(model), bug(model, params))
    report = check_pair(torch_model, flax_side, X, direction="none")
    d = report.first_divergence
    assert (d["torch_name"], d["status"], d["cause"]) == (layer(model), "introduced", cause), report.summary()


def test_right_conversion_passes_with_weights_converted_elsewhere():
    torch_model = torch_models.create_model("lenet")
    params = flax_convert.params_from_canonical("lenet", torch_convert.state_dict_to_canonical("lenet", torch_model))
    assert check_pair(torch_model, flax_models.LeNet(), X, variables={"params": params}, direction="none").passed
