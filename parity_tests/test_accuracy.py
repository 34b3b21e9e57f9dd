"""8. Accuracy parity with independent initialisations: each framework trains from its own RNG
(init, shuffling, dropout) for a short budget on real data; the two test accuracies must agree
within a bound measured over several seeds (bounds.ACCURACY, with the measurements)."""

from __future__ import annotations

import pytest

from cnn_parity.recipes import MODELS
from parity_tests import bounds
from parity_tests.accuracy import independent_accuracy
from parity_tests.pairs import APIS


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("api", APIS)
def test_accuracy_parity_with_independent_inits(api, model):
    """The bound holds for either Flax API: NNX draws its own initial weights (other draws of the same
    distributions) and then trains bit for bit as Linen does (test_nnx_vs_linen.py)."""
    budget = bounds.ACCURACY[model]
    flax_acc = independent_accuracy("flax", model, seed=0, steps=budget.steps, api=api)
    torch_acc = independent_accuracy("torch", model, seed=0, steps=budget.steps)
    assert budget.learned(flax_acc, torch_acc), f"did not learn: flax {flax_acc:.3f}, torch {torch_acc:.3f}"
    assert budget.agree(flax_acc, torch_acc), f"flax {flax_acc:.3f} vs torch {torch_acc:.3f}"
