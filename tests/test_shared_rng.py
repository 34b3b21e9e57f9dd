"""The neutral generator behind paired runs (init_rng / shuffle_rng = "shared"): right distributions,
a pure function of its inputs, and independent streams."""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest

from cnn_parity import shared_rng
from cnn_parity.frameworks import FRAMEWORKS, command_module
from cnn_parity.recipes import INITS, MODELS, load_recipe
from cnn_parity.weights import check_canonical
from cnn_parity.workdir import read_metrics
from tests.helpers import check_init_statistics

METRICS = ("epoch", "steps", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


@pytest.mark.parametrize("scheme", INITS)
@pytest.mark.parametrize("model", MODELS)
def test_initial_weights_follow_the_init_scheme(model, scheme):
    weights = shared_rng.initial_weights(model, scheme, seed=0)
    check_canonical(model, weights)
    assert all(w.dtype == np.float32 for w in weights.values())
    check_init_statistics(model, scheme, weights)


def test_initial_weights_are_a_function_of_the_seed():
    first, again = (shared_rng.initial_weights("lenet", "torch", seed=3) for _ in range(2))
    other = shared_rng.initial_weights("lenet", "torch", seed=4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not any(np.array_equal(first[k], other[k]) for k in first)


def test_epoch_permutation_is_a_permutation_of_seed_and_epoch():
    order = shared_rng.epoch_permutation(seed=0, epoch=1, num_examples=60_000)
    assert np.array_equal(np.sort(order), np.arange(60_000))
    assert np.array_equal(order, shared_rng.epoch_permutation(0, 1, 60_000))
    assert not np.array_equal(order, shared_rng.epoch_permutation(0, 2, 60_000))
    assert not np.array_equal(order, shared_rng.epoch_permutation(1, 1, 60_000))


@pytest.mark.parametrize("key", ["init_rng", "shuffle_rng"])
def test_recipe_keys_default_to_the_frameworks_own_generators(key):
    assert getattr(load_recipe("lenet"), key) == "framework"
    assert getattr(load_recipe("lenet", overrides={key: "shared"}), key) == "shared"


@pytest.mark.slow
@pytest.mark.parametrize("module", [command_module(framework, "train") for framework in FRAMEWORKS])
@pytest.mark.parametrize("rng, stop", [("shared", 700), ("framework", 600)])
def test_run_resumes_exactly_across_an_epoch_boundary(module, rng, stop, tmp_path, data_dir):
    """Stopped mid-epoch 2 (step 700), or exactly at the end of epoch 1 (step 600, where a checkpoint
    must keep the next epoch's shuffling state), and resumed: bitwise what an uninterrupted run logs."""
    common = [sys.executable, "-m", module, "--model", "mlp", "--epochs", "2", "--data-dir", str(data_dir),
              "--set", f"init_rng={rng}", "--set", f"shuffle_rng={rng}"]
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run([*common, "--workdir", str(tmp_path / "whole")])
    run([*common, "--workdir", str(tmp_path / "cut"), "--checkpoint-every", "300", "--max-steps", str(stop)])
    run([*common, "--workdir", str(tmp_path / "cut"), "--checkpoint-every", "300", "--resume"])
    whole, cut = (read_metrics(tmp_path / name) for name in ("whole", "cut"))
    assert len(whole) == len(cut) == 2
    for a, b in zip(whole, cut):
        assert {k: a[k] for k in METRICS} == {k: b[k] for k in METRICS}
