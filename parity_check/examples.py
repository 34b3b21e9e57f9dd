"""Two model pairs written for the checker (not among the project's five), each in torch, Flax Linen
and Flax NNX, with the porting mistakes people make as switches (defaults: a faithful port).

ResNet: a stem (3x3 conv, BatchNorm, ReLU, 2x2 max-pool), two BasicBlocks (the second with a stride-2
path and a 1x1 conv + BatchNorm downsampling shortcut), global average pool, Linear. Linen names its
layers automatically (Conv_0, ...: matched by execution order); NNX uses torch's names (matched by name).

MLP block: a transformer-style feed-forward block, Linear embedding, LayerNorm, Linear, GELU, dropout,
Linear, residual addition, LayerNorm, a square Linear projection, Linear head.

Each zero-argument function (torch_resnet, linen_resnet, nnx_resnet, ...) builds one model, so the
command line can load it: `python -m parity_check --torch parity_check.examples:torch_resnet
--flax parity_check.examples:nnx_resnet --input-shape 4,3,32,32`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx

RESNET_INPUT = (4, 3, 32, 32)
MLP_INPUT = (8, 24)


@torch.no_grad()
def randomise_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Norm layers away from identity (weights, biases and running statistics drawn), so that a
    mistake in them shows in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
            m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


# --- ResNet ------------------------------------------------------------------------------------------

class TorchBlock(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                  torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet(torch.nn.Module):
    def __init__(self, channels: int = 3, width: int = 8, classes: int = 10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.layer1 = torch.nn.Sequential(TorchBlock(width, width, 1))
        self.layer2 = torch.nn.Sequential(TorchBlock(width, 2 * width, 2))
        self.fc = torch.nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean(dim=(2, 3)))


def _pad(stride: int, same_padding: bool):
    """What a faithful port writes for torch's padding=1 (3x3): ((1, 1), (1, 1)); the mistake: 'SAME'."""
    return "SAME" if same_padding and stride > 1 else ((1, 1), (1, 1))


class LinenBlock(nn.Module):
    features: int
    stride: int
    same_padding: bool = False
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5)  # noqa: E731
        s = (self.stride, self.stride)
        out = nn.relu(norm()(nn.Conv(self.features, (3, 3), s, _pad(self.stride, self.same_padding), use_bias=False)(x)))
        out = norm()(nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(out))
        if self.stride != 1 or x.shape[-1] != self.features:
            x = norm()(nn.Conv(self.features, (1, 1), s, padding="VALID", use_bias=False)(x))
        return nn.relu(out + x)


class LinenResNet(nn.Module):
    width: int = 8
    classes: int = 10
    same_padding: bool = False
    bn_momentum: float = 0.9
    pool_strides: tuple[int, int] | None = (2, 2)  # None: Flax's default (1, 1), the mistake

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5)(x))
        x = nn.max_pool(x, (2, 2), strides=self.pool_strides)
        x = LinenBlock(self.width, 1, self.same_padding, self.bn_momentum)(x, train)
        x = LinenBlock(2 * self.width, 2, self.same_padding, self.bn_momentum)(x, train)
        return nn.Dense(self.classes)(x.mean(axis=(1, 2)))


class NNXBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs, bn_eps: float = 1e-5):
        s = (stride, stride)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), s, padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, momentum=0.9, epsilon=bn_eps, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, momentum=0.9, epsilon=bn_eps, rngs=rngs)
        self.downsample = nnx.List([])  # empty: identity shortcut
        if stride != 1 or cin != cout:
            self.downsample = nnx.List([nnx.Conv(cin, cout, (1, 1), s, padding="VALID", use_bias=False, rngs=rngs),
                                        nnx.BatchNorm(cout, momentum=0.9, epsilon=bn_eps, rngs=rngs)])

    def __call__(self, x):
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = self.downsample[1](self.downsample[0](x)) if len(self.downsample) else x
        return nnx.relu(out + shortcut)


class NNXResNet(nnx.Module):
    def __init__(self, channels: int = 3, width: int = 8, classes: int = 10, *, rngs: nnx.Rngs, bn_eps: float = 1e-5):
        self.conv1 = nnx.Conv(channels, width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, momentum=0.9, epsilon=bn_eps, rngs=rngs)
        self.layer1 = nnx.List([NNXBlock(width, width, 1, rngs=rngs, bn_eps=bn_eps)])
        self.layer2 = nnx.List([NNXBlock(width, 2 * width, 2, rngs=rngs, bn_eps=bn_eps)])
        self.fc = nnx.Linear(2 * width, classes, rngs=rngs)

    def __call__(self, x):
        x = nn.max_pool(nnx.relu(self.bn1(self.conv1(x))), (2, 2), strides=(2, 2))
        x = self.layer2[0](self.layer1[0](x))
        return self.fc(x.mean(axis=(1, 2)))


def torch_resnet() -> TorchResNet:
    torch.manual_seed(0)
    return randomise_norms(TorchResNet())


def linen_resnet() -> LinenResNet:
    return LinenResNet()


def nnx_resnet(bn_eps: float = 1e-5) -> NNXResNet:
    return NNXResNet(rngs=nnx.Rngs(0), bn_eps=bn_eps)


# --- MLP block -----------------------------------------------------------------------------------------

