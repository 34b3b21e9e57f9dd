"""Causes, not just numbers: a lint of both models' configuration (each finding tied to a layer, with
a one-line fix) and the probes that name the likely cause of the first divergence.

Cause codes: same_padding, conv_config, pool_stride, pool_ceil_mode, missing_transpose,
flatten_order, kernel_layout, norm_eps, bn_momentum, bn_unbiased_var, gelu_approximation,
dropout_on, dropout_rate, matmul_precision, x64_off, amplified_rounding, max_pool_ties, layer_config,
shape (and, for optimisers, training.py's adam_eps_root, weight_decay_coupling, weight_decay,
optimizer_hyperparameters).
"""

from __future__ import annotations

import jax
import numpy as np
import torch

HINTS = {
    "same_padding": "Flax 'SAME' pads a stride-{s} convolution asymmetrically (more at the bottom/right) where torch "
                    "pads {p} on every side: use padding=(({p}, {p}), ({p}, {p})) in Flax",
    "conv_config": "the convolutions differ in {what}: torch {t}, Flax {f}",
    "pool_stride": "Flax's nn.max_pool / nn.avg_pool default to strides=(1, 1), torch's pooling to stride=kernel_size: "
                   "pass strides=window_shape in Flax",
    "pool_ceil_mode": "torch pools with ceil_mode=True (keeps the last partial window); Flax has no ceil_mode: pad the "
                      "bottom/right with -inf (max) before pooling, or use ceil_mode=False",
    "missing_transpose": "the Flax kernel is torch's (out, in) weight as is or reshaped: a Linear weight must be transposed "
                         "to (in, out) (a square one fits either way, a reshape fits any, so only the numbers show it)",
    "flatten_order": "the Linear after a flatten needs its input rows permuted: torch flattens (C, H, W), Flax (H, W, C); "
                     "kernel = weight.T reshaped (C, H, W, out), transposed to (H, W, C, out), flattened",
    "kernel_layout": "the conv kernel's spatial axes are swapped: OIHW goes to HWIO with transpose(2, 3, 1, 0)",
    "norm_eps": "{kind} eps differs: torch {t}, Flax {f}: set epsilon={t} in Flax",
    "bn_momentum": "BatchNorm momentum conventions are opposite: torch's momentum {t} is Flax's momentum={want} "
                   "(Flax has {f}): running statistics will drift apart in training",
    "bn_unbiased_var": "torch updates running_var with the unbiased batch variance (n/(n-1)), Flax with the biased one: "
                       "after training in train mode the eval-mode outputs differ by that factor's effect",
    "gelu_approximation": "GELU differs: torch {t}, Flax {f} (flax's nn.gelu defaults to approximate=True; torch's to "
                          "the exact erf form): use nn.gelu(x, approximate=False) or torch's GELU(approximate='tanh')",
    "dropout_on": "dropout is active in eval mode on the {side} side ({where}): pass training=self.training to "
                  "F.dropout / deterministic=not train to Flax's Dropout",
    "dropout_rate": "dropout rates differ: torch p={t}, Flax rate={f}",
    "matmul_precision": "{what}: float32 matmuls and convolutions run in reduced precision; set "
                        "jax_default_matmul_precision='highest' and torch.backends.cuda.matmul.allow_tf32=False",
    "x64_off": "the torch model is float64 but jax_enable_x64 is off, so Flax computes in float32: "
               "jax.config.update('jax_enable_x64', True)",
    "amplified_rounding": "this layer's inputs agree to rounding and the layer alone agrees, yet its outputs do not: the "
                          "network magnifies float32 rounding here (ill-conditioning, or a near-tie such as equal maxima "
                          "in a max-pool window); compare in float64 or on other inputs",
    "layer_config": "the Flax layer alone computes a different function from the torch layer on the same input: compare "
                    "their settings and weights",
    "shape": "the two sides' activations have different shapes here: compare the operations since {prev}",
    "inherited": "the difference enters between {prev} and {this}: the functional operations there (activations, "
                 "pooling, reshapes, residual additions)",
}


HINTS["max_pool_ties"] = HINTS["amplified_rounding"]  # the same pattern, a max-pool among the operations before


def finding(cause: str, torch_name: str | None, flax_path: str | None, severity: str = "error", **fields) -> dict:
    return {"cause": cause, "torch_name": torch_name, "flax_path": flax_path, "severity": severity,
            "hint": HINTS[cause].format(**fields)}


def _pairs(pair):
    for m in pair.mapping.layers:
        yield m, pair.torch_caps[m.torch_name].module, pair.flax_caps[m.flax_path].module


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def lint(pair) -> list[dict]:
    """Configuration findings over mapped layers, the functional operations between them, and the
    frameworks' settings."""
    out = []
    for m, t, f in _pairs(pair):
        args = (m.torch_name, m.flax_path)
        if m.kind == "conv":
            out += _lint_conv(t, f, *args)
        if m.kind in ("batchnorm", "layernorm", "groupnorm") and not np.isclose(t.eps, f.epsilon, rtol=1e-6, atol=0):
            out.append(finding("norm_eps", *args, kind=type(t).__name__, t=t.eps, f=f.epsilon))
        if m.kind == "batchnorm" and t.momentum is not None and not np.isclose(f.momentum, 1 - t.momentum):
            out.append(finding("bn_momentum", *args, t=t.momentum, want=round(1 - t.momentum, 6), f=f.momentum))
    out += _lint_functions(pair)
    out += _lint_dropout_modules(pair)
    out += _lint_settings(pair)
    return out


