"""Evaluate weights from either framework with Flax: `python -m flax_impl.evaluate --checkpoint PATH
[--api linen|nnx]`."""

from __future__ import annotations

import sys

import jax
import numpy as np

from cnn_parity import evaluate_cli
from cnn_parity.pairs import CheckedPair
from cnn_parity.recipes import Recipe
from cnn_parity.trainer import EvalResult
from flax_impl import compilation_cache, data, distributed, kernels, pair_model
from flax_impl.convert import params_from_canonical
from flax_impl.train import add_api_flag, make_evaluator


def evaluate_canonical(recipe: Recipe, arrays: dict[str, np.ndarray], data_dir: str | None = None,
                       api: str = "linen", pair: CheckedPair | None = None) -> EvalResult:
    """`pair`: a recipe's own pair as checked (its transfer table converts the weights)."""
    compilation_cache.enable()
    mesh = distributed.make_mesh()
    replicated = distributed.replicated(mesh)
    test = data.to_device(data.load_split(recipe, "test", "device", data_dir), replicated)
    if recipe.pair is None:
        params, apply_fn = params_from_canonical(recipe.model, arrays), None
        # As the trainer evaluates: XLA's forward, compiled as the default CPU tiers compile it
        # (YNNPACK's convolutions off, flax_impl/kernels.py); a pair's model with no options, as it trains.
        options = kernels.supported_options(kernels.NO_YNN_CONVOLUTIONS) if jax.default_backend() == "cpu" else {}
    else:
        example = np.asarray(data.normalize(test.images[:1], *recipe.normalization))
        model, template = pair_model.init(recipe, jax.random.key(0), example)
        params, apply_fn = pair_model.from_canonical(model, template, arrays, pair.transfer), model.apply
        options = {}
    return make_evaluator(recipe, mesh, api, apply_fn, options or None)(jax.device_put(params, replicated), test)


def main(argv=None) -> int:
    return evaluate_cli.run("flax", evaluate_canonical, argv, add_flags=add_api_flag)


if __name__ == "__main__":
    sys.exit(main())
