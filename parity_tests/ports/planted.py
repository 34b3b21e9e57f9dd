"""Small models, each in torch, Flax Linen and Flax NNX, with the porting mistakes people make as a
`mistake` switch on the Flax side (None: a faithful port). One family per kind of mistake:

  pool        conv, ReLU, max-pool (3, stride 2, pad 1), conv, ReLU, avg-pool (3, 2, 1), Linear:
              pool_padding, pool_stride, count_include_pad, pool_ceil_mode (torch ceil_mode=True)
  activation  Linear, activation, Linear, activation, Linear: the activation swapped (torch relu,
              gelu, silu, or a hand-written tanh GELU)
  residual    conv, BatchNorm, ReLU, conv, BatchNorm, + shortcut, ReLU, Linear: residual_order
  head        Linear, ReLU, Linear, then softmax or log_softmax over the classes: softmax_axis
  attention   hand-written multi-head self-attention (4 heads of 8) and a Linear: attention_scale,
              attention_heads, softmax over the wrong axis
  norm        Linear, LayerNorm over the features of a (N, T, D) sequence, Linear: norm_axis
  padding     a reflect-padded convolution (torch padding_mode='reflect'): padding_mode
  batchnorm   conv, BatchNorm, ReLU, Linear: batch_stats_in_eval
  bias        Linear, ReLU, Linear: missing_bias (Flax drops torch's bias), extra_bias (torch has none)
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from flax import nnx

from parity_check.examples import randomise_norms

IMAGE = (2, 3, 16, 16)
VECTOR = (4, 16)
SEQUENCE = (2, 6, 32)
HEADS, WIDTH = 4, 32


def _seeded(model: torch.nn.Module) -> torch.nn.Module:
    return randomise_norms(model)


# --- pooling -------------------------------------------------------------------------------------------

class TorchPool(torch.nn.Module):
    def __init__(self, ceil_mode: bool = False):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)
        self.ceil_mode = ceil_mode

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, 2, 1, ceil_mode=self.ceil_mode)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 3, 2, 1)
        return self.fc(x.mean((2, 3)))


def _pools(x, mistake, pool, conv2):
    padding = ((1, 1), (1, 1))
    if mistake == "pool_padding":
        x = pool(x, (3, 3), strides=(2, 2), padding="VALID")
    elif mistake == "pool_stride":
        x = pool(x, (3, 3), padding=padding)
    elif mistake == "pool_ceil_mode":  # torch keeps the last partial window; this port does not
        x = pool(x, (3, 3), strides=(2, 2), padding=padding)
    elif mistake == "ceil_emulated":  # the faithful port of ceil_mode=True: one more row and column of -inf
        x = pool(x, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)))
    else:
        x = pool(x, (3, 3), strides=(2, 2), padding=padding)
    x = nn.relu(conv2(x))
    return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=padding, count_include_pad=mistake != "count_include_pad")


class LinenPool(nn.Module):
    mistake: str | None = None

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)))(x))
        x = _pools(x, self.mistake, nn.max_pool, nn.Conv(8, (3, 3), padding=((1, 1), (1, 1))))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class NNXPool(nnx.Module):
    def __init__(self, mistake: str | None = None, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.fc = nnx.Linear(8, 10, rngs=rngs)
        self.mistake = mistake

    def __call__(self, x):
        x = _pools(nnx.relu(self.conv1(x)), self.mistake, nn.max_pool, self.conv2)
        return self.fc(x.mean(axis=(1, 2)))


# --- activations ---------------------------------------------------------------------------------------

def tanh_gelu_by_hand(x):
    """GELU's tanh approximation as people write it out."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


TORCH_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh_gelu_by_hand": tanh_gelu_by_hand}
FLAX_ACTIVATIONS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False), "silu": nn.silu,
                    "tanh_gelu_by_hand": lambda x: nn.gelu(x, approximate=True)}


class TorchActivation(torch.nn.Module):
    def __init__(self, activation: str = "relu"):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 10)
        self.activation = TORCH_ACTIVATIONS[activation]

    def forward(self, x):
        return self.fc3(self.activation(self.fc2(self.activation(self.fc1(x)))))


class LinenActivation(nn.Module):
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        act = FLAX_ACTIVATIONS[self.activation]
        return nn.Dense(10, name="fc3")(act(nn.Dense(32, name="fc2")(act(nn.Dense(32, name="fc1")(x)))))