def _lint_conv(t, f, torch_name, flax_path) -> list[dict]:
    n = t.weight.ndim - 2
    strides = _tuple(f.strides or 1, n)
    padding = f.padding
    out = []
    if isinstance(padding, str) and padding.upper() == "SAME" and max(strides) > 1 and isinstance(t.padding, tuple):
        out.append(finding("same_padding", torch_name, flax_path, s=max(strides), p=t.padding[0]))
    for what, tv, fv in (("stride", tuple(t.stride), strides),
                         ("dilation", tuple(t.dilation), _tuple(f.kernel_dilation or 1, n)),
                         ("groups", t.groups, f.feature_group_count)):
        if tv != fv:
            out.append(finding("conv_config", torch_name, flax_path, what=what, t=tv, f=fv))
    if not isinstance(padding, str) and isinstance(t.padding, tuple):
        pads = tuple(tuple(p) if isinstance(p, (tuple, list)) else (p, p) for p in _tuple(padding, n))
        if pads != tuple((p, p) for p in t.padding):
            out.append(finding("conv_config", torch_name, flax_path, what="padding", t=t.padding, f=pads))
    return out


def _segments(pair):
    """(function event, the mapped layer that follows it or None) in call order."""
    torch_to_flax = {m.torch_name: m.flax_path for m in pair.mapping.layers}
    pending, out = [], []
    for event in pair.events:
        if event[0] == "layer" and event[1] in torch_to_flax:
            out += [(e, event[1]) for e in pending]
            pending = []
        elif event[0] == "function":
            pending.append(event)
    return out + [(e, None) for e in pending]


def _flax_primitives(pair) -> set[str]:
    params = pair.flax.params
    jaxpr = jax.make_jaxpr(pair.flax.apply_fn(False))(params, pair.layout.model_input(pair.x))
    names, stack = set(), [jaxpr.jaxpr]
    while stack:
        j = stack.pop()
        for eqn in j.eqns:
            names.add(eqn.primitive.name)
            if eqn.primitive.name == "reduce_window_max" or eqn.primitive.name.startswith("reduce_window"):
                names.add(f"stride:{tuple(eqn.params.get('window_strides', ()))}")
            stack += [v.jaxpr if hasattr(v, "jaxpr") else v for v in eqn.params.values()
                      if type(v).__name__ in ("ClosedJaxpr", "Jaxpr")]
    return names


def _lint_functions(pair) -> list[dict]:
    out, seen = [], set()
    primitives = None
    for (_, name, positional, settings), layer in _segments(pair):
        flax_path = pair.mapping.by_torch(layer).flax_path if layer else None
        if name == "gelu" and "gelu" not in seen:
            primitives = primitives if primitives is not None else _flax_primitives(pair)
            exact = settings.get("approximate", "none") == "none"
            flax_exact = bool({"erf", "erfc"} & primitives)
            if exact != flax_exact:
                seen.add("gelu")
                out.append(finding("gelu_approximation", layer, flax_path,
                                   t="exact (erf)" if exact else "tanh approximation",
                                   f="exact (erf)" if flax_exact else "tanh approximation"))
        if name == "dropout" and settings.get("training", True) and not pair.torch.model.training and "dropout" not in seen:
            seen.add("dropout")
            out.append(finding("dropout_on", layer, flax_path, side="torch", where="F.dropout with training=True"))
        if name.endswith("pool2d") or name.endswith("pool1d"):
            if settings.get("ceil_mode") and "ceil" not in seen:
                seen.add("ceil")
                out.append(finding("pool_ceil_mode", layer, flax_path))
    return out


def _lint_dropout_modules(pair) -> list[dict]:
    """A dropout layer whose eval-mode output is not its input."""
    out = []
    if pair.torch.model.training:
        return out
    for side, caps in (("torch", pair.torch_caps), ("Flax", pair.flax_caps)):
        for c in caps.values():
            if c.kind == "dropout" and (c.input.shape != c.output.shape or not np.array_equal(c.input, c.output)):
                layer = _next_layer(pair, c.name if side == "torch" else None, c)
                out.append(finding("dropout_on", layer, pair.mapping.by_torch(layer).flax_path if layer else None,
                                   side=side, where=c.name))
    for t_name, t in pair.torch_caps.items():
        if t.kind != "dropout":
            continue
        flax_drop = [c for c in pair.flax_caps.values() if c.kind == "dropout"]
        rates = {float(getattr(c.module, "rate", 0)) for c in flax_drop}
        if flax_drop and t.module.p not in rates:
            out.append(finding("dropout_rate", t_name, None, t=t.module.p, f=sorted(rates)[0]))
    return out


