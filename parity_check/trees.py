"""Nested call arguments and results (tuples, lists, dicts, model-output dataclasses) as flat lists of
arrays with their paths, and back: what both sides use to capture a layer's inputs and outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


def leaves(tree, is_leaf: Callable[[Any], bool], path: str = "") -> list[tuple[str, Any]]:
    """(path, leaf) in order: sequences by index, mappings (dicts, model outputs) by key; None and
    anything else that is not a leaf is skipped."""
    if is_leaf(tree):
        return [(path, tree)]
    join = (lambda k: f"{path}.{k}" if path else str(k))
    if isinstance(tree, dict) or (hasattr(tree, "keys") and hasattr(tree, "__getitem__") and not isinstance(tree, type)):
        return [item for k in tree.keys() for item in leaves(tree[k], is_leaf, join(k))]
    if isinstance(tree, (tuple, list)):
        return [item for i, v in enumerate(tree) for item in leaves(v, is_leaf, join(i))]
    return []


def replace(tree, is_leaf: Callable[[Any], bool], new: Callable[[Any], Any]):
    """The same structure with every leaf `x` replaced by `new(x)` (plain tuples, lists and dicts)."""
    if is_leaf(tree):
        return new(tree)
    if isinstance(tree, dict):
        return {k: replace(v, is_leaf, new) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)) and not hasattr(tree, "_fields"):
        return type(tree)(replace(v, is_leaf, new) for v in tree)
    return tree


@dataclass
class Capture:
    """One layer's first call: its name (torch) or path (Flax), kind, every array among its arguments
    and results (with their paths: '0', 'mask', '1.0'), the call's other keyword arguments, and the
    layers (or model inputs, 'input:NAME') its array arguments were computed from."""

    name: str
    kind: str
    module: Any
    inputs: list[np.ndarray]
    input_names: list[str]
    outputs: list[np.ndarray]
    output_names: list[str]
    settings: dict = field(default_factory=dict)
    call: Any = None  # (args, kwargs) with arrays replaced by their index in `inputs`
    parents: frozenset = frozenset()
    primary: int = 0  # which output is the layer's result (a recurrent layer's sequence)

    @property
    def input(self) -> np.ndarray:
        return self.inputs[0] if self.inputs else np.zeros((0,))

    @property
    def output(self) -> np.ndarray:
        return self.outputs[self.primary] if self.outputs else np.zeros((0,))


class Slot:
    """A placeholder for the array at `inputs[index]` in a recorded call."""

    def __init__(self, index: int):
        self.index = index


def template(args: tuple, kwargs: dict, is_leaf: Callable[[Any], bool]) -> tuple[Any, list]:
    """((args, kwargs) with each array replaced by a Slot, the arrays in order)."""
    found = []

    def slot(x):
        found.append(x)
        return Slot(len(found) - 1)
    return replace((tuple(args), dict(kwargs)), is_leaf, slot), found


def fill(call, arrays: list) -> tuple[tuple, dict]:
    """The recorded (args, kwargs) with each Slot replaced by `arrays[slot.index]`."""
    args, kwargs = replace(call, lambda x: isinstance(x, Slot), lambda s: arrays[s.index])
    return tuple(args), kwargs
