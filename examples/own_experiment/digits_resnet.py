"""A small ResNet for 8x8 grey images, written twice: in PyTorch and as its Flax port (Linen and NNX).
The pair of docs/your-own-experiment.md: checked with `python -m parity_check`, then trained, paired
and compared in both frameworks by the project's own tools (recipe: digits_resnet.toml)."""

from __future__ import annotations

import flax.linen as linen
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from flax import nnx

CHANNELS, BLOCKS, CLASSES = 16, 2, 10


class TorchBlock(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class TorchResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, CHANNELS, 3, padding=1)
        self.blocks = torch.nn.Sequential(*[TorchBlock(CHANNELS) for _ in range(BLOCKS)])
        self.head = torch.nn.Linear(CHANNELS, CLASSES)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


class LinenBlock(linen.Module):
    channels: int

    @linen.compact
    def __call__(self, x):
        y = linen.relu(linen.Conv(self.channels, (3, 3), padding=1, name="conv1")(x))
        return linen.relu(x + linen.Conv(self.channels, (3, 3), padding=1, name="conv2")(y))


class LinenResNet(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Conv(CHANNELS, (3, 3), padding=1, name="stem")(x))
        for i in range(BLOCKS):
            x = LinenBlock(CHANNELS, name=f"blocks_{i}")(x)
        return linen.Dense(CLASSES, name="head")(jnp.mean(x, axis=(1, 2)))


class NnxBlock(nnx.Module):
    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, channels, (3, 3), padding=1, rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), padding=1, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(x + self.conv2(nnx.relu(self.conv1(x))))


class NnxResNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, CHANNELS, (3, 3), padding=1, rngs=rngs)
        self.blocks = nnx.List([NnxBlock(CHANNELS, rngs) for _ in range(BLOCKS)])
        self.head = nnx.Linear(CHANNELS, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))