def _next_layer(pair, torch_dropout: str | None, capture) -> str | None:
    """The mapped torch layer after a dropout: from the torch call order, or, for a Flax dropout, the
    first mapped layer whose Flax input is that dropout's output."""
    mapped = [m.torch_name for m in pair.mapping.layers]
    if torch_dropout is not None:
        names = [e[1] for e in pair.events if e[0] == "layer"]
        after = names[names.index(torch_dropout) + 1:]
        return next((n for n in after if n in mapped), None)
    for m in pair.mapping.layers:
        f = pair.flax_caps[m.flax_path]
        if f.input.shape == capture.output.shape and np.array_equal(f.input, capture.output):
            return m.torch_name
    return None


def _lint_settings(pair) -> list[dict]:
    out = []
    if jax.default_backend() != "cpu" and jax.config.jax_default_matmul_precision in (None, "default", "bfloat16",
                                                                                     "tensorfloat32", "fastest"):
        out.append(finding("matmul_precision", None, None, what="JAX's default matmul precision on "
                           + jax.default_backend()))
    if torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32:
        out.append(finding("matmul_precision", None, None, what="torch allows TF32"))
    if torch.float64 in pair.torch.user_dtypes and not jax.config.jax_enable_x64:
        out.append(finding("x64_off", None, None))
    return out


def diagnose(pair, result, findings) -> tuple[str | None, str]:
    """(cause, hint) of the first layer over its bound."""
    m = pair.mapping.by_torch(result.torch_name)
    own = [f for f in findings if f["torch_name"] == result.torch_name and f["severity"] == "error"]
    prev = _previous(pair, result.torch_name)
    if result.random:
        dropout = [f for f in findings if f["cause"] == "dropout_on"]
        if dropout:
            return "dropout_on", dropout[0]["hint"]
        return "dropout_on", HINTS["dropout_on"].format(side="torch or Flax", where=f"before {result.torch_name}")
    if result.status == "introduced":
        probe = _probe_weights(pair, m)
        if probe:
            return probe, HINTS[probe]
        if own:
            return own[0]["cause"], own[0]["hint"] + _border(pair, m)
        return "layer_config", HINTS["layer_config"]
    if own:
        return own[0]["cause"], own[0]["hint"]
    if result.max_abs_diff == float("inf") or result.input_max_abs_diff == float("inf"):
        pooled = [e for e, layer in _segments(pair) if layer == result.torch_name and "pool" in e[1]]
        if pooled:
            return "pool_stride", HINTS["pool_stride"]
        return "shape", HINTS["shape"].format(prev=prev)
    if result.status == "inherited":
        return None, HINTS["inherited"].format(prev=prev, this=result.torch_name)
    pooled = any("max_pool" in e[1] for e, layer in _segments(pair) if layer == result.torch_name)
    return ("max_pool_ties" if pooled else "amplified_rounding"), HINTS["amplified_rounding"]



def diagnose_output(pair, findings) -> tuple[str | None, str]:
    """Every layer agrees, the outputs do not: the operations after the last layer."""
    tail = [f for f in findings if f["torch_name"] is None and f["severity"] == "error"]
    if tail:
        return tail[0]["cause"], tail[0]["hint"]
    last = pair.mapping.layers[-1].torch_name if pair.mapping.layers else "the input"
    return None, HINTS["inherited"].format(prev=last, this="the output")


def _previous(pair, torch_name: str) -> str:
    names = [m.torch_name for m in pair.mapping.layers]
    i = names.index(torch_name)
    return names[i - 1] if i else "the input"


def _probe_weights(pair, m) -> str | None:
    """A mapped layer whose weights are torch's in a known wrong layout."""
    if m.kind not in ("dense", "conv"):
        return None
    w = pair.torch.layer_params(m.torch_name)["weight"]
    k = pair.flax.layer_vars(m.flax_path)["kernel"]
    if m.kind == "dense":
        if w.size == k.size and np.array_equal(k, w.reshape(k.shape)):  # as is (square) or reshaped
            return "missing_transpose"
        if m.flatten is not None and k.shape == w.T.shape and np.array_equal(k, w.T):
            return "flatten_order"
        return None
    swapped = w.transpose(*range(w.ndim - 1, 1, -1), 1, 0)  # (.., W, H, I, O): spatial axes reversed
    if w.ndim == 4 and w.shape[2] == w.shape[3] and swapped.shape == k.shape and np.array_equal(swapped, k):
        return "kernel_layout"
    return None


def _border(pair, m) -> str:
    """For a convolution: the share of its largest differences on the outer rows/columns."""
    if m.kind != "conv":
        return ""
    t = pair.layout.activation("conv", pair.torch_caps[m.torch_name].output)
    f = pair.flax_caps[m.flax_path].output
    if t.shape != f.shape or t.ndim != 4:
        return ""
    err = np.abs(t.astype(np.float64) - f)
    border = np.zeros(err.shape[1:3], bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    share = float(err[:, border].sum() / max(err.sum(), 1e-300))
    return f" ({100 * share:.0f}% of |Δ| on the outer rows/columns, {100 * border.mean():.0f}% of the positions)"
