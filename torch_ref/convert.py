"""PyTorch state_dict ↔ canonical weights (cnn_parity/weights.py).

The canonical form *is* PyTorch's naming and layout, so this side only moves tensors to and from
numpy; the Flax side does the transposes. For a pair of the user's own, the canonical weights are every
floating-point tensor of its state_dict (BatchNorm's counters left out, as the model checker does).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnn_parity.errors import UsageError
from cnn_parity.weights import LAYERS, canonical_shapes, check_canonical


def state_dict_to_canonical(model_name: str, model: nn.Module) -> dict[str, np.ndarray]:
    state = model.state_dict()
    names = canonical_shapes(model_name) if model_name in LAYERS else \
        [name for name, tensor in state.items() if tensor.is_floating_point()]
    return {name: state[name].detach().cpu().numpy().copy() for name in names}


def load_canonical(model_name: str, model: nn.Module, arrays: dict[str, np.ndarray]) -> nn.Module:
    """Copy canonical weights into `model` (in place, on the model's device); returns `model`."""
    if model_name in LAYERS:
        check_canonical(model_name, arrays)
    expected = set(state_dict_to_canonical(model_name, model))
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise UsageError(f"the weights are not a {model_name}: missing {missing[:3] or 'nothing'}, unexpected "
                         f"{extra[:3] or 'nothing'}")
    model.load_state_dict({name: torch.from_numpy(np.array(value, dtype=np.float32)) for name, value in arrays.items()},
                          strict=False)
    return model
