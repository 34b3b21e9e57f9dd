"""6. Dropout semantics of fashion_cnn: p = 0.5 element-wise, survivors x 2, eval mode the identity,
in each framework on its own; and the mask sharing that the train-mode tests rely on is exact."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cnn_parity.differences import max_abs_diff
from flax_impl import train as flax_train
from parity_tests import bounds
from parity_tests.batches import Batch, batch_from_uint8, real_images
from parity_tests.dropout_masks import (flax_dropout_io, flax_dropout_mask, flax_train_forward, torch_dropout_io,
                                        torch_dropout_layer, torch_train_forward)
from parity_tests.outputs import flax_forward
from parity_tests.product_steps import flax_train_state, flax_train_step
from parity_tests.trajectory import TRAJECTORY_BATCH

N = 128  # Fashion-MNIST test images per draw (the shape the gradient tests compile)
DRAWS = 4  # independent draws pooled: 4 x 128 x 50 = 25,600 dropout decisions per framework


@pytest.fixture(scope="module")
def fashion(measurements):
    pair = measurements.pair("fashion_cnn")
    images, labels = real_images(pair.recipe, N, "test")
    return pair, batch_from_uint8(pair.recipe, images, labels)


def torch_draws(pair, batch, train=True):
    return [torch_dropout_io(pair.torch_model, batch.torch_x, train=train) for _ in range(DRAWS)]


def flax_draws(pair, batch, train=True, feed_ones=False):
    return [flax_dropout_io(pair.flax_model, pair.flax_params, batch.flax_x, jax.random.key(100 + i),
                                    train=train, feed_ones=feed_ones) for i in range(DRAWS)]


def drop_fraction(draws) -> tuple[float, int]:
    given = np.concatenate([g for g, _ in draws])
    out = np.concatenate([o for _, o in draws])
    active = given != 0  # a zero input (a ReLU zero) hides whether it was dropped
    return float(((out == 0) & active).sum() / active.sum()), int(active.sum())


def check_rate_and_scale(draws) -> None:
    fraction, n = drop_fraction(draws)
    assert n > 10_000
    sigma = np.sqrt(bounds.DROPOUT_RATE * (1 - bounds.DROPOUT_RATE) / n)
    assert abs(fraction - bounds.DROPOUT_RATE) <= bounds.DROPOUT_SIGMAS * sigma, f"drop fraction {fraction:.4f}"
    for given, out in draws:
        kept = (given != 0) & (out != 0)
        np.testing.assert_array_equal(out[kept], given[kept] * 2)  # survivors x 1/(1-p), exactly
        # Element-wise, not the source's Dropout2d (whole rows): rows are neither all kept nor all dropped.
        active = given != 0
        per_row = ((out == 0) & active).sum(1) / np.maximum(active.sum(1), 1)
        assert np.mean((per_row > 0) & (per_row < 1)) > 0.95
    # Different draws drop different units.
    assert not np.array_equal(draws[0][1] != 0, draws[1][1] != 0)


def test_torch_dropout_rate_scale_and_eval_identity(fashion):
    pair, batch = fashion
    assert torch_dropout_layer(pair.torch_model).p == bounds.DROPOUT_RATE
    check_rate_and_scale(torch_draws(pair, batch))
    for given, out in torch_draws(pair, batch, train=False)[:2]:
        np.testing.assert_array_equal(out, given)


def test_flax_dropout_rate_scale_and_eval_identity(fashion):
    pair, batch = fashion
    check_rate_and_scale(flax_draws(pair, batch))
    # Fed ones, the Dropout returns mask / keep_prob: exactly {0, 2}.
    for _, scaled in flax_draws(pair, batch, feed_ones=True):
        assert set(np.unique(scaled)) == {0.0, 2.0}
    # Eval mode: the identity, whatever the rng.
    for given, out in flax_draws(pair, batch, train=False)[:2]:
        np.testing.assert_array_equal(out, given)


def test_frameworks_drop_at_the_same_rate(fashion):
    """The two drop fractions are within binomial noise of each other (and of p, above)."""
    pair, batch = fashion
    (f1, n1), (f2, n2) = drop_fraction(torch_draws(pair, batch)), drop_fraction(flax_draws(pair, batch))
    assert abs(f1 - f2) <= bounds.DROPOUT_SIGMAS * np.sqrt(0.25 / n1 + 0.25 / n2)


def test_read_back_mask_is_the_one_train_step_draws(fashion):
    """dropout_masks.flax_dropout_mask reproduces the mask inside Flax's own train-mode apply bit for bit:
    replaying it through the injector gives the same outputs, and the same loss as train_step."""
    pair, batch = fashion
    rng = jax.random.key(11)
    mask = flax_dropout_mask(pair.flax_model, pair.flax_params, batch.flax_x, rng)
    native = flax_train_forward(pair, batch, rng)
    np.testing.assert_array_equal(native, flax_train_forward(pair, batch, jax.random.key(999), mask))
    # train_step itself, on a batch of the trajectory's size (whose step is compiled already).
    n = TRAJECTORY_BATCH
    part = Batch(batch.flax_x[:n], batch.torch_x[:n], batch.flax_y[:n], batch.torch_y[:n])
    _, metrics = flax_train_step(flax_train_state(pair.flax_model.apply, pair.flax_params, pair.recipe.optimizer),
                                 part.flax_batch, rng)
    small_mask = flax_dropout_mask(pair.flax_model, pair.flax_params, part.flax_x, rng)
    replayed = flax_train_forward(pair, part, jax.random.key(999), small_mask)
    replayed_loss = float(flax_train.cross_entropy(replayed, part.flax_y))
    assert abs(float(metrics["loss"]) - replayed_loss) <= bounds.LOSS_ABS


def test_injected_mask_gives_identical_train_mode_outputs(fashion):
    """With the shared mask, torch's train-mode output matches Flax's within the forward bound."""
    pair, batch = fashion
    rng = jax.random.key(12)
    mask = flax_dropout_mask(pair.flax_model, pair.flax_params, batch.flax_x, rng)
    flax_out = flax_train_forward(pair, batch, rng)
    assert max_abs_diff(flax_out, torch_train_forward(pair, batch, mask)) <= bounds.FORWARD_ABS
    assert max_abs_diff(flax_out, flax_forward(pair, batch)) > 0.1  # dropout really acted
