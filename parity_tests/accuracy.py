"""Accuracy with independent initialisations (test 8): each framework trains from its own RNG for
initialisation, shuffling and dropout, through its product's training step, and is scored on test images."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from cnn_parity.recipes import Recipe, load_recipe
from flax_impl import data as flax_data
from parity_tests.batches import load_split, real_images
from parity_tests.outputs import jitted_flax_forward
from parity_tests.pairs import flax_init
from parity_tests.product_steps import flax_train_state, flax_train_step
from parity_tests.trajectory import TRAJECTORY_BATCH
from torch_ref import data as torch_data
from torch_ref import models as torch_models
from torch_ref import train as torch_train

ACCURACY_TEST_IMAGES = 1024  # scored on the first 1024 images of the test split


def _accuracy(predict: Callable[[np.ndarray], np.ndarray], recipe: Recipe, n_test: int) -> float:
    images, labels = real_images(recipe, n_test, "test", 0)
    correct = 0
    for start in range(0, n_test, 128):  # chunks of 128: the forward tests' compiled shape
        correct += int((predict(images[start:start + 128]).argmax(1) == labels[start:start + 128]).sum())
    return correct / n_test


def _run_order(permutation: np.ndarray, n: int) -> np.ndarray:
    """The first `n` example indices of a run whose epochs all follow `permutation`."""
    return np.concatenate([permutation] * (n // len(permutation) + 1))[:n]


def independent_accuracy(framework: str, name: str, seed: int, steps: int, batch_size: int = TRAJECTORY_BATCH,
                         n_test: int = ACCURACY_TEST_IMAGES, api: str = "linen") -> float:
    """Test accuracy (first `n_test` test images) after `steps` steps of the recipe's optimiser,
    from the framework's own initialisation, shuffling and dropout, all seeded by `seed`. Each side
    normalises its whole run's images at once with its own `normalize` (per-step Python overhead,
    not compute, dominates these small steps on CPU). `api`: the Flax side's models, "linen" or "nnx"."""
    recipe = load_recipe(name, overrides={"seed": seed})
    train = load_split(recipe.dataset, "train")
    mean, std = recipe.normalize_mean, recipe.normalize_std
    n = steps * batch_size
    if framework == "flax":
        init_key, shuffle_key, dropout_key = jax.random.split(jax.random.key(seed), 3)
        model, params = flax_init(name, init_key, recipe.init, api)
        state = flax_train_state(model.apply, params, recipe.optimizer)
        order = _run_order(np.asarray(jax.random.permutation(shuffle_key, len(train.labels))), n)
        images = flax_data.normalize(jnp.asarray(train.images[order]), mean, std)
        labels = jnp.asarray(train.labels[order], jnp.int32)
        for i in range(steps):
            part = slice(i * batch_size, (i + 1) * batch_size)
            state, _ = flax_train_step(state, {"image": images[part], "label": labels[part]},
                                       jax.random.fold_in(dropout_key, i))
        forward = jitted_flax_forward(model)
        return _accuracy(lambda im: np.asarray(forward(state.params, flax_data.normalize(jnp.asarray(im), mean, std))),
                         recipe, n_test)
    torch.manual_seed(seed)
    module = torch_models.create_model(name, recipe.init)
    opt = torch_train.make_optimizer(module.parameters(), recipe.optimizer)
    order = _run_order(torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed)).numpy(), n)
    images = torch_data.normalize(torch.from_numpy(train.images[order]), mean, std)
    labels = torch.from_numpy(train.labels[order].astype(np.int64))
    module.train()
    for i in range(steps):
        part = slice(i * batch_size, (i + 1) * batch_size)
        torch_train.train_step(module, opt, images[part], labels[part])
    module.eval()

    def predict(im):
        with torch.no_grad():
            return module(torch_data.normalize(torch.from_numpy(np.array(im)), mean, std)).numpy()

    return _accuracy(predict, recipe, n_test)
