"""How far apart two results are: max |Δ| of arrays, and of canonical weight dicts. The one place the
project computes a maximum absolute difference (the parity suite, the checker, run comparisons)."""

from __future__ import annotations

import numpy as np

Canonical = dict[str, np.ndarray]  # weights (or gradients) by PyTorch state_dict name, in its layouts


def max_abs_diff(a, b, *, shape_mismatch: float | None = None) -> float:
    """max |a - b| in float64 (0 for empty arrays). Arrays of different shapes raise ValueError, or,
    where a caller reports them as a number (the checker: inf), give `shape_mismatch`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        if shape_mismatch is None:
            raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
        return shape_mismatch
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def tree_max_abs_diff(a: Canonical, b: Canonical) -> float:
    """The largest max |Δ| over dicts of arrays with the same names (0 for empty ones)."""
    if set(a) != set(b):
        raise ValueError(f"names differ: {sorted(set(a) ^ set(b))}")
    return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
