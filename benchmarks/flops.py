"""Analytic FLOPs per training / evaluation sample, from cnn_parity.weights.LAYERS (framework-neutral).

A multiply-add counts as 2 FLOPs. Only convolutions and Linear layers are counted (pooling, activations,
loss and the optimiser update are O(activations), well under 1 % for these models).
Training per sample = forward + gradient w.r.t. the weights (same FLOPs as forward) + gradient w.r.t.
the inputs of every layer but the first (the first layer's input gradient is never needed).
"""

from __future__ import annotations

from cnn_parity.weights import LAYERS

# Output height = width of each convolution, per model, from SEEDS.md (all square, stride 1).
CONV_OUT = {
    "mlp": {},
    "cnn_base": {"conv1": 24, "conv2": 20, "conv3": 6},
    "cnn_2layer": {"conv1": 28, "conv2": 14},
    "lenet": {"conv1": 24, "conv2": 8},
    "fashion_cnn": {"conv1": 24, "conv2": 8},
}


def layer_flops(model: str) -> list[tuple[str, int]]:
    """(layer, forward FLOPs per sample) in forward order."""
    out = []
    for name, fan_in, fan_out, kernel in LAYERS[model]:
        if kernel:
            side = CONV_OUT[model][name]
            out.append((name, 2 * fan_in * kernel * kernel * fan_out * side * side))
        else:
            out.append((name, 2 * fan_in * fan_out))
    return out


def forward_flops(model: str) -> int:
    return sum(f for _, f in layer_flops(model))


def train_flops(model: str) -> int:
    layers = layer_flops(model)
    return 2 * sum(f for _, f in layers) + sum(f for _, f in layers[1:])
