"""2. Forward: eval-mode outputs agree to 1e-5 after conversion, in both directions, on real data
and random inputs, for batches of 1, 7 and 128, for all five models."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_parity.recipes import MODELS, load_recipe
from parity_tests import bounds
from parity_tests.batches import make_batch
from parity_tests.outputs import flax_forward, forward_batch, forward_cases, torch_forward


@pytest.mark.parametrize("direction,kind,n", forward_cases())
@pytest.mark.parametrize("model", MODELS)
def test_forward_parity(model, direction, kind, n, measurements):
    diff = measurements.forward(model, direction, kind, n)
    assert diff <= bounds.FORWARD_ABS, f"{model} {direction} {kind} n={n}: max |Δ| {diff:.2e}"


@pytest.mark.parametrize("model", MODELS)
def test_outputs_are_not_degenerate(model, measurements):
    """A parity check on constant outputs would prove nothing: the outputs vary across examples and
    classes, and both frameworks predict the same class for every real example."""
    pair = measurements.pair(model)
    batch = forward_batch(pair.recipe, "real", 128)
    flax_out, torch_out = flax_forward(pair, batch), torch_forward(pair, batch)
    assert np.std(torch_out, axis=0).min() > 1e-3 and np.std(torch_out, axis=1).min() > 1e-3
    assert np.array_equal(flax_out.argmax(1), torch_out.argmax(1))


@pytest.mark.parametrize("model", MODELS)
def test_normalisers_agree(model):
    """flax_impl.data.normalize and torch_ref.data.normalize turn the same pixels into bitwise the
    same floats: both look pixels up in cnn_parity.data.normalization_table. (Computed arithmetically
    inside jit they would not be: XLA rewrites x / 255 as x * (1/255), 1 ulp off torch's true
    division for 126 of the 256 pixel values, e.g. 228: 0.8941177 vs 0.89411765.)"""
    recipe = load_recipe(model)
    batch = make_batch(recipe, "uniform", 128, seed=1)
    flax_x, torch_x = np.asarray(batch.flax_x), batch.torch_x.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(flax_x, torch_x)
