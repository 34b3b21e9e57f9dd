"""The evaluation command line both frameworks share (`python -m flax_impl.evaluate`, `... torch_ref.evaluate`).

It accepts weights written by *either* framework — a checkpoint folder, a workdir (its newest
checkpoint) or a `.safetensors` export — since all of them hold the canonical weights; each framework
converts from those and evaluates on the recipe's whole test split.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, Sequence

from cnn_parity import checkpoints, pairs
from cnn_parity.commands import OneLineParser, report_errors
from cnn_parity.errors import UsageError
from cnn_parity.files import strict_json
from cnn_parity.frameworks import command_module
from cnn_parity.recipes import load_recipe, recipe_from_dict
from cnn_parity.trainer import EvalResult

# (recipe, canonical weights, data dir, **the values of the framework's own flags) -> result
EvaluateFn = Callable[..., EvalResult]


def run(framework: str, evaluate: EvaluateFn, argv: Sequence[str] | None = None,
        add_flags: Callable[[argparse.ArgumentParser], dict[str, Any]] | None = None) -> int:
    """Parse `argv`, evaluate, print, and return the exit code. `add_flags` adds a framework's own
    flags and returns their defaults; their values reach `evaluate` as keywords and the report as its
    `options`."""
    parser = OneLineParser(prog=f"python -m {command_module(framework, 'evaluate')}",
                     description=f"Evaluate trained weights (from either framework) with {framework}.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a checkpoint folder, a workdir (newest checkpoint) or a .safetensors export")
    parser.add_argument("--data-dir", help="folder holding <dataset>/ (see docs/data.md)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    if add_flags is not None:
        parser.set_defaults(**add_flags(parser))
    args = parser.parse_args(argv)
    options = {name: value for name, value in vars(args).items() if name not in ("checkpoint", "data_dir", "json")}
    return report_errors(parser.prog, lambda: _evaluate_and_print(framework, evaluate, args, options))


def _evaluate_and_print(framework: str, evaluate: EvaluateFn, args, options: dict[str, Any]) -> int:
    model, arrays, info = checkpoints.load_weights(args.checkpoint)
    recipe = recipe_from_dict(info["recipe"], f"{info['path']} recipe") if info["recipe"] else load_recipe(model)
    if recipe.model != model:
        raise UsageError(f"{info['path']} holds {model} weights but a {recipe.model} recipe")
    if recipe.pair is not None:  # a pair of the user's own: checked before its weights are used
        options["pair"] = pairs.check_recipe(recipe, args.data_dir)
    result = evaluate(recipe, arrays, args.data_dir, **options)
    options.pop("pair", None)
    report = {"model": model, "dataset": recipe.dataset, "trained_with": info["framework"],
              "evaluated_with": framework, "options": options, "test_accuracy": result.accuracy, "test_loss": result.loss,
              "examples": result.examples, "step": info["step"], "checkpoint": info["path"]}
    if not (math.isfinite(result.loss) and math.isfinite(result.accuracy)):
        print(f"warning: the test loss of these weights is {result.loss} (not finite)", file=sys.stderr)
    if args.json:
        print(strict_json(report))
    else:
        shown = "".join(f" ({name} {value})" for name, value in options.items())
        print(f"{model} trained with {info['framework']}, evaluated with {framework}{shown} on {recipe.dataset} test "
              f"({result.examples} images): accuracy {100 * result.accuracy:.2f}%, loss {result.loss:.4f}")
    return 0
