"""One neutral source of randomness for paired runs (`init_rng = "shared"`, `shuffle_rng = "shared"`).

With both keys "shared", a Flax run and a PyTorch run of a recipe start from bit-identical weights
and see the same batches in the same order, so their per-seed difference measures numerical
divergence alone (plus fashion_cnn's dropout masks, which stay each framework's own).

Every draw is a pure function of (seed, purpose[, epoch]): numpy's PCG64 fed by a `SeedSequence`
whose spawn key names the purpose, so the streams are independent of each other and of the
frameworks' own generators, and resuming needs no saved state.
"""

from __future__ import annotations

import math

import numpy as np

from cnn_parity.recipes import INITS
from cnn_parity.weights import EXPLICIT_WEIGHT_INITS, LAYERS

_INIT_STREAM, _SHUFFLE_STREAM = 0, 1

# Flax's truncated_normal(stddev) draws N(0, 1) truncated to [-2, 2] and divides by this, that
# truncated distribution's standard deviation, so the result has standard deviation `stddev`.
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _generator(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=stream)))


def _xavier_uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_out, fan_in = shape[0] * math.prod(shape[2:]), math.prod(shape[1:])
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, shape)


# numpy's implementation of each initialiser cnn_parity.weights.EXPLICIT_WEIGHT_INITS names.
_EXPLICIT_WEIGHT_INITS = {"xavier_uniform": _xavier_uniform}


def initial_weights(model: str, init_scheme: str, seed: int) -> dict[str, np.ndarray]:
    """Canonical float32 initial weights of `model` (cnn_parity/weights.py layout), drawn as the init
    scheme prescribes: "torch", PyTorch's defaults, U(±1/√fan_in) for weights and biases; "flax",
    LeCun-normal weights truncated at ±2σ and zero biases; a weight the source initialised explicitly
    (weights.EXPLICIT_WEIGHT_INITS) as it did, under either scheme. Same distributions as either
    framework's own initialisers; these exact values are the same in both."""
    if init_scheme not in INITS:
        raise ValueError(f"init scheme must be one of {INITS}, not {init_scheme!r}")
    rng = _generator(seed, _INIT_STREAM)
    arrays, explicit = {}, EXPLICIT_WEIGHT_INITS.get(model, {})
    for name, fan_in_channels, out, kernel in LAYERS[model]:
        shape = (out, fan_in_channels, kernel, kernel) if kernel else (out, fan_in_channels)
        fan_in = math.prod(shape[1:])
        if name in explicit:
            weight = _EXPLICIT_WEIGHT_INITS[explicit[name]](rng, shape)
        elif init_scheme == "torch":
            weight = rng.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), shape)
        else:
            weight = _truncated_standard_normal(rng, shape) * (math.sqrt(1 / fan_in) / TRUNCATED_NORMAL_STD)
        if init_scheme == "torch":
            bias = rng.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), (out,))
        else:
            bias = np.zeros(out)
        arrays[f"{name}.weight"], arrays[f"{name}.bias"] = weight.astype(np.float32), bias.astype(np.float32)
    return arrays


def _truncated_standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, 1) conditioned on [-2, 2], by rejection (95 % of draws are kept)."""
    out = rng.standard_normal(shape)
    outside = np.abs(out) > 2
    while outside.any():
        out[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(out) > 2
    return out


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order (int64 indices) in which epoch `epoch` (1-based) visits the training examples."""
    return _generator(seed, _SHUFFLE_STREAM, epoch).permutation(num_examples)