class NNXActivation(nnx.Module):
    def __init__(self, activation: str = "relu", *, rngs: nnx.Rngs):
        self.fc1, self.fc2, self.fc3 = (nnx.Linear(16, 32, rngs=rngs), nnx.Linear(32, 32, rngs=rngs),
                                        nnx.Linear(32, 10, rngs=rngs))
        self.act = FLAX_ACTIVATIONS[activation]

    def __call__(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


# --- residual --------------------------------------------------------------------------------------------

class TorchResidual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(x))
        out += x
        return self.fc(F.relu(out).mean((2, 3)))


def _residual_tail(out, x, mistake):
    return nn.relu(out) + x if mistake == "residual_order" else nn.relu(out + x)


class LinenResidual(nn.Module):
    mistake: str | None = None
    train_statistics: bool = False  # the mistake batch_stats_in_eval: use_running_average=False in eval mode

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not (train or self.train_statistics), momentum=0.9,  # noqa: E731
                                    epsilon=1e-5)
        x = nn.relu(norm()(nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x)))
        out = norm()(nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x))
        return nn.Dense(10)(_residual_tail(out, x, self.mistake).mean(axis=(1, 2)))


class NNXResidual(nnx.Module):
    def __init__(self, mistake: str | None = None, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.fc = nnx.Linear(8, 10, rngs=rngs)
        self.mistake = mistake

    def __call__(self, x):
        # the mistake batch_stats_in_eval: the batch's statistics asked for whatever the mode
        bn1 = (lambda y: self.bn1(y, use_running_average=False)) if self.mistake == "batch_stats_in_eval" else self.bn1
        x = nnx.relu(bn1(self.conv1(x)))
        out = self.bn2(self.conv2(x))
        return self.fc(_residual_tail(out, x, self.mistake).mean(axis=(1, 2)))


# --- classification head ----------------------------------------------------------------------------------

class TorchHead(torch.nn.Module):
    def __init__(self, log: bool = True):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 10)
        self.log = log

    def forward(self, x):
        x = self.fc2(F.relu(self.fc1(x)))
        return F.log_softmax(x, dim=1) if self.log else F.softmax(x, dim=1)


class LinenHead(nn.Module):
    log: bool = True
    axis: int = -1  # 0: the mistake, over the batch

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(10, name="fc2")(nn.relu(nn.Dense(32, name="fc1")(x)))
        return (nn.log_softmax if self.log else nn.softmax)(x, axis=self.axis)


class NNXHead(nnx.Module):
    def __init__(self, log: bool = True, axis: int = -1, *, rngs: nnx.Rngs):
        self.fc1, self.fc2 = nnx.Linear(16, 32, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)
        self.log, self.axis = log, axis

    def __call__(self, x):
        x = self.fc2(nnx.relu(self.fc1(x)))
        return (nnx.log_softmax if self.log else nnx.softmax)(x, axis=self.axis)


# --- hand-written attention ----------------------------------------------------------------------------------

class TorchAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value, self.out = (torch.nn.Linear(WIDTH, WIDTH) for _ in range(4))
        self.fc = torch.nn.Linear(WIDTH, 5)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = (f(x).view(n, t, HEADS, d // HEADS).transpose(1, 2) for f in (self.query, self.key, self.value))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // HEADS), dim=-1)
        return self.fc(self.out((weights @ v).transpose(1, 2).reshape(n, t, d)))


def _attention(x, dense, mistake):
    n, t, d = x.shape
    heads = 2 if mistake == "attention_heads" else HEADS
    q, k, v = (dense[name](x).reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3) for name in ("query", "key", "value"))
    scale = math.sqrt(d) if mistake == "attention_scale" else math.sqrt(d // heads)
    weights = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / scale, axis=-2 if mistake == "softmax_axis" else -1)
    return dense["out"]((weights @ v).transpose(0, 2, 1, 3).reshape(n, t, d))


class LinenAttention(nn.Module):
    mistake: str | None = None

    @nn.compact
    def __call__(self, x):
        dense = {name: nn.Dense(WIDTH, name=name) for name in ("query", "key", "value", "out")}
        return nn.Dense(5, name="fc")(_attention(x, dense, self.mistake))


class NNXAttention(nnx.Module):
    def __init__(self, mistake: str | None = None, *, rngs: nnx.Rngs):
        self.query, self.key, self.value, self.out = (nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(4))
        self.fc = nnx.Linear(WIDTH, 5, rngs=rngs)
        self.mistake = mistake

    def __call__(self, x):
        dense = {"query": self.query, "key": self.key, "value": self.value, "out": self.out}
        return self.fc(_attention(x, dense, self.mistake))


# --- LayerNorm axes ---------------------------------------------------------------------------------------

class TorchNorm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.fc = torch.nn.Linear(WIDTH, WIDTH), torch.nn.LayerNorm(WIDTH), torch.nn.Linear(WIDTH, 5)

    def forward(self, x):
        return self.fc(self.norm(self.embed(x)))


class LinenNorm(nn.Module):
    reduction_axes: tuple[int, ...] = (-1,)  # (-2, -1): the mistake, over time and features

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm(1e-5, reduction_axes=self.reduction_axes, name="norm")(nn.Dense(WIDTH, name="embed")(x))
        return nn.Dense(5, name="fc")(x)


class NNXNorm(nnx.Module):
    def __init__(self, reduction_axes: tuple[int, ...] = (-1,), *, rngs: nnx.Rngs):
        self.embed, self.fc = nnx.Linear(WIDTH, WIDTH, rngs=rngs), nnx.Linear(WIDTH, 5, rngs=rngs)
        self.norm = nnx.LayerNorm(WIDTH, epsilon=1e-5, reduction_axes=reduction_axes, rngs=rngs)

    def __call__(self, x):
        return self.fc(self.norm(self.embed(x)))


# --- padding mode --------------------------------------------------------------------------------------------

class TorchPadding(torch.nn.Module):
    def __init__(self, mode: str = "reflect"):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv1(x)).mean((2, 3)))


def _padded_conv(conv, x, mode: str, mistake: str | None):
    if mistake == "padding_mode":  # zeros, inside the convolution
        return conv(x)
    if mode == "circular":
        return conv(x)  # built with padding='CIRCULAR'
    return conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode={"reflect": "reflect", "replicate": "edge"}[mode]))


def _conv_padding(mode: str, mistake: str | None):
    if mistake == "padding_mode":
        return ((1, 1), (1, 1))
    return "CIRCULAR" if mode == "circular" else "VALID"


class LinenPadding(nn.Module):
    mode: str = "reflect"
    mistake: str | None = None

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(8, (3, 3), padding=_conv_padding(self.mode, self.mistake), name="conv1")
        return nn.Dense(10, name="fc")(nn.relu(_padded_conv(conv, x, self.mode, self.mistake)).mean(axis=(1, 2)))


class NNXPadding(nnx.Module):
    def __init__(self, mode: str = "reflect", mistake: str | None = None, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), padding=_conv_padding(mode, mistake), rngs=rngs)
        self.fc = nnx.Linear(8, 10, rngs=rngs)
        self.mode, self.mistake = mode, mistake

    def __call__(self, x):
        return self.fc(nnx.relu(_padded_conv(self.conv1, x, self.mode, self.mistake)).mean(axis=(1, 2)))


# --- biases ----------------------------------------------------------------------------------------------------

class TorchBias(torch.nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 32, bias=bias), torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class LinenBias(nn.Module):
    bias: bool = True

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10, name="fc2")(nn.relu(nn.Dense(32, use_bias=self.bias, name="fc1")(x)))


class NNXBias(nnx.Module):
    def __init__(self, bias: bool = True, *, rngs: nnx.Rngs):
        self.fc1, self.fc2 = nnx.Linear(16, 32, use_bias=bias, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x)))


def torch_model(cls, *args, **kwargs) -> torch.nn.Module:
    """A torch model of the family, seeded, norms away from identity."""
    torch.manual_seed(0)
    model = _seeded(cls(*args, **kwargs))
    with torch.no_grad():  # biases away from zero, so that a dropped one shows
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.uniform_(-0.5, 0.5)
    return model


def nnx_model(cls, *args, **kwargs) -> nnx.Module:
    return cls(*args, rngs=nnx.Rngs(0), **kwargs)


# --- zero-argument builders, for the command line (docs/check-your-own-model.md) -----------------------------

def torch_residual() -> TorchResidual:
    return torch_model(TorchResidual)


def linen_residual_order() -> LinenResidual:
    return LinenResidual("residual_order")


def torch_attention() -> TorchAttention:
    return torch_model(TorchAttention)


def nnx_attention_scale() -> NNXAttention:
    return nnx_model(NNXAttention, "attention_scale")
