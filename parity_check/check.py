"""`check_pair`: the whole check of a torch model against its Flax port: weights transferred, every
tensor accounted for, every layer compared, the first divergence localised with its cause; then, on
a passing forward, the running statistics, gradients and training (training.py)."""

from __future__ import annotations

import numpy as np

from cnn_parity import provenance
from cnn_parity.errors import UsageError
from parity_check import causes, training
from parity_check.bounds import FLOOR_MULTIPLE, MIN_RELATIVE
from parity_check.compare import compare_layers, prepare
from parity_check.report import Report, finite
from parity_check.torch_side import COUNTERS
from parity_check.transfer_table import gather_table
from parity_tests import bounds as fixed_bounds

VERSIONED = ("numpy", "jax", "jaxlib", "flax", "optax", "torch", "torchvision", "transformers")


def nonfinite_notes(pair) -> list[str]:
    """Where nan or inf first appear, on each side (in the torch side's layer order)."""
    notes = []
    for side, caps in (("torch", pair.torch_caps), ("Flax", pair.flax_caps)):
        first = next((c.name for c in caps.values() if any(not np.isfinite(o).all() for o in c.outputs
                                                           if o.dtype.kind == "f")), None)
        if first is not None:
            notes.append(f"the {side} side computes nan or inf values from layer {first or '(model)'} on")
    return notes


def not_transferred(pair) -> dict[str, list[str]]:
    """The tensors of mapped layers that have no counterpart (a bias on one side only), and the counters."""
    return {"torch": [f"{m.torch_name}.{n}" for m in pair.mapping.layers if m.plan for n in m.plan.torch_only],
            "flax": [f"{m.flax_path}/{k}" for m in pair.mapping.layers if m.plan for k in m.plan.flax_only],
            "torch_counters": [k for k in pair.torch.model.state_dict() if k.rsplit(".", 1)[-1] in COUNTERS]}


def check_pair(torch_model, flax_model, example_input, *, variables=None, direction: str = "torch_to_flax",
               mapping: str | None = None, bounds: str = "calibrated", flax_layout: str = "channels_last",
               train: bool = False, grads: bool = False, train_steps: int = 0, torch_optimizer: str | None = None,
               optax_optimizer: str | None = None, torch_weights: dict[str, np.ndarray] | None = None,
               seed: int | None = None, transfer_table: bool = False) -> Report:
    """Check a torch module against a Flax Linen module (with `variables`, or initialised here), NNX
    module or Hugging Face Flax model on `example_input` (torch layout: an array, a tuple of
    positional inputs or a dict of keyword inputs; float inputs of rank >= 3 go to Flax channels-last
    unless flax_layout="same"). direction: which side's weights both use ("none": each keeps its own,
    to verify a conversion made elsewhere); `torch_weights` (canonical: torch's state_dict names and
    layouts) replace the torch model's first; `transfer_table`: also the checked transfer as a gather table
    (transfer_table.gather_table), for a pair that agrees. Nothing passed in is modified."""
    pair = prepare(torch_model, flax_model, example_input, variables, direction, mapping, flax_layout, train, torch_weights)
    if not pair.torch.state() and not pair.flax.inventory():
        raise UsageError("neither model holds any weights: there is nothing to transfer or compare (the checker "
                         "checks a port's weights and the layers that use them)")
    layers, output = compare_layers(pair, bounds)
    findings = causes.lint(pair)
    first = next((r for r in layers if r.over), None)
    divergence = None
    if first is not None:
        divergence = {"torch_name": first.torch_name, "flax_path": first.flax_path, "kind": "forward",
                      "status": first.status, "max_abs_diff": finite(max(first.max_abs_diff, first.isolated_max_abs_diff))}
        divergence |= causes.diagnose(pair, first, findings)
    elif not output["max_abs_diff"] <= output["bound"] and all(r.compared for r in layers):
        divergence = {"torch_name": "(output)", "flax_path": None, "kind": "forward", "status": "inherited",
                      "max_abs_diff": finite(output["max_abs_diff"])}
        divergence |= causes.diagnose_output(pair, findings, output["bound"])
    else:
        divergence = causes.parameters_only(pair, findings)
    settings = {"direction": direction, "train": train, "flax_layout": flax_layout, "seed": seed,
                "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in pair.inputs.items()},
                "bounds": (f"calibrated: {FLOOR_MULTIPLE:g} x each layer's float32-vs-float64 rounding, "
                           f"at least {MIN_RELATIVE:.1e} x its largest |output|") if bounds == "calibrated"
                else f"fixed: {fixed_bounds.FORWARD_ABS:g}",
                "floor_multiple": FLOOR_MULTIPLE if bounds == "calibrated" else None,
                "min_relative": MIN_RELATIVE if bounds == "calibrated" else None}
    report = Report(divergence is None, divergence, layers, pair.mapping, findings, output, settings,
                    notes=pair.notes + pair.mapping.notes + nonfinite_notes(pair), versions=provenance.versions(VERSIONED),
                    not_transferred=not_transferred(pair),
                    canonical_weights=pair.torch.state())
    if divergence is None:
        training.extend(report, pair, bounds, grads, train_steps, torch_optimizer, optax_optimizer)
    if transfer_table and report.passed and direction == "torch_to_flax":
        report.transfer_table = gather_table(pair)
    return report
