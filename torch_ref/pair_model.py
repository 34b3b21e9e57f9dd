"""The PyTorch side of a model pair of the user's own (a recipe's `[pair]`, cnn_parity/pairs.py): the
torch.nn.Module `PKG.MOD:ATTR` builds, its initial weights drawn from torch's generator as the trainer
seeds it. Its state_dict is the canonical form as it is (torch_ref/convert.py)."""

from __future__ import annotations

import torch

from cnn_parity.errors import UsageError
from cnn_parity.pairs import import_attr
from cnn_parity.recipes import Recipe


def build(recipe: Recipe) -> torch.nn.Module:
    target, flag = import_attr(recipe.pair.torch, "[pair] torch"), f"[pair] torch {recipe.pair.torch}"
    try:
        model = target() if callable(target) and not isinstance(target, torch.nn.Module) else target
    except Exception as e:  # noqa: BLE001 (the user's constructor failing is bad input)
        raise UsageError(f"{flag}: building the model raised {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{flag} gives a {type(model).__name__}, not a torch.nn.Module")
    return model
