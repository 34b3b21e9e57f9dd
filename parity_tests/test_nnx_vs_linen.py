"""10. NNX against Linen, bit for bit: each model's NNX version (flax_impl/models_nnx.py), given the
Linen version's weights, batches and dropout keys, computes identical eval- and train-mode outputs
(the same dropout masks), losses and gradients, and follows the identical 100-step trajectory through
the product's train_step. So every Linen result (parity against PyTorch above, the reproduction and
equivalence studies) holds for the NNX models too; the NNX-against-PyTorch cases of tests 1-9 run
the same checks directly (among them that fashion_cnn's dropout really acts, test_dropout.py)."""

from __future__ import annotations

import pytest

from cnn_parity.recipes import MODELS
from parity_tests import bounds
from parity_tests.apis import measure_apis
from parity_tests.trajectory import TRAJECTORY_STEPS


@pytest.mark.parametrize("model", MODELS)
def test_nnx_computes_and_learns_bitwise_what_linen_does(model):
    result = measure_apis(model)
    assert len(result.trajectory_losses) == TRAJECTORY_STEPS
    assert result.worst <= bounds.NNX_VS_LINEN_ABS, result

