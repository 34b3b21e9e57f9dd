"""Pairs that test how the checker finds its way: two same-shaped branches the Flax port computes in
the other order, a torch model wrapped under a prefix, transposed / 3-D / depthwise / 1-D
convolutions with GroupNorm, bare parameters (a class token, position embeddings), and pairs it must
refuse (a port that lost layers, models without weights). Each builder returns check_pair's
arguments for the Flax API given ('linen' or 'nnx')."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx

from parity_check.examples import randomise_norms


def _x(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in model.parameters():  # drawn again after the seed, so that every pair starts the same
        torch.nn.init.normal_(p, std=0.3)
    return randomise_norms(model)


def _pair(torch_model, flax_model, inputs, **kwargs) -> dict:
    return {"torch": torch_model, "flax": flax_model, "inputs": inputs, **kwargs}


# --- two branches, computed in the other order by the port ------------------------------------------------

class TorchBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.branch_a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.branch_b = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        x = torch.cat([F.relu(self.branch_a(x)), torch.tanh(self.branch_b(x))], 1)
        return self.fc(x.mean((2, 3)))


class LinenBranches(nn.Module):
    @nn.compact
    def __call__(self, x):
        b = jnp.tanh(nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)))(x))  # Conv_0 is torch's branch_b
        a = nn.relu(nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)))(x))
        return nn.Dense(4)(jnp.concatenate([a, b], -1).mean(axis=(1, 2)))


class NNXBranches(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.right = nnx.Conv(3, 8, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)  # torch's branch_b
        self.left = nnx.Conv(3, 8, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.head = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        b = jnp.tanh(self.right(x))
        a = nnx.relu(self.left(x))
        return self.head(jnp.concatenate([a, b], -1).mean(axis=(1, 2)))


def swapped_branches(api: str) -> dict:
    flax = LinenBranches() if api == "linen" else NNXBranches(rngs=nnx.Rngs(0))
    return _pair(_torch(TorchBranches()), flax, _x((2, 3, 8, 8)))


# --- a wrapper's prefix ------------------------------------------------------------------------------------

class TorchInner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(F.relu(self.bn2(self.conv2(x))).mean((2, 3)))


class TorchWrapped(torch.nn.Module):
    """A training wrapper: every name starts with 'model.'."""

    def __init__(self):
        super().__init__()
        self.model = TorchInner()

    def forward(self, x):
        return self.model(x)


class LinenInner(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)  # noqa: E731
        x = nn.relu(norm("bn1")(nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)))
        x = nn.relu(norm("bn2")(nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(x)))
        return nn.Dense(4, name="fc")(x.mean(axis=(1, 2)))


class NNXInner(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.bn2 = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.fc = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        return self.fc(nnx.relu(self.bn2(self.conv2(x))).mean(axis=(1, 2)))


def prefixed(api: str) -> dict:
    flax = LinenInner() if api == "linen" else NNXInner(rngs=nnx.Rngs(0))
    return _pair(_torch(TorchWrapped()), flax, _x((2, 3, 8, 8)))


# --- convolutions of every shape ------------------------------------------------------------------------------

class TorchConvolutions(torch.nn.Module):
    """ConvTranspose2d (stride 2, output_padding 1), a depthwise Conv2d, GroupNorm, a Conv1d over the
    flattened map, a Conv3d over it viewed as a volume."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
        self.depthwise = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.norm = torch.nn.GroupNorm(2, 4)
        self.line = torch.nn.Conv1d(4, 6, 3, padding=1)
        self.volume = torch.nn.Conv3d(6, 2, 3, padding=1)
        self.fc = torch.nn.Linear(2, 3)

    def forward(self, x):
        x = F.relu(self.norm(self.depthwise(self.up(x))))  # (N, 4, 16, 16)
        x = self.line(x.flatten(2))  # (N, 6, 256)
        x = self.volume(x.view(x.shape[0], 6, 4, 8, 8))
        return self.fc(x.mean((2, 3, 4)))


