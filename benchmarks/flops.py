"""Analytic FLOPs per training / evaluation sample, from cnn_parity.weights.LAYERS (framework-neutral).

A multiply-add counts as 2 FLOPs. Only convolutions and Linear layers are counted (pooling, activations,
loss and the optimiser update are O(activations), well under 1 % for these models).
Training per sample = forward + gradient w.r.t. the weights (same FLOPs as forward) + gradient w.r.t.
the inputs of every layer but the first (the first layer's input gradient is never needed).
"""

from __future__ import annotations

from cnn_parity.weights import LAYERS, conv_output_side


def layer_flops(model: str) -> list[tuple[str, int]]:
    """(layer, forward FLOPs per sample) in forward order."""
    out = []
    for name, fan_in, fan_out, kernel in LAYERS[model]:
        if kernel:
            side = conv_output_side(model, name)
            out.append((name, 2 * fan_in * kernel * kernel * fan_out * side * side))
        else:
            out.append((name, 2 * fan_in * fan_out))
    return out


def forward_flops(model: str) -> int:
    return sum(f for _, f in layer_flops(model))


def train_flops(model: str) -> int:
    layers = layer_flops(model)
    return 2 * sum(f for _, f in layers) + sum(f for _, f in layers[1:])