class TorchMLPBlock(torch.nn.Module):
    def __init__(self, inputs: int = 24, dim: int = 32, hidden: int = 64, classes: int = 10, p: float = 0.1,
                 dropout_left_on: bool = False):
        super().__init__()
        self.embed = torch.nn.Linear(inputs, dim)
        self.norm1 = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, dim)
        self.dropout = torch.nn.Dropout(p)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, classes)
        self.dropout_left_on = dropout_left_on

    def forward(self, x):
        x = self.embed(x)
        h = F.gelu(self.fc1(self.norm1(x)))
        # the mistake: F.dropout's `training` defaults to True, whatever the module's mode
        h = F.dropout(h, self.dropout.p) if self.dropout_left_on else self.dropout(h)
        x = x + self.fc2(h)
        return self.head(F.gelu(self.proj(self.norm2(x))))


class LinenMLPBlock(nn.Module):
    dim: int = 32
    hidden: int = 64
    classes: int = 10
    rate: float = 0.1
    gelu_approximate: bool = False  # True: Flax's default, the mistake against torch's exact GELU
    ln_eps: float = 1e-5  # 1e-6: Flax's default, the mistake against torch's 1e-5
    detach_residual: bool = False  # True: the residual path cut from the gradient (forward unchanged)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(self.dim, name="embed")(x)
        h = nn.gelu(nn.Dense(self.hidden, name="fc1")(nn.LayerNorm(self.ln_eps, name="norm1")(x)),
                    approximate=self.gelu_approximate)
        h = nn.Dropout(self.rate, deterministic=not train)(h)
        x = (jax.lax.stop_gradient(x) if self.detach_residual else x) + nn.Dense(self.dim, name="fc2")(h)
        x = nn.Dense(self.dim, name="proj")(nn.LayerNorm(self.ln_eps, name="norm2")(x))
        return nn.Dense(self.classes, name="head")(nn.gelu(x, approximate=self.gelu_approximate))


class NNXMLPBlock(nnx.Module):
    def __init__(self, inputs: int = 24, dim: int = 32, hidden: int = 64, classes: int = 10, rate: float = 0.1, *,
                 rngs: nnx.Rngs):
        self.embed = nnx.Linear(inputs, dim, rngs=rngs)
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)
        self.dropout = nnx.Dropout(rate, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.head = nnx.Linear(dim, classes, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x)
        h = self.dropout(nnx.gelu(self.fc1(self.norm1(x)), approximate=False))
        x = x + self.fc2(h)
        return self.head(nnx.gelu(self.proj(self.norm2(x)), approximate=False))


def torch_mlp_block() -> TorchMLPBlock:
    torch.manual_seed(0)
    return randomise_norms(TorchMLPBlock())


def linen_mlp_block() -> LinenMLPBlock:
    return LinenMLPBlock()


def nnx_mlp_block() -> NNXMLPBlock:
    return NNXMLPBlock(rngs=nnx.Rngs(0))


# --- coverage: token inputs, Embedding, dilated grouped Conv1d, GroupNorm, avg-pooling, flatten -------

SEQUENCE_INPUT = (4, 12)  # token ids
VOCABULARY = 50


class TorchSequenceNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCABULARY, 16)
        self.conv = torch.nn.Conv1d(16, 32, 3, padding=2, dilation=2, groups=2)
        self.norm = torch.nn.GroupNorm(4, 32)
        self.fc = torch.nn.Linear(32 * SEQUENCE_INPUT[1] // 2, 10)

    def forward(self, tokens):
        x = self.embed(tokens).transpose(1, 2)  # (N, C, L), as Conv1d takes it
        x = F.avg_pool1d(F.silu(self.norm(self.conv(x))), 2)
        return self.fc(torch.tanh(x).flatten(1))


class LinenSequenceNet(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCABULARY, 16)(tokens)  # (N, L, C): Flax convolves channels-last as it is
        x = nn.Conv(32, (3,), padding=((2, 2),), kernel_dilation=(2,), feature_group_count=2)(x)
        x = nn.avg_pool(nn.silu(nn.GroupNorm(num_groups=4, epsilon=1e-5)(x)), (2,), strides=(2,))
        return nn.Dense(10)(jnp.tanh(x).reshape(x.shape[0], -1))


def torch_sequence_net() -> TorchSequenceNet:
    torch.manual_seed(0)
    return TorchSequenceNet()


def sequence_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCABULARY, SEQUENCE_INPUT)


# --- planted mistakes, as zero-argument builders for the command line -------------------------------

def linen_resnet_same_padding() -> LinenResNet:
    return LinenResNet(same_padding=True)


def linen_resnet_pool_stride() -> LinenResNet:
    return LinenResNet(pool_strides=None)


def linen_resnet_bn_momentum() -> LinenResNet:
    return LinenResNet(bn_momentum=0.1)


def nnx_resnet_bn_eps() -> NNXResNet:
    return nnx_resnet(bn_eps=1e-3)


def linen_mlp_block_gelu_tanh() -> LinenMLPBlock:
    return LinenMLPBlock(gelu_approximate=True)


def linen_mlp_block_ln_eps() -> LinenMLPBlock:
    return LinenMLPBlock(ln_eps=1e-6)


def linen_mlp_block_detached_residual() -> LinenMLPBlock:
    return LinenMLPBlock(detach_residual=True)


def torch_mlp_block_dropout_on() -> TorchMLPBlock:
    torch.manual_seed(0)
    return randomise_norms(TorchMLPBlock(dropout_left_on=True))


def example_input(shape, seed: int = 0):
    """A fixed Gaussian input of `shape` (torch layout), as numpy float32."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

