"""Check your own model: a torch module against its Flax (Linen, NNX or Hugging Face Flax) port,
layer by layer.

    from parity_check import check_pair
    report = check_pair(torch_model, flax_model, example_input)   # example_input in torch layout
    print(report.summary()); report.passed; report.to_json()

Made of pieces usable alone: torch_side / flax_side (capture every layer's inputs and outputs and the
data flow between layers; run one layer alone), kinds (layer kinds and their transfer rules),
mapping (infer or read the weight mapping; account for every tensor), compare (transfer, per-layer
comparison, localisation), bounds (calibrated bounds), causes and segments (configuration lint and
the probes that name a cause), training (running statistics, gradients, N-step training, optimisers
alone), report (the table and the JSON). The command line: `python -m parity_check --help`, which
imports neither framework before its arguments are checked: so neither does this package until one
of the names below is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"check_pair": "parity_check.check", "prepare": "parity_check.compare", "compare_layers": "parity_check.compare",
            "Report": "parity_check.report", "Mapping": "parity_check.mapping", "MappingError": "parity_check.mapping",
            "infer": "parity_check.mapping", "read_mapping": "parity_check.mapping"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'parity_check' has no attribute {name!r}")
