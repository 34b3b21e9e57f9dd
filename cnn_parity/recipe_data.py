"""The data a recipe trains on: a built-in IDX data set (cnn_parity/data.py), a .npz file, or a
prepared TFDS data set of one's own (cnn_parity/tfds_data.py)."""

from __future__ import annotations

import os

from cnn_parity import data
from cnn_parity.errors import DataError


def recipe_split(recipe, split: str, data_dir: str | os.PathLike | None = None) -> data.Split:
    """One split of a recipe's data: its IDX data set, its .npz file, or its prepared TFDS data set (the
    last two normalised here if their images are floats)."""
    if recipe.dataset in data.IDX_DATASETS:  # sizes known in advance: the recipe checked its batch sizes
        return data.load_split(recipe.dataset, split, data_dir)
    if recipe.dataset == "npz":
        loaded = data.load_npz(recipe.data_file, split, *recipe.normalization)
    else:
        from cnn_parity import tfds_data  # tensorflow-datasets is an optional extra

        images, labels = tfds_data.load_named(recipe.tfds_name, split, recipe.tfds_dir or None)
        loaded = data.checked_split(images, labels, recipe.data_name, ("image", "label"), *recipe.normalization)
    if split == "train" and recipe.drop_last and recipe.batch_size > len(loaded.labels):
        raise DataError(f"batch_size {recipe.batch_size} is larger than the train split of {recipe.data_name} "
                        f"({len(loaded.labels):,} examples): with drop_last no batch would be trained")
    return loaded
