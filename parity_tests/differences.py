"""How far apart two results are: max |Δ| of arrays, and of canonical weight dicts."""

from __future__ import annotations

import numpy as np

Canonical = dict[str, np.ndarray]  # weights (or gradients) by PyTorch state_dict name, in its layouts


def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def tree_max_abs_diff(a: Canonical, b: Canonical) -> float:
    if set(a) != set(b):
        raise AssertionError(f"names differ: {sorted(set(a) ^ set(b))}")
    return max(max_abs_diff(a[k], b[k]) for k in a)
