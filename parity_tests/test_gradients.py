"""3. Gradients of the recipe's loss w.r.t. every parameter agree to 1e-5 (absolute), all five models."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_parity.recipes import MODELS
from cnn_parity.weights import canonical_shapes
from parity_tests import bounds
from parity_tests.gradients import grad_cases

CASES = [(m, kind, train) for m in MODELS for kind, train in grad_cases(m)]


@pytest.mark.parametrize("model,kind,train", CASES)
def test_gradient_parity(model, kind, train, measurements):
    result = measurements.grads(model, kind, train)
    assert result.loss_diff <= bounds.LOSS_ABS, f"loss {result.flax_loss} vs {result.torch_loss}"
    diffs = result.abs_diffs()
    assert set(diffs) == set(canonical_shapes(model))
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= bounds.GRAD_ABS, f"{model} {worst}: max |Δ| {diffs[worst]:.2e} (relative {result.rel_diffs()[worst]:.2e})"


@pytest.mark.parametrize("model", MODELS)
def test_gradients_are_not_degenerate(model, measurements):
    """Every parameter tensor gets a non-zero gradient, so a match is not two zeros agreeing."""
    result = measurements.grads(model)
    for name, g in result.torch_grads.items():
        assert np.abs(g).max() > 1e-6, name
