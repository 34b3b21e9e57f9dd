"""Flax params ↔ canonical weights (cnn_parity/weights.py: PyTorch names and layouts, numpy).

Conv kernels HWIO ↔ OIHW; Dense kernels (in, out) ↔ (out, in); and the Dense after a flatten has its
input rows permuted between Flax's (H, W, C) flatten order and the canonical (C, H, W) one, so the
converted model computes the same function. All moves are transposes: conversion is exact.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn_parity.weights import FLATTENED_INPUT, LAYERS, check_canonical


def params_to_canonical(model: str, params: Any) -> dict[str, np.ndarray]:
    flat_layer, (c, h, w) = FLATTENED_INPUT[model]
    arrays = {}
    for name, _, out, kernel_size in LAYERS[model]:
        kernel = np.asarray(params[name]["kernel"])
        if kernel_size:
            weight = kernel.transpose(3, 2, 0, 1)  # HWIO → OIHW
        elif name == flat_layer:
            weight = kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w)
        else:
            weight = kernel.T
        arrays[f"{name}.weight"] = np.ascontiguousarray(weight)
        arrays[f"{name}.bias"] = np.asarray(params[name]["bias"])
    return arrays


def params_from_canonical(model: str, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, jax.Array]]:
    check_canonical(model, arrays)
    flat_layer, (c, h, w) = FLATTENED_INPUT[model]
    params = {}
    for name, _, out, kernel_size in LAYERS[model]:
        weight = np.asarray(arrays[f"{name}.weight"], dtype=np.float32)
        if kernel_size:
            kernel = weight.transpose(2, 3, 1, 0)  # OIHW → HWIO
        elif name == flat_layer:
            kernel = weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)
        else:
            kernel = weight.T
        params[name] = {"kernel": jnp.asarray(kernel),
                        "bias": jnp.asarray(np.asarray(arrays[f"{name}.bias"], dtype=np.float32))}
    return params
