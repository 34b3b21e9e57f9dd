"""7. Loss: fashion_cnn outputs log-probabilities and its loss is cross-entropy applied to them,
which equals NLL on the log-probabilities, in both frameworks; and the two frameworks' recipe
losses (flax_impl.train.cross_entropy, torch_ref.train.cross_entropy) agree on identical outputs."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnn_parity.differences import max_abs_diff
from cnn_parity.recipes import MODELS
from flax_impl import train as flax_train
from parity_tests import bounds
from parity_tests.outputs import flax_forward, forward_batch, torch_forward
from torch_ref import train as torch_train


@pytest.fixture(scope="module")
def fashion_outputs(measurements):
    pair = measurements.pair("fashion_cnn")
    batch = forward_batch(pair.recipe, "real", 128)
    return batch, flax_forward(pair, batch), torch_forward(pair, batch)


def test_fashion_outputs_are_log_probabilities(fashion_outputs):
    _, flax_out, torch_out = fashion_outputs
    for out in (flax_out, torch_out):
        assert (out <= 0).all()
        np.testing.assert_allclose(np.exp(out.astype(np.float64)).sum(1), 1.0, atol=1e-6)


def test_cross_entropy_on_log_probs_is_nll_in_each_framework(fashion_outputs):
    batch, flax_out, torch_out = fashion_outputs
    y = batch.torch_y.numpy()
    flax_ce = float(flax_train.cross_entropy(jnp.asarray(flax_out), batch.flax_y))
    flax_nll = float(-jnp.mean(jnp.take_along_axis(jnp.asarray(flax_out), batch.flax_y[:, None], 1)))
    torch_ce = torch_train.cross_entropy(torch.from_numpy(torch_out), batch.torch_y).item()
    torch_nll = F.nll_loss(torch.from_numpy(torch_out), batch.torch_y).item()
    reference = -np.mean(torch_out.astype(np.float64)[np.arange(len(y)), y])
    assert abs(flax_ce - flax_nll) <= bounds.LOSS_ABS
    assert abs(torch_ce - torch_nll) <= bounds.LOSS_ABS
    assert abs(flax_ce - torch_ce) <= bounds.LOSS_ABS
    assert abs(torch_nll - reference) <= bounds.LOSS_ABS


def test_log_softmax_is_idempotent_in_both(fashion_outputs):
    _, flax_out, torch_out = fashion_outputs
    assert max_abs_diff(np.asarray(jax_log_softmax(flax_out)), flax_out) <= bounds.LOSS_ABS
    assert max_abs_diff(F.log_softmax(torch.from_numpy(torch_out), 1).numpy(), torch_out) <= bounds.LOSS_ABS


def jax_log_softmax(x):
    import jax

    return jax.nn.log_softmax(jnp.asarray(x))


@pytest.mark.parametrize("model", MODELS)
def test_recipe_losses_agree_on_identical_outputs(model, measurements):
    """Same output array into both products' losses: flax_impl.train.cross_entropy vs torch_ref.train.cross_entropy."""
    pair = measurements.pair(model)
    batch = forward_batch(pair.recipe, "real", 128)
    outputs = torch_forward(pair, batch)
    flax_loss = float(flax_train.cross_entropy(jnp.asarray(outputs), batch.flax_y))
    torch_loss = torch_train.cross_entropy(torch.from_numpy(outputs), batch.torch_y).item()
    assert abs(flax_loss - torch_loss) <= bounds.LOSS_ABS
