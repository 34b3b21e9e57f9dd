"""Flax input pipelines: each split lives on the device as uint8; batches are gathered on the device.

`device` (default): the verified IDX files (cnn_parity.data). `tfds`: the same splits read through
tensorflow-datasets' `tfds.data_source` (extra `[tfds]`; needs a prepared TFDS data dir).
Shuffling is a fresh permutation per epoch, drawn from an explicit key.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnn_parity import data
from cnn_parity.errors import DataError, UsageError

PIPELINES = ("device", "tfds")


class DeviceSplit(NamedTuple):
    images: jax.Array  # uint8 (N, 28, 28)
    labels: jax.Array  # int32 (N,)


def load_split(dataset: str, split: str, pipeline: str, data_dir: str | None = None) -> data.Split:
    if pipeline == "tfds":
        return _tfds_split(dataset, split, data_dir)
    return data.load_split(dataset, split, data_dir)


def _tfds_split(dataset: str, split: str, data_dir: str | None) -> data.Split:
    try:
        import tensorflow_datasets as tfds
        from absl import logging as absl_logging
    except ImportError:
        raise UsageError("--pipeline tfds needs tensorflow-datasets: pip install -e '.[tfds]'") from None
    absl_logging.set_verbosity(absl_logging.ERROR)  # tfds warns about missing metadata on every lookup
    try:
        # download=False: preparing a TFDS data set needs the network; say so instead of hanging.
        source = tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
        records = [source[i] for i in range(len(source))]
    except Exception as e:  # tfds raises several unrelated types for "not prepared"
        reason = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0].rstrip(":. ")
        raise DataError(f"tfds could not read {dataset}/{split} (data dir {data_dir or 'default'}): {reason}; "
                        f"prepare it with `tfds build {dataset}` or use --pipeline device") from None
    images = np.stack([np.asarray(r["image"], np.uint8).reshape(data.IMAGE_SHAPE) for r in records])
    labels = np.asarray([r["label"] for r in records], np.uint8)
    return data.Split(images, labels)


def to_device(split: data.Split, sharding: jax.sharding.Sharding | None = None) -> DeviceSplit:
    """The split on the device(s): `sharding` is a replicated one when training on several."""
    return DeviceSplit(jax.device_put(split.images, sharding), jax.device_put(split.labels.astype(np.int32), sharding))


def normalize(images: jax.Array, mean: float, std: float) -> jax.Array:
    """uint8 (N, 28, 28) → float32 NHWC, bitwise as torchvision's ToTensor then Normalize(mean, std)."""
    return jnp.asarray(data.normalization_table(mean, std))[images][..., None]


def epoch_permutation(key: jax.Array, epoch: int, num_examples: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
