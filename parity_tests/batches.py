"""Inputs: real batches of a recipe's data set and random ones, as each framework sees them.

Each side normalises the same uint8 pixels with its own product `normalize`; a `Batch` holds both
views (Flax float NHWC, torch float NCHW) and the labels.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import torch

from cnn_parity import data as neutral_data
from cnn_parity.recipes import Recipe
from flax_impl import data as flax_data
from torch_ref import data as torch_data

_data_dir: str | None = None  # set_data_dir; None: cnn_parity.data's own search order


def default_data_dir() -> str | None:
    """Real MNIST's folder: $CNN_PARITY_DATA_DIR; None leaves the search to cnn_parity.data (cache,
    download)."""
    return os.environ.get("CNN_PARITY_DATA_DIR")


def set_data_dir(path: str | os.PathLike | None) -> None:
    """Where every later call finds the data sets (conftest.py and report.py set it once)."""
    global _data_dir
    _data_dir = None if path is None else os.fspath(path)


@functools.lru_cache(maxsize=None)
def _load(dataset: str, split: str, data_dir: str | None) -> neutral_data.Split:
    return neutral_data.load_split(dataset, split, data_dir)


def load_split(dataset: str, split: str) -> neutral_data.Split:
    """A whole split, uint8 images, loaded once per process."""
    return _load(dataset, split, _data_dir)


def real_images(recipe: Recipe, n: int, split: str = "train", start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images `start:start+n` (uint8 (n, 28, 28)) and labels (int64) of the recipe's data set."""
    s = load_split(recipe.dataset, split)
    return s.images[start:start + n], s.labels[start:start + n].astype(np.int64)


def random_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random uint8 pixels and labels: inputs no data set would produce."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


@dataclass(frozen=True)
class Batch:
    """One batch as each framework sees it: Flax float NHWC, torch float NCHW, integer labels."""

    flax_x: jax.Array
    torch_x: torch.Tensor
    flax_y: jax.Array
    torch_y: torch.Tensor

    @property
    def flax_batch(self) -> dict[str, jax.Array]:
        """The batch as flax_impl.train's functions take it."""
        return {"image": self.flax_x, "label": self.flax_y}

    def astype(self, dtype: str) -> "Batch":
        """float64: both sides get torch's normalised pixels, widened (bitwise the same as Flax's,
        test_forward.test_normalisers_agree), so a float64 run starts from identical inputs."""
        if dtype == "float32":
            return self
        x = self.torch_x.double()
        return Batch(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), x, self.flax_y, self.torch_y)


def batch_from_uint8(recipe: Recipe, images: np.ndarray, labels: np.ndarray) -> Batch:
    """Each side normalises the same uint8 pixels with its own `normalize` (the product's)."""
    mean, std = recipe.normalize_mean, recipe.normalize_std
    return Batch(flax_x=flax_data.normalize(jnp.asarray(images), mean, std),
                 torch_x=torch_data.normalize(torch.from_numpy(np.array(images)), mean, std),
                 flax_y=jnp.asarray(labels, jnp.int32), torch_y=torch.from_numpy(np.array(labels, np.int64)))


def batch_from_float(x_nchw: np.ndarray, labels: np.ndarray) -> Batch:
    """Arbitrary float inputs (e.g. Gaussian), bypassing the normalisers."""
    x = np.asarray(x_nchw, np.float32)
    return Batch(flax_x=jnp.asarray(x.transpose(0, 2, 3, 1)), torch_x=torch.from_numpy(x.copy()),
                 flax_y=jnp.asarray(labels, jnp.int32), torch_y=torch.from_numpy(np.array(labels, np.int64)))


def make_batch(recipe: Recipe, kind: str, n: int, seed: int = 0, start: int = 0) -> Batch:
    """kind: "real" (the recipe's data set, train split, from image `start`), "uniform" (random
    pixels), "gaussian" (N(0, 1) floats, not normalised)."""
    if kind == "real":
        return batch_from_uint8(recipe, *real_images(recipe, n, "train", start))
    if kind == "uniform":
        return batch_from_uint8(recipe, *random_images(n, seed))
    if kind == "gaussian":
        rng = np.random.default_rng(seed)
        return batch_from_float(rng.standard_normal((n, 1, 28, 28), np.float32), rng.integers(0, 10, n))
    raise ValueError(f"unknown batch kind {kind!r}")


def train_batches(recipe: Recipe, steps: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`steps` consecutive batches of the recipe's real training data (uint8): a batch order."""
    images, labels = real_images(recipe, steps * batch_size, "train", 0)
    return [(images[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size])
            for i in range(steps)]
