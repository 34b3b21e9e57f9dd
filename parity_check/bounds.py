"""The checker's per-layer bounds: calibrated against the torch model's own float32 rounding (the same
model in float64 on the same input), or the parity suite's fixed ones."""

from __future__ import annotations

import math

import numpy as np

from cnn_parity.differences import max_abs_diff

# Two float32 implementations of one layer each differ from float64 by about the floor, in
# different directions, so their difference is up to ~2x the floor: measured over the example pairs
# and the five models (NNX, eval mode, Gaussian inputs), the largest clean layer's difference was
# 2.2x its floor (mlp's fc2). 10x leaves room; the planted mistakes exceed it by orders of magnitude.
FLOOR_MULTIPLE = 10.0
# Where float32 is exact on one side (a layer that only copies or scales by powers of two) the
# floor is 0 but the other framework may still round: 4 float32 ulps of the largest output.
MIN_RELATIVE = 4 * 2.0 ** -23


def diff(a, b) -> float:
    """max |a - b| in float64; inf when the shapes differ (reported, not raised)."""
    return max_abs_diff(a, b, shape_mismatch=math.inf)


def calibrated_bound(float32, float64) -> tuple[float, float]:
    """(bound, floor) for a quantity whose float32 and float64 values on the torch side are given
    (over its finite values)."""
    a, b = np.asarray(float32, np.float64), np.asarray(float64, np.float64)
    if a.shape != b.shape:
        return math.inf, math.inf
    both = np.isfinite(a) & np.isfinite(b)
    floor = diff(a[both], b[both])
    scale = float(np.max(np.abs(b[both]))) if both.any() else 0.0
    return max(FLOOR_MULTIPLE * floor, MIN_RELATIVE * scale), floor


def compared(a, b) -> float:
    """max |a - b| where both are finite, in float64; inf when the shapes differ or when the
    non-finite values (nan, inf, -inf) are not the same ones at the same places."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    if finite_a.all() and finite_b.all():
        return diff(a, b)
    if not np.array_equal(finite_a, finite_b) or not np.array_equal(a[~finite_a], b[~finite_b], equal_nan=True):
        return math.inf
    return diff(a[finite_a], b[finite_b])
