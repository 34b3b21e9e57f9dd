"""The five models as PyTorch modules (NCHW inputs), written as the sources wrote them, intent kept.

`init_scheme="torch"` is PyTorch's own default initialisation (what the sources used); `"flax"`
re-initialises to Flax's defaults (LeCun-normal weights truncated at ±2σ, zero biases) so that a
recipe with `init = "flax"` means the same in both frameworks. A weight the source initialised
explicitly (cnn_parity.weights.EXPLICIT_WEIGHT_INITS: cnn_2layer's final Linear, Xavier-uniform) keeps
that under both schemes; `create_model` applies it after the constructor (as the source did at the end
of its constructor: the same draws).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnn_parity.shared_rng import TRUNCATED_NORMAL_STD
from cnn_parity.weights import EXPLICIT_WEIGHT_INITS


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x):
        return self.fc2(torch.sigmoid(self.fc1(x.flatten(1))))


class CNNBase(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.conv3 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * 3 * 3, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        # The source flattens with view(batch_size, -1); per-sample flatten is its intent.
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class CNN2Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(7 * 7 * 64, 10)  # its weight Xavier-uniform: create_model

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))  # the source's forward forgot this layer


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class FashionCNN(nn.Module):
    """Outputs log-probabilities, as the source does; its loss is cross-entropy on them (= NLL)."""

    def __init__(self, dropout_rate: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc1 = nn.Linear(320, 50)
        # The source's Dropout2d on a (N, 50) tensor acts element-wise; plain dropout is the intent.
        self.dropout = nn.Dropout(dropout_rate)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = self.dropout(F.relu(self.fc1(x.flatten(1))))
        return F.log_softmax(self.fc2(x), dim=1)


# The module class of each model named in cnn_parity.recipes.MODELS.
MODULES = {"mlp": MLP, "cnn_base": CNNBase, "cnn_2layer": CNN2Layer, "lenet": LeNet, "fashion_cnn": FashionCNN}


# PyTorch's implementation of each initialiser cnn_parity.weights.EXPLICIT_WEIGHT_INITS names.
_EXPLICIT_WEIGHT_INITS = {"xavier_uniform": nn.init.xavier_uniform_}


def create_model(name: str, init_scheme: str = "torch") -> nn.Module:
    model = MODULES[name]()
    explicit = EXPLICIT_WEIGHT_INITS.get(name, {})
    with torch.no_grad():
        for layer, init in explicit.items():
            _EXPLICIT_WEIGHT_INITS[init](model.get_submodule(layer).weight)
    if init_scheme == "flax":
        _flax_default_init(model, explicit)
    return model


@torch.no_grad()
def _flax_default_init(model: nn.Module, explicit_weights) -> None:
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if name not in explicit_weights:
                std = math.sqrt(1.0 / module.weight[0].numel()) / TRUNCATED_NORMAL_STD
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(module.bias)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
