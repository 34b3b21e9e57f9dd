"""Layer kinds and how their weights cross between the frameworks.

A layer is a module that holds weights itself, or one of the composite kinds (attention, recurrent)
that owns its sub-modules' weights: on the torch side every module with parameters or persistent
buffers of its own, on the Flax side every module with variables of its own. Known kinds get their
own transfer rules; any other module is `generic`: its tensors are matched by name, then by shape.

Transfer rules (torch → Flax; each has its inverse, so weights cross either way):

  conv            Conv1d/2d/3d weight (O, I/g, *K) → kernel (*K, I/g, O) (grouped and depthwise alike)
  conv_transpose  ConvTranspose weight (I, O, *K) → kernel (*K, I, O) flipped in space, or with
                  transpose_kernel=True (*K, O, I) as is
  dense           Linear weight (out, in) → kernel (in, out) (DenseGeneral / LinearGeneral: reshaped to
                  its (*in, *out) axes); rows permuted where it follows a flatten of feature maps
  hf_conv1d       Hugging Face Conv1D weight, stored (in, out) → kernel (in, out)
  norms           weight → scale, bias → bias, running_mean → mean, running_var → var
  embedding       weight → embedding
  mha             MultiheadAttention in_proj_weight (3E, E) (or q/k/v_proj_weight) and in_proj_bias →
                  query/key/value kernel (E, H, E/H) and bias (H, E/H); out_proj → out kernel (H, E/H, E)
  lstm, gru       weight_ih_l0 / weight_hh_l0 (gates stacked i, f, g, o and r, z, n) → the cell's per-gate
                  or stacked kernels; torch's two biases b_ih + b_hh → the one Flax bias (GRU's n gate keeps
                  b_hn apart: it is multiplied by r)
  generic         tensors paired by name (weight ~ kernel ~ scale ~ embedding ~ gamma, bias ~ beta),
                  else by shape; as is where shapes agree, transposed where they are reversed
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

NORMS = ("batchnorm", "layernorm", "groupnorm", "rmsnorm")
COMPOSITE = ("mha", "lstm", "gru")
# Kinds whose activations hold channels on axis 1 in torch and last in Flax (rank >= 3).
CHANNEL_KINDS = ("conv", "conv_transpose", "batchnorm", "groupnorm")
# Kinds whose torch weight is a matrix applied to the last axis: its canonical form is (in, out).
MATRIX_KINDS = ("dense", "hf_conv1d")


class Misfit(Exception):
    """One line: why a torch layer's tensors do not fit a Flax layer's variables."""


@dataclass
class Rule:
    """Torch tensors (by name in the layer) ↔ Flax variables (by key in the layer: 'kernel',
    'query/kernel', 'cell/ii/kernel'), with the functions that convert one set into the other."""

    torch_names: tuple[str, ...]
    flax_keys: tuple[str, ...]
    to_flax: Callable[..., tuple]
    to_torch: Callable[..., tuple]
    layout: str = ""  # how a generic rule laid the tensor out ('same', 'transposed', 'conv')
    ambiguous: bool = False  # the shapes allowed another layout (a square matrix)


@dataclass
class Plan:
    """Every rule of one torch layer ↔ Flax layer pair, and the tensors on either side no rule uses."""

    rules: list[Rule]
    torch_only: list[str] = field(default_factory=list)
    flax_only: list[str] = field(default_factory=list)

    def to_flax(self, tensors: dict[str, np.ndarray], template: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Flax's variables from torch's tensors (rules whose tensors are not all given are left out:
        gradients have no running statistics); `template` gives the shapes and dtypes."""
        return self._convert(tensors, template, to_flax=True)

    def to_torch(self, values: dict[str, np.ndarray], template: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """torch's tensors from Flax's variables (rules whose variables are not all given are left out)."""
        return self._convert(values, template, to_flax=False)

    def _convert(self, source: dict[str, np.ndarray], template: dict[str, np.ndarray], to_flax: bool) -> dict:
        sides = ("torch", "Flax") if to_flax else ("Flax", "torch")
        out = {}
        for rule in self.rules:
            names, targets = (rule.torch_names, rule.flax_keys) if to_flax else (rule.flax_keys, rule.torch_names)
            if not all(n in source for n in names):
                continue
            try:
                converted = (rule.to_flax if to_flax else rule.to_torch)(*(source[n] for n in names))
            except (ValueError, IndexError) as e:  # a reshape or split the sizes do not allow
                raise Misfit(f"{', '.join(names)} do not fit {', '.join(targets)} ({e})") from None
            for target, value in zip(targets, converted):
                if tuple(value.shape) != tuple(template[target].shape):
                    raise Misfit(f"{target}: {tuple(value.shape)} from {sides[0]} does not fit {sides[1]}'s "
                                 f"{tuple(template[target].shape)}")
                out[target] = np.ascontiguousarray(value, dtype=template[target].dtype)
        return out


def _one(to_flax, to_torch):
    """A one-tensor rule's functions from array → array ones."""
    return (lambda a: (to_flax(a),)), (lambda a: (to_torch(a),))


def copy_rule(torch_name: str, flax_key: str, shape: tuple[int, ...] | None = None) -> Rule:
    """The tensor as it is (reshaped to `shape` in Flax, when given: e.g. a DenseGeneral bias (H, D/H))."""
    if shape is None:
        return Rule((torch_name,), (flax_key,), *_one(lambda a: a, lambda a: a))
    return Rule((torch_name,), (flax_key,), *_one(lambda a: a.reshape(shape), lambda a: a.reshape(-1)))


# --- the rules of each kind ------------------------------------------------------------------------

def flatten_permutation(chw: tuple[int, ...] | None, features: int) -> np.ndarray:
    """perm with flax_input = torch_input[..., perm] (identity without a flatten): torch flattens
    (C, *S), Flax (*S, C)."""
    if chw is None:
        return np.arange(features)
    return np.moveaxis(np.arange(features).reshape(chw), 0, -1).ravel()


def _split(shape: tuple[int, ...], inputs: int, outputs: int) -> int | None:
    """Where a (*in, *out) kernel shape splits into `inputs` and `outputs` features."""
    for s in range(1, len(shape)):
        if math.prod(shape[:s]) == inputs and math.prod(shape[s:]) == outputs:
            return s
    return None


def matrix_rule(torch_name: str, flax_key: str, matrix_in_out: bool, torch_shape, flax_shape, chw=None) -> Rule:
    """A weight applied to the last axis, torch (out, in) (or (in, out) where `matrix_in_out`) ↔ a
    Flax kernel (*in, *out)."""
    fan_in, fan_out = (torch_shape if matrix_in_out else torch_shape[::-1])
    if _split(tuple(flax_shape), fan_in, fan_out) is None:
        raise Misfit(f"{flax_key} {tuple(flax_shape)} is not a ({fan_in} in, {fan_out} out) kernel")
    perm = flatten_permutation(chw, fan_in)
    inverse = np.argsort(perm)

    def to_flax(w):
        m = w if matrix_in_out else w.T
        return m[perm].reshape(flax_shape)

    def to_torch(k):
        m = k.reshape(fan_in, fan_out)[inverse]
        return m if matrix_in_out else m.T
    return Rule((torch_name,), (flax_key,), *_one(to_flax, to_torch))


def _conv_rules(t, f, tt, ft) -> list[Rule]:
    rules = [Rule(("weight",), ("kernel",), *_one(lambda w: np.moveaxis(w, (0, 1), (-1, -2)),
                                                  lambda k: np.moveaxis(k, (-1, -2), (0, 1))))]
    return rules + _bias(tt, ft)


def _conv_transpose_rules(t, f, tt, ft) -> list[Rule]:
    if getattr(t, "groups", 1) != 1:
        raise Misfit("a grouped transposed convolution has no Flax ConvTranspose counterpart")
    spatial = tuple(range(2, tt["weight"].ndim))
    if getattr(f, "transpose_kernel", False):  # lax.conv_transpose flips and swaps itself: (*K, O, I)
        rule = Rule(("weight",), ("kernel",), *_one(lambda w: np.moveaxis(w, (0, 1), (-1, -2)),
                                                    lambda k: np.moveaxis(k, (-1, -2), (0, 1))))
    else:  # the gradient of a convolution is a convolution with the kernel flipped in space: (*K, I, O)
        rule = Rule(("weight",), ("kernel",), *_one(lambda w: np.moveaxis(np.flip(w, spatial), (0, 1), (-2, -1)),
                                                    lambda k: np.flip(np.moveaxis(k, (-2, -1), (0, 1)), spatial)))
    return [rule] + _bias(tt, ft)


def _bias(tt, ft, shape=None) -> list[Rule]:
    return [copy_rule("bias", "bias", shape)] if "bias" in tt and "bias" in ft else []


def _matrix_rules(kind, t, f, tt, ft, chw) -> list[Rule]:
    if "kernel" not in ft:
        raise Misfit("no kernel")
    rules = [matrix_rule("weight", "kernel", kind == "hf_conv1d", tt["weight"].shape, ft["kernel"].shape, chw)]
    if "bias" in tt and "bias" in ft:
        rules.append(copy_rule("bias", "bias", ft["bias"].shape))
    return rules


NORM_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _norm_rules(t, f, tt, ft) -> list[Rule]:
    return [copy_rule(n, NORM_NAMES[n], ft[NORM_NAMES[n]].shape) for n in tt
            if n in NORM_NAMES and NORM_NAMES[n] in ft and tt[n].size == ft[NORM_NAMES[n]].size]


def _embedding_rules(t, f, tt, ft) -> list[Rule]:
    return [copy_rule("weight", "embedding")] if "weight" in tt and "embedding" in ft else []


def _mha_rules(t, f, tt, ft) -> list[Rule]:
    if not {"query/kernel", "key/kernel", "value/kernel", "out/kernel"} <= set(ft):
        raise Misfit("not a multi-head attention's query/key/value/out")
    rules = []
    if "in_proj_weight" in tt:  # packed: the rows of q, k and v stacked
        kernels = [ft[f"{p}/kernel"].shape for p in ("query", "key", "value")]
        e = tt["in_proj_weight"].shape[0] // 3

        def split(w):
            return tuple(w[i * e:(i + 1) * e].T.reshape(s) for i, s in enumerate(kernels))
        rules.append(Rule(("in_proj_weight",), ("query/kernel", "key/kernel", "value/kernel"), split,
                          lambda *ks: (np.concatenate([k.reshape(k.shape[0], -1).T for k in ks]),)))
    else:
        for name, part in (("q_proj_weight", "query"), ("k_proj_weight", "key"), ("v_proj_weight", "value")):
            rules.append(matrix_rule(name, f"{part}/kernel", False, tt[name].shape, ft[f"{part}/kernel"].shape))
    if "in_proj_bias" in tt and {"query/bias", "key/bias", "value/bias"} <= set(ft):
        biases = [ft[f"{p}/bias"].shape for p in ("query", "key", "value")]
        rules.append(Rule(("in_proj_bias",), ("query/bias", "key/bias", "value/bias"),
                          lambda b: tuple(part.reshape(s) for part, s in zip(np.split(b, 3), biases)),
                          lambda *bs: (np.concatenate([b.ravel() for b in bs]),)))
    rules.append(matrix_rule("out_proj.weight", "out/kernel", False, tt["out_proj.weight"].shape, ft["out/kernel"].shape))
    if "out_proj.bias" in tt and "out/bias" in ft:
        rules.append(copy_rule("out_proj.bias", "out/bias"))
    return rules


def _gates(w, n):
    return np.split(w, n, axis=0)


def _recurrent_rules(kind, t, f, tt, ft) -> list[Rule]:
    """nn.LSTM / nn.GRU (one layer, one direction) ↔ nn.RNN over LSTMCell, OptimizedLSTMCell or GRUCell."""
    if getattr(t, "num_layers", 1) != 1 or getattr(t, "bidirectional", False) or getattr(t, "proj_size", 0):
        raise Misfit(f"only a one-layer, one-direction nn.{'LSTM' if kind == 'lstm' else 'GRU'} maps to one nn.RNN")
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    if not set(names[:2]) <= set(tt):
        raise Misfit("no weight_ih_l0 / weight_hh_l0")
    biased = set(names[2:]) <= set(tt)
    gates = ("i", "f", "g", "o") if kind == "lstm" else ("r", "z", "n")
    n = len(gates)
    if "cell/dense_i/kernel" in ft:  # NNX OptimizedLSTMCell / GRUCell: gates stacked on one kernel
        ih_bias, hh_bias = "cell/dense_i/bias" in ft, "cell/dense_h/bias" in ft
        if kind == "lstm":  # y = dense_i(x) + dense_h(h): one bias, on either dense
            bias_key = "cell/dense_h/bias" if hh_bias else "cell/dense_i/bias" if ih_bias else None

            def to_flax(wi, wh, *b):
                out = (wi.T, wh.T)
                return out + ((b[0] + b[1]),) if b else out

            def to_torch(ki, kh, *b):
                out = (ki.T, kh.T)
                return out + (b[0], np.zeros_like(b[0])) if b else out
            keys = ("cell/dense_i/kernel", "cell/dense_h/kernel") + ((bias_key,) if biased and bias_key else ())
            return [Rule(names if biased and bias_key else names[:2], keys, to_flax, to_torch)]
        # nnx.GRUCell: dense_i has the bias of r, z, n; dense_h has none, so b_hn has no place
        if biased and ih_bias and not hh_bias:
            raise Misfit("nnx.GRUCell has no bias on its hidden transform, so torch's b_hn (bias_hh_l0[2H:]) has no "
                         "place: use flax.linen.GRUCell, or a torch GRU with bias=False")

        def to_flax_gru(wi, wh, *b):
            return (wi.T, wh.T) + ((b[0],) if b else ())

        def to_torch_gru(ki, kh, *b):
            return (ki.T, kh.T) + ((b[0], np.zeros_like(b[0])) if b else ())
        keys = ("cell/dense_i/kernel", "cell/dense_h/kernel") + (("cell/dense_i/bias",) if biased and ih_bias else ())
        return [Rule(names if biased and ih_bias else names[:2], keys, to_flax_gru, to_torch_gru)]

    # Linen cells (and NNX LSTMCell): one Dense per gate, named i<gate> and h<gate> ('if_' in NNX)
    def key(prefix, gate, what):
        for name in (f"{prefix}{gate}", f"{prefix}{gate}_"):
            if f"cell/{name}/{what}" in ft:
                return f"cell/{name}/{what}"
        raise Misfit(f"no cell/{prefix}{gate}/{what}")
    ih_keys = tuple(key("i", g, "kernel") for g in gates)
    hh_keys = tuple(key("h", g, "kernel") for g in gates)
    bias_keys = tuple(k.replace("/kernel", "/bias") for k in ih_keys + hh_keys)
    present = tuple(k for k in bias_keys if k in ft)
    rules = [Rule(("weight_ih_l0",), ih_keys, lambda w: tuple(g.T for g in _gates(w, n)),
                  lambda *ks: (np.concatenate([k.T for k in ks]),)),
             Rule(("weight_hh_l0",), hh_keys, lambda w: tuple(g.T for g in _gates(w, n)),
                  lambda *ks: (np.concatenate([k.T for k in ks]),))]
    if not biased:
        return rules
    if kind == "lstm":  # the h-gates hold b_ih + b_hh
        want = tuple(k.replace("/kernel", "/bias") for k in hh_keys)
        if not set(want) <= set(present):
            raise Misfit("the LSTM cell has no gate biases")
        rules.append(Rule(names[2:], want, lambda bi, bh: tuple(_gates(bi + bh, n)),
                          lambda *bs: (np.concatenate(bs), np.zeros(sum(b.size for b in bs), bs[0].dtype))))
        return rules
    # Linen GRUCell: ir, iz hold b_ir + b_hr, b_iz + b_hz; in holds b_in; hn holds b_hn
    want = (key("i", "r", "bias"), key("i", "z", "bias"), key("i", "n", "bias"), key("h", "n", "bias"))

    def gru_to_flax(bi, bh):
        (ir, iz, in_), (hr, hz, hn) = _gates(bi, 3), _gates(bh, 3)
        return ir + hr, iz + hz, in_, hn

    def gru_to_torch(r, z, in_, hn):
        return np.concatenate([r, z, in_]), np.concatenate([np.zeros_like(r), np.zeros_like(z), hn])
    rules.append(Rule(names[2:], want, gru_to_flax, gru_to_torch))
    return rules


# --- generic: tensors paired by name, then by shape ----------------------------------------------------

SYNONYMS = {"weight": "w", "kernel": "w", "scale": "w", "embedding": "w", "gamma": "w", "g": "w",
            "bias": "b", "beta": "b", "running_mean": "mean", "running_var": "var"}


def _name(name: str) -> str:
    last = name.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return SYNONYMS.get(last, re.sub(r"[^a-z0-9]", "", last.lower()))


def layout_choices(torch_kind: str, torch_name: str, torch_shape, flax_shape) -> list[str]:
    """How a torch tensor may lie in a Flax variable, most likely first: 'same', 'transposed' (2-D,
    reversed), 'conv' (O, I, *K) → (*K, I, O)."""
    t, f = tuple(torch_shape), tuple(flax_shape)
    out = []
    if len(t) == 2 and t[::-1] == f:
        out.append("transposed")
    if t == f:
        out.append("same")
    if len(t) >= 3 and t[2:] + (t[1], t[0]) == f:
        out.append("conv")
    if torch_kind == "hf_conv1d" and "same" in out:  # stored (in, out) already
        out.remove("same")
        out.insert(0, "same")
    return out


LAYOUTS = {
    "same": (lambda a: a, lambda a: a),
    "transposed": (lambda a: a.T, lambda a: a.T),
    "conv": (lambda a: np.moveaxis(a, (0, 1), (-1, -2)), lambda a: np.moveaxis(a, (-1, -2), (0, 1))),
}


def _generic_rules(tk, tt, ft, preferred: Callable[[str], str | None]) -> list[Rule]:
    """`preferred(torch_name)`: the layout learned from this pair of classes elsewhere, if any."""
    rules, left = [], dict(ft)

    def add(name, key):
        choices = layout_choices(tk, name, tt[name].shape, left[key].shape)
        if not choices:
            return False
        want = preferred(name)
        layout = want if want in choices else choices[0]
        rules.append(Rule((name,), (key,), *_one(*LAYOUTS[layout]), layout=layout, ambiguous=len(choices) > 1))
        del left[key]
        return True

    unpaired = []
    for name in tt:
        same = [k for k in left if _name(k) == _name(name)]
        if not (len(same) == 1 and add(name, same[0])):
            unpaired.append(name)
    for name in unpaired:  # by shape, where exactly one Flax variable fits
        fitting = [k for k in left if layout_choices(tk, name, tt[name].shape, left[k].shape)]
        if len(fitting) == 1:
            add(name, fitting[0])
    return rules


# --- a pair of layers -------------------------------------------------------------------------------

def plan(torch_kind: str, flax_kind: str, torch_module, flax_module, torch_tensors: dict, flax_vars: dict,
         chw=None, preferred: Callable[[str], str | None] = lambda name: None) -> Plan:
    """The rules that carry `torch_tensors` into `flax_vars` (arrays or shapes), or Misfit. Tensors
    no rule uses are listed (a bias on one side only); a pair where no rule applies does not fit."""
    tt, ft = torch_tensors, flax_vars
    if torch_kind in MATRIX_KINDS and flax_kind == "dense":
        rules = _matrix_rules(torch_kind, torch_module, flax_module, tt, ft, chw)
    elif torch_kind == flax_kind == "conv":
        rules = _conv_rules(torch_module, flax_module, tt, ft)
    elif torch_kind == flax_kind == "conv_transpose":
        rules = _conv_transpose_rules(torch_module, flax_module, tt, ft)
    elif torch_kind in NORMS and flax_kind == torch_kind:
        rules = _norm_rules(torch_module, flax_module, tt, ft)
    elif torch_kind == flax_kind == "embedding":
        rules = _embedding_rules(torch_module, flax_module, tt, ft)
    elif torch_kind == flax_kind == "mha":
        rules = _mha_rules(torch_module, flax_module, tt, ft)
    elif torch_kind == flax_kind and torch_kind in ("lstm", "gru"):
        rules = _recurrent_rules(torch_kind, torch_module, flax_module, tt, ft)
    elif "generic" in (torch_kind, flax_kind) and not ({torch_kind, flax_kind} & set(COMPOSITE)):
        rules = _generic_rules(torch_kind, tt, ft, preferred)
    else:
        raise Misfit(f"a torch {torch_kind} layer is not a Flax {flax_kind} layer")
    if not rules and (tt or ft):
        raise Misfit("no tensor of one fits the other")
    result = Plan(rules, [n for n in tt if not any(n in r.torch_names for r in rules)],
                  [k for k in ft if not any(k in r.flax_keys for r in rules)])
    result.to_flax({n: np.zeros(np.shape(v), np.float32) for n, v in tt.items()}, ft)  # every shape fits
    return result
