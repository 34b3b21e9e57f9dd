"""Evaluate weights from either framework with PyTorch: `python -m torch_ref.evaluate --checkpoint PATH`."""

from __future__ import annotations

import sys

import numpy as np
import torch

from cnn_parity import evaluate_cli
from cnn_parity.recipe_data import recipe_split
from cnn_parity.recipes import Recipe
from cnn_parity.trainer import EvalResult
from torch_ref import data
from torch_ref import pair_model
from torch_ref.convert import load_canonical
from torch_ref.models import create_model
from torch_ref.train import evaluate_model


def evaluate_canonical(recipe: Recipe, arrays: dict[str, np.ndarray], data_dir: str | None = None,
                       pair=None) -> EvalResult:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = pair_model.build(recipe) if recipe.pair is not None else create_model(recipe.model, recipe.init)
    model = load_canonical(recipe.model, model, arrays).to(device)
    test = data.TensorBatches(recipe_split(recipe, "test", data_dir), recipe.eval_batch_size,
                              *recipe.normalization, device)
    return evaluate_model(model, test, device)


def main(argv=None) -> int:
    return evaluate_cli.run("torch", evaluate_canonical, argv)


if __name__ == "__main__":
    sys.exit(main())
