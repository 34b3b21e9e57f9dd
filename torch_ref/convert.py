"""PyTorch state_dict ↔ canonical weights (cnn_parity/weights.py).

The canonical form *is* PyTorch's naming and layout, so this side only moves tensors to and from
numpy; the Flax side does the transposes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnn_parity.weights import canonical_shapes, check_canonical


def state_dict_to_canonical(model_name: str, model: nn.Module) -> dict[str, np.ndarray]:
    state = model.state_dict()
    return {name: state[name].detach().cpu().numpy().copy() for name in canonical_shapes(model_name)}


def load_canonical(model_name: str, model: nn.Module, arrays: dict[str, np.ndarray]) -> nn.Module:
    """Copy canonical weights into `model` (in place, on the model's device); returns `model`."""
    check_canonical(model_name, arrays)
    model.load_state_dict({name: torch.from_numpy(np.array(value, dtype=np.float32)) for name, value in arrays.items()})
    return model
