"""Check your own model: a torch module against its Flax (Linen or NNX) port, layer by layer.

    from parity_check import check_pair
    report = check_pair(torch_model, flax_model, example_input)   # example_input in torch layout
    print(report.summary()); report.passed; report.to_json()

Made of pieces usable alone: sides (capture every layer's input and output; run one layer alone),
mapping (infer or read the weight mapping; transfer weights either way), compare (per-layer
comparison, calibrated bounds, localisation), causes (configuration lint and cause probes),
training (running statistics, gradients, N-step training, optimisers alone). The command line:
`python -m parity_check --help`. Examples and planted mistakes: examples.py.
"""

from parity_check.check import check_pair
from parity_check.compare import Report, compare_layers, prepare
from parity_check.mapping import Mapping, MappingError, infer, read_mapping

__all__ = ["check_pair", "prepare", "compare_layers", "Report", "Mapping", "MappingError", "infer", "read_mapping"]