class LinenConvolutions(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.ConvTranspose(4, (3, 3), (2, 2), padding=((1, 2), (1, 2)), name="up")(x)
        x = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=4, name="depthwise")(x)
        x = nn.relu(nn.GroupNorm(num_groups=2, epsilon=1e-5, name="norm")(x))  # (N, 16, 16, 4)
        x = nn.Conv(6, (3,), padding=((1, 1),), name="line")(x.reshape(x.shape[0], -1, 4))  # (N, 256, 6)
        x = nn.Conv(2, (3, 3, 3), padding=((1, 1),) * 3, name="volume")(x.reshape(x.shape[0], 4, 8, 8, 6))
        return nn.Dense(3, name="fc")(x.mean(axis=(1, 2, 3)))


class NNXConvolutions(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.up = nnx.ConvTranspose(3, 4, (3, 3), (2, 2), padding=((1, 2), (1, 2)), rngs=rngs)
        self.depthwise = nnx.Conv(4, 4, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=4, rngs=rngs)
        self.norm = nnx.GroupNorm(4, num_groups=2, epsilon=1e-5, rngs=rngs)
        self.line = nnx.Conv(4, 6, (3,), padding=((1, 1),), rngs=rngs)
        self.volume = nnx.Conv(6, 2, (3, 3, 3), padding=((1, 1),) * 3, rngs=rngs)
        self.fc = nnx.Linear(2, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm(self.depthwise(self.up(x))))
        x = self.line(x.reshape(x.shape[0], -1, 4))
        x = self.volume(x.reshape(x.shape[0], 4, 8, 8, 6))
        return self.fc(x.mean(axis=(1, 2, 3)))


def convolutions(api: str) -> dict:
    flax = LinenConvolutions() if api == "linen" else NNXConvolutions(rngs=nnx.Rngs(0))
    return _pair(_torch(TorchConvolutions()), flax, _x((2, 3, 8, 8)))


# --- bare parameters --------------------------------------------------------------------------------------------

TOKENS, FEATURES, WIDTH = 5, 6, 16


class TorchEmbed(torch.nn.Module):
    """A ViT-style embedding: a projection, a class token and position embeddings as bare parameters."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(FEATURES, WIDTH)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.position_embeddings = torch.nn.Parameter(torch.zeros(1, TOKENS + 1, WIDTH))

    def forward(self, x):
        x = self.proj(x)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.position_embeddings


class TorchTokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = TorchEmbed()
        self.norm = torch.nn.LayerNorm(WIDTH)
        self.head = torch.nn.Linear(WIDTH, 3)

    def forward(self, x):
        return self.head(self.norm(self.embed(x))[:, 0])


class LinenEmbed(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(WIDTH, name="proj")(x)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, WIDTH))
        pos = self.param("pos_embedding", nn.initializers.zeros, (1, TOKENS + 1, WIDTH))
        return jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, WIDTH)), x], 1) + pos


class LinenTokens(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="head")(nn.LayerNorm(1e-5, name="norm")(LinenEmbed(name="embed")(x))[:, 0])


class NNXEmbed(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(FEATURES, WIDTH, rngs=rngs)
        self.cls = nnx.Param(jnp.zeros((1, 1, WIDTH)))
        self.pos_embedding = nnx.Param(jnp.zeros((1, TOKENS + 1, WIDTH)))

    def __call__(self, x):
        x = self.proj(x)
        return jnp.concatenate([jnp.broadcast_to(self.cls[...], (x.shape[0], 1, WIDTH)), x], 1) + self.pos_embedding[...]


class NNXTokens(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.embed = NNXEmbed(rngs=rngs)
        self.norm = nnx.LayerNorm(WIDTH, epsilon=1e-5, rngs=rngs)
        self.head = nnx.Linear(WIDTH, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.norm(self.embed(x))[:, 0])


def bare_parameters(api: str) -> dict:
    flax = LinenTokens() if api == "linen" else NNXTokens(rngs=nnx.Rngs(0))
    return _pair(_torch(TorchTokens()), flax, _x((2, TOKENS, FEATURES)), flax_layout="same")


# --- refused ----------------------------------------------------------------------------------------------------

class TwoDense(nn.Module):
    """A port that lost layers: two Dense where the torch MLP block has six Linears and two LayerNorms."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.Dense(32)(x))


def two_dense() -> TwoDense:
    return TwoDense()


class TorchWeightless(torch.nn.Module):
    def forward(self, x):
        return F.relu(x).mean(1)


def torch_weightless() -> TorchWeightless:
    return TorchWeightless()


class LinenWeightless(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(x).mean(1)
