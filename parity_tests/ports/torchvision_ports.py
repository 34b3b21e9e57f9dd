"""Flax ports, Linen and NNX, of torchvision's ResNet-18 and SqueezeNet 1.1 (random initialisation, no
download), written as a porter would: the Linen ones with Flax's automatic names (Conv_0, ...), the
NNX ones with torch's names. Both torchvision models use ReLU(inplace=True); ResNet adds its shortcut
in place (out += identity); SqueezeNet concatenates two branches and max-pools with ceil_mode=True
(Flax has no ceil_mode: the port pads the bottom and right with -inf). The torch models keep
torchvision's own initialisation. This module imports nothing of the project, so that a benchmark
can load it next to an older checkout (benchmarks/check_time.py)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import torch
import torchvision
from flax import nnx


RESNET_INPUT = (2, 3, 32, 32)
SQUEEZENET_INPUT = (2, 3, 66, 66)  # odd map sizes after the first conv: ceil_mode matters
CLASSES = 10


def torch_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=CLASSES)


def torch_squeezenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.squeezenet1_1(num_classes=CLASSES)


def _bn_linen(train: bool):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class LinenBasicBlock(nn.Module):
    features: int
    stride: int = 1
    shortcut_first: bool = False  # compute the downsampling shortcut before the main path (the same function)
    same_padding: bool = False  # the mistake: 'SAME' where torch pads 1 on every side

    @nn.compact
    def __call__(self, x, train: bool = False):
        s = (self.stride, self.stride)

        def shortcut():
            if self.stride != 1 or x.shape[-1] != self.features:
                return _bn_linen(train)(nn.Conv(self.features, (1, 1), s, padding="VALID", use_bias=False)(x))
            return x
        identity = shortcut() if self.shortcut_first else None
        padding = "SAME" if self.same_padding else ((1, 1), (1, 1))
        out = nn.relu(_bn_linen(train)(nn.Conv(self.features, (3, 3), s, padding=padding, use_bias=False)(x)))
        out = _bn_linen(train)(nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(out))
        return nn.relu(out + (identity if self.shortcut_first else shortcut()))


class LinenResNet18(nn.Module):
    classes: int = CLASSES
    shortcut_first: bool = False
    same_padding: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False)(x)
        x = nn.relu(_bn_linen(train)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, features in enumerate((64, 128, 256, 512)):
            for j in range(2):
                x = LinenBasicBlock(features, 2 if i and not j else 1, self.shortcut_first, self.same_padding)(x, train)
        return nn.Dense(self.classes)(x.mean(axis=(1, 2)))


class NNXBasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        s = (stride, stride)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), s, padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.downsample = nnx.List([])
        if stride != 1 or cin != cout:
            self.downsample = nnx.List([nnx.Conv(cin, cout, (1, 1), s, padding="VALID", use_bias=False, rngs=rngs),
                                        nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)])

    def __call__(self, x):
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample[1](self.downsample[0](x)) if len(self.downsample) else x
        return nnx.relu(out + identity)


class NNXResNet18(nnx.Module):
    def __init__(self, classes: int = CLASSES, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(64, momentum=0.9, epsilon=1e-5, rngs=rngs)
        widths = (64, 64, 128, 256, 512)
        for i in range(1, 5):
            setattr(self, f"layer{i}", nnx.List([NNXBasicBlock(widths[i - 1], widths[i], 2 if i > 1 else 1, rngs=rngs),
                                                 NNXBasicBlock(widths[i], widths[i], 1, rngs=rngs)]))
        self.fc = nnx.Linear(512, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
        return self.fc(x.mean(axis=(1, 2)))


def linen_resnet18() -> LinenResNet18:
    return LinenResNet18()


def linen_resnet18_shortcut_first() -> LinenResNet18:
    return LinenResNet18(shortcut_first=True)


def LinenResNet18Same() -> LinenResNet18:  # noqa: N802 (a model builder, named as the classes are)
    return LinenResNet18(same_padding=True)


def nnx_resnet18() -> NNXResNet18:
    return NNXResNet18(rngs=nnx.Rngs(0))


# --- SqueezeNet 1.1 ------------------------------------------------------------------------------------

def max_pool_ceil(x, window: int = 3, stride: int = 2):
    """torch's MaxPool2d(window, stride, ceil_mode=True): the bottom/right padded with -inf so that the
    last partial window is kept."""
    pads = []
    for size in x.shape[1:3]:
        out = math.ceil((size - window) / stride) + 1
        pads.append((0, max(0, (out - 1) * stride + window - size)))
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return nn.max_pool(x, (window, window), strides=(stride, stride))


FIRES = ((64, 16, 64), (128, 16, 64), "pool", (128, 32, 128), (256, 32, 128), "pool", (256, 48, 192),
         (384, 48, 192), (384, 64, 256), (512, 64, 256))


class LinenFire(nn.Module):
    squeeze: int
    expand: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.squeeze, (1, 1))(x))
        return jnp.concatenate([nn.relu(nn.Conv(self.expand, (1, 1))(x)),
                                nn.relu(nn.Conv(self.expand, (3, 3), padding=((1, 1), (1, 1)))(x))], axis=-1)


class LinenSqueezeNet(nn.Module):
    classes: int = CLASSES
    ceil_mode: bool = True  # False: the mistake, torch's ceil_mode=True ported as a plain max-pool

    @nn.compact
    def __call__(self, x, train: bool = False):
        pool = max_pool_ceil if self.ceil_mode else (lambda y: nn.max_pool(y, (3, 3), strides=(2, 2)))
        x = pool(nn.relu(nn.Conv(64, (3, 3), (2, 2), padding="VALID")(x)))
        for fire in FIRES:
            x = pool(x) if fire == "pool" else LinenFire(fire[1], fire[2])(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nn.relu(nn.Conv(self.classes, (1, 1))(x))
        return x.mean(axis=(1, 2))


class NNXFire(nnx.Module):
    def __init__(self, cin: int, squeeze: int, expand: int, *, rngs: nnx.Rngs):
        self.squeeze = nnx.Conv(cin, squeeze, (1, 1), rngs=rngs)
        self.expand1x1 = nnx.Conv(squeeze, expand, (1, 1), rngs=rngs)
        self.expand3x3 = nnx.Conv(squeeze, expand, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.squeeze(x))
        return jnp.concatenate([nnx.relu(self.expand1x1(x)), nnx.relu(self.expand3x3(x))], axis=-1)


class NNXSqueezeNet(nnx.Module):
    def __init__(self, classes: int = CLASSES, *, rngs: nnx.Rngs):
        self.features = nnx.List([nnx.Conv(3, 64, (3, 3), (2, 2), padding="VALID", rngs=rngs)] +
                                 [None if f == "pool" else NNXFire(*f, rngs=rngs) for f in FIRES])
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.classifier = nnx.Conv(512, classes, (1, 1), rngs=rngs)

    def __call__(self, x):
        x = max_pool_ceil(nnx.relu(self.features[0](x)))
        for fire in self.features[1:]:
            x = max_pool_ceil(x) if fire is None else fire(x)
        return nnx.relu(self.classifier(self.dropout(x))).mean(axis=(1, 2))


def linen_squeezenet() -> LinenSqueezeNet:
    return LinenSqueezeNet()


def LinenSqueezeNetFloor() -> LinenSqueezeNet:  # noqa: N802 (a model builder, named as the classes are)
    return LinenSqueezeNet(ceil_mode=False)


def nnx_squeezenet() -> NNXSqueezeNet:
    return NNXSqueezeNet(rngs=nnx.Rngs(0))
