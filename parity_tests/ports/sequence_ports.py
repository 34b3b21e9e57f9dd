"""Sequence models: torch's stock nn.TransformerEncoderLayer, nn.LSTM and nn.GRU against Flax blocks
written on nn.MultiHeadDotProductAttention / nnx.MultiHeadAttention and nn.RNN / nnx.RNN cells, as a
porter would write them. Switches plant the mistakes people make (defaults: a faithful port)."""

from __future__ import annotations

import flax.linen as nn
import torch
from flax import nnx

from parity_check.examples import randomise_norms

D_MODEL, HEADS, FEEDFORWARD = 32, 4, 64
SEQUENCE_INPUT = (2, 10, D_MODEL)  # (N, T, D), batch first
RECURRENT_INPUT = (2, 7, 8)
HIDDEN = 16


class TorchEncoder(torch.nn.Module):
    """One stock encoder layer (post-norm, ReLU) and a Linear head."""

    def __init__(self, batch_first: bool = True):
        super().__init__()
        self.batch_first = batch_first
        self.layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FEEDFORWARD, dropout=0.1, batch_first=batch_first)
        self.head = torch.nn.Linear(D_MODEL, 5)

    def forward(self, x):  # x: (N, T, D)
        if not self.batch_first:
            return self.head(self.layer(x.transpose(0, 1)).transpose(0, 1))
        return self.head(self.layer(x))


def torch_encoder() -> TorchEncoder:
    torch.manual_seed(0)
    return randomise_norms(TorchEncoder())


def torch_encoder_time_major() -> TorchEncoder:
    torch.manual_seed(0)
    return randomise_norms(TorchEncoder(batch_first=False))


class LinenEncoder(nn.Module):
    heads: int = HEADS
    residual_after_norm: bool = False  # the mistake: pre-norm where torch is post-norm

    @nn.compact
    def __call__(self, x, train: bool = False):
        attention = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=D_MODEL, dropout_rate=0.1,
                                                    deterministic=not train, name="self_attn")
        x = nn.LayerNorm(1e-5, name="norm1")(x + nn.Dropout(0.1, deterministic=not train)(attention(x)))
        h = nn.Dense(FEEDFORWARD, name="linear1")(x)
        h = nn.Dense(D_MODEL, name="linear2")(nn.Dropout(0.1, deterministic=not train)(nn.relu(h)))
        x = nn.LayerNorm(1e-5, name="norm2")(x + nn.Dropout(0.1, deterministic=not train)(h))
        return nn.Dense(5, name="head")(x)


class NNXEncoder(nnx.Module):
    def __init__(self, heads: int = HEADS, *, rngs: nnx.Rngs):
        self.self_attn = nnx.MultiHeadAttention(heads, D_MODEL, D_MODEL, dropout_rate=0.1, decode=False, rngs=rngs)
        self.linear1 = nnx.Linear(D_MODEL, FEEDFORWARD, rngs=rngs)
        self.linear2 = nnx.Linear(FEEDFORWARD, D_MODEL, rngs=rngs)
        self.norm1 = nnx.LayerNorm(D_MODEL, epsilon=1e-5, rngs=rngs)
        self.norm2 = nnx.LayerNorm(D_MODEL, epsilon=1e-5, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(D_MODEL, 5, rngs=rngs)

    def __call__(self, x):
        x = self.norm1(x + self.dropout(self.self_attn(x)))
        x = self.norm2(x + self.dropout(self.linear2(self.dropout(nnx.relu(self.linear1(x))))))
        return self.head(x)


def linen_encoder() -> LinenEncoder:
    return LinenEncoder()


def nnx_encoder() -> NNXEncoder:
    return NNXEncoder(rngs=nnx.Rngs(0))


def linen_encoder_heads() -> LinenEncoder:
    return LinenEncoder(heads=2)


def nnx_encoder_heads() -> NNXEncoder:
    return NNXEncoder(heads=2, rngs=nnx.Rngs(0))


# --- recurrent --------------------------------------------------------------------------------------

class TorchRecurrent(torch.nn.Module):
    """An nn.LSTM or nn.GRU (batch first) and a Linear head on every step."""

    def __init__(self, cell: str = "lstm", bias: bool = True):
        super().__init__()
        self.rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(RECURRENT_INPUT[-1], HIDDEN, batch_first=True,
                                                                         bias=bias)
        self.head = torch.nn.Linear(HIDDEN, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


def torch_lstm() -> TorchRecurrent:
    torch.manual_seed(0)
    return TorchRecurrent("lstm")


def torch_gru() -> TorchRecurrent:
    torch.manual_seed(0)
    return TorchRecurrent("gru")


class LinenRecurrent(nn.Module):
    cell: str = "lstm"  # lstm, optimized_lstm, gru

    @nn.compact
    def __call__(self, x):
        cell = {"lstm": nn.LSTMCell, "optimized_lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[self.cell](HIDDEN)
        return nn.Dense(3, name="head")(nn.RNN(cell, name="rnn")(x))


class NNXRecurrent(nnx.Module):
    def __init__(self, cell: str = "lstm", *, rngs: nnx.Rngs):
        cells = {"lstm": nnx.LSTMCell, "optimized_lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell}
        self.rnn = nnx.RNN(cells[cell](RECURRENT_INPUT[-1], HIDDEN, rngs=rngs), rngs=rngs)
        self.head = nnx.Linear(HIDDEN, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.rnn(x))


def linen_lstm() -> LinenRecurrent:
    return LinenRecurrent("lstm")


def linen_optimized_lstm() -> LinenRecurrent:
    return LinenRecurrent("optimized_lstm")


def linen_gru() -> LinenRecurrent:
    return LinenRecurrent("gru")


def nnx_lstm() -> NNXRecurrent:
    return NNXRecurrent("lstm", rngs=nnx.Rngs(0))


def nnx_optimized_lstm() -> NNXRecurrent:
    return NNXRecurrent("optimized_lstm", rngs=nnx.Rngs(0))


def nnx_gru() -> NNXRecurrent:
    return NNXRecurrent("gru", rngs=nnx.Rngs(0))
