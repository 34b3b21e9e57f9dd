"""Flax input pipelines: each split lives on the device as uint8; batches are gathered on the device.

`device` (default): the verified IDX files (cnn_parity.data). `tfds`: the same examples read through
tensorflow-datasets' `tfds.data_source` (extra `[tfds]`) from a TFDS data dir (`--data-dir`, default the
per-user cache's), prepared there from the verified IDX files on first use (cnn_parity/tfds_data.py).
Shuffling is a fresh permutation per epoch, drawn from an explicit key.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnn_parity import data, tfds_data
from cnn_parity.recipe_data import recipe_split

PIPELINES = ("device", "tfds")


class DeviceSplit(NamedTuple):
    images: jax.Array  # uint8 (N, H, W[, C]) pixels, or float32 (N, H, W, C) normalised
    labels: jax.Array  # int32 (N,)


def load_split(recipe, split: str, pipeline: str, data_dir: str | None = None) -> data.Split:
    if pipeline == "tfds":  # data_dir: the TFDS data dir
        return tfds_data.load_or_prepare_split(recipe.dataset, split, data_dir)
    return recipe_split(recipe, split, data_dir)


def to_device(split: data.Split, sharding: jax.sharding.Sharding | None = None) -> DeviceSplit:
    """The split on the device(s): `sharding` is a replicated one when training on several."""
    return DeviceSplit(jax.device_put(split.images, sharding), jax.device_put(split.labels.astype(np.int32), sharding))


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 (N, H, W[, C]) → float32 NHWC, bitwise as torchvision's ToTensor then Normalize(mean, std)
    (a float per channel, or one); float images, normalised when loaded, as they are."""
    return data.channels_last_inputs(images, jnp.asarray(data.normalization_table(mean, std)), jnp)


def epoch_permutation(key: jax.Array, epoch: int, num_examples: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
