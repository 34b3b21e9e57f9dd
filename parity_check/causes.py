"""Causes, not just numbers: a lint of both models' configuration (each finding tied to a layer, with a
one-line fix), and the probes that name the likely cause of the first divergence, with evidence.

Where the difference is introduced by a layer (the Flax layer alone disagrees): its configuration
(lint), its weights in a known wrong layout (a kernel copied or reshaped instead of transposed, spatial
axes swapped, a variance converted as a standard deviation, recurrent gates reordered), a BatchNorm
on batch statistics in eval mode, an attention's head count or scale, a bias on one side only.
Where it enters between layers (inherited): the torch operations in between are replayed from
torch's layer outputs with one change at a time (segments.py); the change that reproduces the Flax
side's input is the cause. Where nothing fits, the report lists what was ruled out.

Cause codes: see HINTS (and training.py's OPTIMIZER_HINTS for the optimisers).
"""

from __future__ import annotations

import copy
import itertools
import math

import jax
import numpy as np
import torch

from parity_check import segments
from parity_check.bounds import compared
from parity_check.compare import to_flax_layout, to_torch_layout

HINTS = {
    "same_padding": "Flax 'SAME' pads a stride-{s} convolution asymmetrically (more at the bottom/right) where torch "
                    "pads {p} on every side: use padding=(({p}, {p}), ({p}, {p})) in Flax",
    "conv_config": "the convolutions differ in {what}: torch {t}, Flax {f}",
    "padding_mode": "torch pads this convolution's input with padding_mode='{mode}', Flax's pads with {f}: "
                    "{fix}",
    "pool_stride": "the pooling strides differ: torch {t}, Flax {f} (Flax's nn.max_pool / nn.avg_pool default to "
                   "strides=(1, 1), torch's to the window): pass strides=window_shape in Flax",
    "pool_padding": "the pooling pads differently: torch {fn}(padding={t}), Flax {f}: pass padding=(({t0}, {t0}), "
                    "...) to Flax's pooling (max-pooling pads with -inf on both sides)",
    "pool_ceil_mode": "torch pools with ceil_mode={t} (ceil_mode=True keeps the last partial window), Flax as with "
                      "{f}: Flax has no ceil_mode; pad the bottom/right (-inf for max, and count only real cells for "
                      "average) or use ceil_mode=False",
    "count_include_pad": "the average pooling counts the padding differently: torch count_include_pad={t}, Flax as "
                         "with {f}: pass count_include_pad={t} to nn.avg_pool",
    "pool_type": "torch pools with {t}, Flax with {f}",
    "softmax_axis": "torch's {fn} runs over axis {t} (of torch's layout), Flax's over what is torch's axis {f}: "
                    "take Flax's axis from the layout (channels-last moves axis 1 to -1)",
    "residual_order": "the residual addition and the activation come in another order: torch applies the activation "
                      "{t} the addition, Flax {f} it: in a ResNet block, relu(out + shortcut)",
    "attention_scale": "the attention scores are scaled by {f:.4g} in Flax, by {t:.4g} in torch (1/sqrt(head size)): "
                       "scale by 1/sqrt(head size)",
    "attention_heads": "the attention splits {d} features into {t} heads in torch and {f} in Flax: num_heads={t}",
    "activation": "torch applies {t} here, Flax {f}: use {t} in Flax",
    "missing_transpose": "the Flax kernel is torch's (out, in) weight as is or reshaped: a Linear weight must be "
                         "transposed to (in, out) (a square one fits either way, a reshape fits any, so only the "
                         "numbers show it)",
    "flatten_order": "the Linear after a flatten needs its input rows permuted: torch flattens (C, H, W), Flax "
                     "(H, W, C); kernel = weight.T reshaped (C, H, W, out), transposed to (H, W, C, out), flattened",
    "kernel_layout": "the conv kernel's spatial axes are swapped: OIHW goes to HWIO with transpose(2, 3, 1, 0)",
    "kernel_reshaped": "the conv kernel is torch's (O, I, *K) weight reshaped to Flax's (*K, I, O) shape, not "
                       "transposed: kernel = weight.transpose(2, 3, 1, 0) (2-D; K axes first, then I, O)",
    "bn_var_as_std": "the running variance went over as a standard deviation (sqrt(running_var)): var = running_var",
    "gate_order": "the recurrent kernels' gates are in another order: torch stacks them {t}, the Flax kernels hold "
                  "them as {f}",
    "batch_stats_in_eval": "Flax's BatchNorm normalises by the batch's own statistics in eval mode (torch's eval "
                           "uses running_mean / running_var): use_running_average=not train",
    "missing_bias": "torch's {name} has no Flax counterpart (the Flax layer has no bias): use_bias=True",
    "extra_bias": "the Flax layer has a bias ({name}) that torch's layer lacks (bias=False): use_bias=False",
    "norm_eps": "{kind} eps differs: torch {t}, Flax {f}: set epsilon={t} in Flax",
    "norm_axis": "the normalisation runs over other axes: torch over {t}, Flax over {f} (axes of the input as each "
                 "side holds it)",
    "bn_momentum": "BatchNorm momentum conventions are opposite: torch's momentum {t} is Flax's momentum={want} "
                   "(Flax has {f}): running statistics will drift apart in training",
    "bn_frozen_in_train": "Flax's BatchNorm kept its running statistics through a train-mode step (it ran on "
                          "use_running_average=True in train mode), torch's moved: pass the train flag down to it "
                          "(use_running_average=not train)",
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
    "non_finite": "the Flax side computes nan or inf here where torch's values are finite",
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
# Findings that change the eval-mode forward (bn_momentum, for one, only shows in training).
FORWARD = {"same_padding", "conv_config", "padding_mode", "norm_eps", "norm_axis", "attention_heads", "gelu_approximation",
           "dropout_on", "missing_bias", "extra_bias", "batch_stats_in_eval", "dropout_rate"}
# What the probes at a layer and between layers try, for the report's "ruled out".
LAYER_PROBES = "weight layouts (copied, reshaped or spatially swapped kernels, variance as std, gate order), batch " \
               "statistics in eval mode, attention heads and scale, the layer's settings"
SEGMENT_PROBES = "activations swapped, pooling stride / padding / ceil_mode / count_include_pad / type, softmax axis, " \
                 "residual order, scaling constants, head count"


def finding(cause: str, torch_name: str | None, flax_path: str | None, severity: str = "error", **fields) -> dict:
    return {"cause": cause, "torch_name": torch_name, "flax_path": flax_path, "severity": severity,
            "hint": HINTS[cause].format(**fields)}


def _pairs(pair):
    for m in pair.mapping.layers:
        t, f = pair.torch_caps.get(m.torch_name), pair.flax_caps.get(m.flax_path)
        if t is not None and f is not None:
            yield m, t, f


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


# --- lint ----------------------------------------------------------------------------------------------

def lint(pair) -> list[dict]:
    """Configuration findings over mapped layers, the functional operations between them, and the
    frameworks' settings."""
    out = []
    for m, t, f in _pairs(pair):
        args = (m.torch_name, m.flax_path)
        module, fm = t.module, f.module
        if m.kind == "conv" and m.flax_kind == "conv":
            out += _lint_conv(module, fm, f, *args)
        if m.kind in ("batchnorm", "layernorm", "groupnorm", "rmsnorm") and hasattr(fm, "epsilon"):
            eps = module.eps if getattr(module, "eps", None) is not None else float(np.finfo(np.float32).eps)
            if not np.isclose(eps, fm.epsilon, rtol=1e-6, atol=0):
                out.append(finding("norm_eps", *args, kind=type(module).__name__, t=eps, f=fm.epsilon))
        if m.kind == "layernorm" and hasattr(fm, "reduction_axes"):
            out += _lint_norm_axes(module, fm, t, *args)
        if m.kind == "batchnorm" and module.momentum is not None and hasattr(fm, "momentum") \
                and not np.isclose(fm.momentum, 1 - module.momentum):
            out.append(finding("bn_momentum", *args, t=module.momentum, want=round(1 - module.momentum, 6), f=fm.momentum))
        if m.kind == "mha" and getattr(fm, "num_heads", module.num_heads) != module.num_heads:
            out.append(finding("attention_heads", *args, d=module.embed_dim, t=module.num_heads, f=fm.num_heads))
        if m.plan is not None:
            for name in m.plan.torch_only:
                if name.rsplit(".", 1)[-1].startswith("bias"):
                    out.append(finding("missing_bias", *args, name=f"{m.torch_name}.{name}"))
            for key in m.plan.flax_only:
                if key.rsplit("/", 1)[-1] == "bias":
                    out.append(finding("extra_bias", *args, name=f"{m.flax_path}/{key}"))
    if pair.flax.batch_stats_in_eval is not None:
        path = pair.flax.batch_stats_in_eval
        m = next((m for m in pair.mapping.layers if m.flax_path == path), None)
        out.append(finding("batch_stats_in_eval", m.torch_name if m else None, path))
    out += _lint_functions(pair)
    out += _lint_dropout_modules(pair)
    out += _lint_settings(pair)
    return out


def _lint_conv(t, f, capture, torch_name, flax_path) -> list[dict]:
    n = t.weight.ndim - 2
    strides = _tuple(f.strides or 1, n)
    padding = f.padding
    out = []
    if isinstance(padding, str) and padding.upper() == "SAME" and max(strides) > 1 and isinstance(t.padding, tuple) \
            and max(t.kernel_size) > 1:
        out.append(finding("same_padding", torch_name, flax_path, s=max(strides), p=t.padding[0]))
    for what, tv, fv in (("stride", tuple(t.stride), strides),
                         ("dilation", tuple(t.dilation), _tuple(f.kernel_dilation or 1, n)),
                         ("groups", t.groups, f.feature_group_count)):
        if tv != fv:
            out.append(finding("conv_config", torch_name, flax_path, what=what, t=tv, f=fv))
    explicit = None if isinstance(padding, str) else tuple(
        tuple(p) if isinstance(p, (tuple, list)) else (p, p) for p in _tuple(padding, n))
    if t.padding_mode != "zeros":
        circular = isinstance(padding, str) and padding.upper() == "CIRCULAR"
        flax_pads = explicit is not None and any(any(p) for p in explicit) or isinstance(padding, str) \
            and padding.upper() == "SAME"
        if (t.padding_mode == "circular" and not circular and flax_pads) or (t.padding_mode != "circular" and flax_pads):
            mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[t.padding_mode]
            fix = ("padding='CIRCULAR'" if t.padding_mode == "circular" else
                   f"jnp.pad(x, ..., mode='{mode}') before the convolution, with padding='VALID'")
            out.append(finding("padding_mode", torch_name, flax_path, mode=t.padding_mode, f="zeros", fix=fix))
    elif explicit is not None and isinstance(t.padding, tuple) and explicit != tuple((p, p) for p in t.padding):
        out.append(finding("conv_config", torch_name, flax_path, what="padding", t=t.padding, f=explicit))
    return out


def _lint_norm_axes(t, f, capture, torch_name, flax_path) -> list[dict]:
    rank = capture.input.ndim
    torch_axes = tuple(range(rank - len(t.normalized_shape), rank))
    flax_axes = tuple(sorted(a % rank for a in _tuple(f.reduction_axes, 1)))
    if flax_axes != torch_axes:
        return [finding("norm_axis", torch_name, flax_path, t=torch_axes, f=flax_axes)]
    return []


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
    args, kwargs = pair.flax_inputs
    jaxpr = jax.make_jaxpr(lambda p: pair.flax.apply_fn(False)(p, args, kwargs))(pair.flax.params)
    names, stack = set(), [jaxpr.jaxpr]
    while stack:
        j = stack.pop()
        for eqn in j.eqns:
            names.add(eqn.primitive.name)
            stack += [v.jaxpr if hasattr(v, "jaxpr") else v for v in eqn.params.values()
                      if type(v).__name__ in ("ClosedJaxpr", "Jaxpr")]
    return names


def _lint_functions(pair) -> list[dict]:
    out, seen = [], set()
    primitives = None
    for (_, name, positional, settings), layer in _segments(pair):
        flax_path = pair.mapping.by_torch(layer).flax_path if layer else None
        if name == "gelu" and "gelu" not in seen:
            try:
                primitives = primitives if primitives is not None else _flax_primitives(pair)
            except Exception:  # noqa: BLE001 (a model that cannot be traced: the probes still look)
                primitives = set()
            exact = settings.get("approximate", "none") == "none"
            flax_exact = bool({"erf", "erfc"} & primitives)
            flax_gelu = flax_exact != ("tanh" in primitives)  # one form of GELU, not none or both
            if primitives and flax_gelu and exact != flax_exact:
                seen.add("gelu")
                out.append(finding("gelu_approximation", layer, flax_path,
                                   t="exact (erf)" if exact else "tanh approximation",
                                   f="exact (erf)" if flax_exact else "tanh approximation"))
        if name == "dropout" and settings.get("training", True) and not pair.torch.model.training and "dropout" not in seen:
            seen.add("dropout")
            out.append(finding("dropout_on", layer, flax_path, side="torch", where="F.dropout with training=True"))
    return out


def _lint_dropout_modules(pair) -> list[dict]:
    """A dropout layer whose eval-mode output is not its input; dropout rates that differ."""
    out = []
    if not pair.train:
        for side, caps in (("torch", pair.torch_caps), ("Flax", pair.flax_caps)):
            for c in caps.values():
                if c.kind == "dropout" and (c.input.shape != c.output.shape or not np.array_equal(c.input, c.output)):
                    layer = _next_layer(pair, c.name if side == "torch" else None, c)
                    out.append(finding("dropout_on", layer, pair.mapping.by_torch(layer).flax_path if layer else None,
                                       side=side, where=c.name))
    flax_rates = {float(getattr(c.module, "rate", 0)) for c in pair.flax_caps.values() if c.kind == "dropout"}
    for t_name, t in pair.torch_caps.items():
        if t.kind == "dropout" and flax_rates and t.module.p not in flax_rates:
            out.append(finding("dropout_rate", t_name, None, t=t.module.p, f=sorted(flax_rates)[0]))
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
        f = pair.flax_caps.get(m.flax_path)
        if f is not None and f.input.shape == capture.output.shape and np.array_equal(f.input, capture.output):
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


# --- diagnosis -------------------------------------------------------------------------------------------

def cause(code: str, hint: str | None = None, evidence: str | None = None, ruled_out: str | None = None, **fields) -> dict:
    return {"cause": code, "hint": hint if hint is not None else HINTS[code].format(**fields), "evidence": evidence,
            "ruled_out": ruled_out}


def diagnose(pair, result, findings) -> dict:
    """The cause of the first layer over its bound: {cause, hint, evidence, ruled_out}."""
    m = pair.mapping.by_torch(result.torch_name)
    own = [f for f in findings if f["torch_name"] == result.torch_name and f["cause"] in FORWARD]
    prev = _previous(pair, result.torch_name)
    t, f = pair.torch_caps[m.torch_name], pair.flax_caps[m.flax_path]
    if result.random:
        dropout = [f for f in findings if f["cause"] == "dropout_on"]
        if dropout:
            return cause("dropout_on", dropout[0]["hint"])
        return cause("dropout_on", side="torch or Flax", where=f"before {result.torch_name}")
    if np.isfinite(t.input).all() and not np.isfinite(f.input).all():
        return cause("non_finite", HINTS["non_finite"] + f", between {prev} and this layer",
                     evidence=f"{int((~np.isfinite(f.input)).sum())} of the {f.input.size} values of Flax's input")
    if np.isfinite(t.output).all() and not np.isfinite(f.output).all():
        return cause("non_finite", HINTS["non_finite"] + ", in this layer",
                     evidence=f"{int((~np.isfinite(f.output)).sum())} of the {f.output.size} values of Flax's output")
    if result.status == "introduced":
        probed = probe_layer(pair, m, t, f)
        if probed:
            return probed
        if own:
            return cause(own[0]["cause"], own[0]["hint"] + _border(pair, m, t, f))
        return cause("layer_config", ruled_out=LAYER_PROBES)
    if own:
        return cause(own[0]["cause"], own[0]["hint"])
    if result.status == "inherited":
        found, ruled_out = probe_segment(pair, m, t, f, result)
        if found:
            return found
        if result.max_abs_diff == math.inf or result.input_max_abs_diff == math.inf:
            return cause("shape", prev=prev, ruled_out=ruled_out)
        return cause(None, HINTS["inherited"].format(prev=prev, this=result.torch_name), ruled_out=ruled_out)
    pooled = any("max_pool" in e[1] for e, layer in _segments(pair) if layer == result.torch_name)
    return cause("max_pool_ties" if pooled else "amplified_rounding")


def diagnose_output(pair, findings, bound: float) -> dict:
    """Every layer agrees, the outputs do not: the operations after the last layer."""
    tail = [f for f in findings if f["torch_name"] is None and f["severity"] == "error"]
    if tail:
        return cause(tail[0]["cause"], tail[0]["hint"])
    found, ruled_out = probe_output(pair, bound)
    if found:
        return found
    last = pair.mapping.layers[-1].torch_name if pair.mapping.layers else "the input"
    return cause(None, HINTS["inherited"].format(prev=last, this="the output"), ruled_out=ruled_out)


def parameters_only(pair, findings) -> dict | None:
    """The forward agrees, yet a mapped layer has a bias on one side only (it is zero now, or does not
    matter on this input): the models would part in training."""
    for f in findings:
        if f["cause"] in ("missing_bias", "extra_bias"):
            return {"torch_name": f["torch_name"], "flax_path": f["flax_path"], "kind": "parameters", "status": None,
                    "max_abs_diff": None} | cause(f["cause"], f["hint"] + " (the forward agrees on this input, but "
                                                  "the models would part in training)")
    return None


def _previous(pair, torch_name: str) -> str:
    parents = pair.torch_caps[torch_name].parents
    mapped = [m.torch_name for m in pair.mapping.layers]
    named = [p for p in mapped if p in parents] or [
        "the input" if p in ("input:0",) else f"input {p.removeprefix('input:')}" for p in sorted(parents)
        if p.startswith("input:")]
    if named:
        return ", ".join(named)
    i = mapped.index(torch_name)
    return mapped[i - 1] if i else "the input"


# --- probes at a layer ------------------------------------------------------------------------------------

def probe_layer(pair, m, t, f) -> dict | None:
    for probe in (_probe_weights, _probe_batch_statistics, _probe_attention, _probe_gates):
        found = probe(pair, m, t, f)
        if found:
            return found
    return None


def _probe_weights(pair, m, t, f) -> dict | None:
    """A mapped layer whose weights are torch's in a known wrong layout."""
    tensors, values = pair.torch.layer_tensors(m.torch_name), pair.flax.layer_vars(m.flax_path, m.flax_kind)
    if m.kind == "batchnorm" and "running_var" in tensors and "var" in values:
        var, flax_var = tensors["running_var"], values["var"]
        if var.shape == flax_var.shape and not np.allclose(var, flax_var) and np.allclose(flax_var, np.sqrt(var), rtol=1e-6):
            return cause("bn_var_as_std", evidence="Flax's var equals sqrt(torch's running_var)")
    if "weight" not in tensors or "kernel" not in values:
        return None
    w, k = tensors["weight"], values["kernel"]
    if m.kind == "dense":
        if w.size == k.size and np.array_equal(k, w.reshape(k.shape)):  # as is (square) or reshaped
            return cause("missing_transpose", evidence="Flax's kernel equals torch's weight reshaped")
        if m.flatten is not None and k.shape == w.T.shape and np.array_equal(k, w.T):
            return cause("flatten_order", evidence="Flax's kernel equals torch's weight transposed, rows unpermuted")
        return None
    if m.kind != "conv" or w.ndim < 3:
        return None
    swapped = np.moveaxis(w, (0, 1), (-1, -2))
    swapped = np.swapaxes(swapped, 0, w.ndim - 3) if w.ndim >= 4 else swapped  # spatial axes reversed
    if w.ndim >= 4 and swapped.shape == k.shape and np.array_equal(swapped, k) and not np.array_equal(
            np.moveaxis(w, (0, 1), (-1, -2)), k):
        return cause("kernel_layout", evidence="Flax's kernel equals torch's weight with its spatial axes swapped")
    if w.size == k.size and np.array_equal(k, w.reshape(k.shape)):
        return cause("kernel_reshaped", evidence="Flax's kernel equals torch's weight reshaped (not transposed)")
    return None


def _probe_batch_statistics(pair, m, t, f) -> dict | None:
    """A BatchNorm whose Flax output is torch's layer in train mode: batch statistics in eval mode."""
    if m.kind != "batchnorm" or pair.train:
        return None
    alone = _flax_alone(pair, m, t, f)
    train_mode = pair.torch.run_layer(t, list(t.inputs), train=True)[0]
    d = compared(to_flax_layout(train_mode, alone, m.kind, t.module), alone)
    if d <= 1e-5 * max(1.0, float(np.max(np.abs(train_mode)))):
        return cause("batch_stats_in_eval", evidence=f"Flax's output is torch's BatchNorm in train mode (batch "
                                                     f"statistics) to {d:.1e}")
    return None


def _flax_alone(pair, m, t, f) -> np.ndarray:
    from parity_check.compare import _run_alone  # noqa: PLC0415 (one function, shared with the comparison)

    return _run_alone(pair, t, f, m)


def _attention(x: np.ndarray, tensors: dict, heads: int, scale: float) -> np.ndarray:
    """nn.MultiheadAttention's self-attention on batch-first x (N, L, E), in float64."""
    x = x.astype(np.float64)
    e = x.shape[-1]
    w = tensors["in_proj_weight"].astype(np.float64)
    b = tensors.get("in_proj_bias", np.zeros(3 * e)).astype(np.float64)
    q, k, v = (x @ w[i * e:(i + 1) * e].T + b[i * e:(i + 1) * e] for i in range(3))

    def split(a):
        return a.reshape(*a.shape[:-1], heads, e // heads).swapaxes(-2, -3)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.swapaxes(-1, -2) * scale
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    out = (scores / scores.sum(-1, keepdims=True)) @ v
    out = out.swapaxes(-2, -3).reshape(*x.shape[:-1], e)
    return out @ tensors["out_proj.weight"].astype(np.float64).T + tensors.get("out_proj.bias", np.zeros(e))


def _probe_attention(pair, m, t, f) -> dict | None:
    """An attention whose Flax output is torch's with another head count or scale."""
    if m.kind != "mha" or "in_proj_weight" not in pair.torch.layer_tensors(m.torch_name):
        return None
    tensors = pair.torch.layer_tensors(m.torch_name)
    x = to_flax_layout(t.input, f.input, m.kind, t.module)
    if x.shape != f.input.shape or len(t.inputs) < 3 or not (np.array_equal(t.inputs[0], t.inputs[1])
                                                              and np.array_equal(t.inputs[0], t.inputs[2])):
        return None  # self-attention only
    alone = _flax_alone(pair, m, t, f)
    e, heads = t.module.embed_dim, t.module.num_heads
    scale = 1 / math.sqrt(e // heads)
    bound = 1e-4 * max(1.0, float(np.max(np.abs(alone)))) if alone.size else 0.0
    for h in (h for h in range(1, e + 1) if e % h == 0):
        for s, code in ((1 / math.sqrt(e // h), "attention_heads"), (scale, "attention_heads"), (1.0, "attention_scale"),
                        (1 / math.sqrt(e), "attention_scale"), (1 / (e // h), "attention_scale")):
            if (h, s) == (heads, scale):
                continue
            ref = _attention(x, tensors, h, s)
            if ref.shape == alone.shape and compared(ref, alone) <= bound:
                if h != heads:
                    return cause("attention_heads", evidence=f"Flax's output is torch's attention with {h} heads",
                                 d=e, t=heads, f=h)
                return cause("attention_scale", evidence=f"Flax's output is torch's attention scaled by {s:.4g}",
                             t=scale, f=s)
    return None


def _probe_gates(pair, m, t, f) -> dict | None:
    """A recurrent layer whose Flax kernels hold torch's gates in another order."""
    if m.kind not in ("lstm", "gru") or m.plan is None:
        return None
    tensors, values = pair.torch.layer_tensors(m.torch_name), pair.flax.layer_vars(m.flax_path, m.flax_kind)
    gates = ("i", "f", "g", "o") if m.kind == "lstm" else ("r", "z", "n")
    n = len(gates)
    for perm in itertools.permutations(range(n)):
        if perm == tuple(range(n)):
            continue
        shuffled = {k: (np.concatenate([np.split(v, n)[p] for p in perm]) if k.startswith(("weight", "bias")) else v)
                    for k, v in tensors.items()}
        try:
            wanted = m.plan.to_flax(shuffled, values)
        except Exception:  # noqa: BLE001 (a permutation that does not fit)
            continue
        if all(np.allclose(wanted[k], values[k]) for k in wanted):
            return cause("gate_order", evidence="Flax's kernels are torch's with the gates permuted",
                         t=", ".join(gates), f=", ".join(gates[p] for p in perm))
    return None


def _border(pair, m, t, f) -> str:
    """For a convolution: the share of its largest differences on the outer rows/columns."""
    if m.kind != "conv":
        return ""
    out_t = to_flax_layout(t.output, f.output, "conv")
    if out_t.shape != f.output.shape or out_t.ndim != 4:
        return ""
    err = np.abs(out_t.astype(np.float64) - f.output)
    border = np.zeros(err.shape[1:3], bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    share = float(err[:, border].sum() / max(err.sum(), 1e-300))
    return f" ({100 * share:.0f}% of |Δ| on the outer rows/columns, {100 * border.mean():.0f}% of the positions)"


# --- probes between layers ----------------------------------------------------------------------------------

def recording(pair) -> segments.Recording:
    """Every torch operation of one forward (made once, when a cause is looked for)."""
    if getattr(pair, "_recording", None) is None:
        model = copy.deepcopy(pair.torch.model).train(pair.train)
        layers = {name: (dict(model.named_modules())[name], kind) for name, (_, kind) in pair.torch.layers.items()}
        args, kwargs = pair.torch.call_arguments(pair.inputs)
        torch.manual_seed(0)
        pair._recording = segments.record(model, layers, args, kwargs, list(pair.inputs))
    return pair._recording


def probe_segment(pair, m, t, f, result) -> tuple[dict | None, str]:
    """Replay the torch operations that make this layer's input, one change at a time: the change
    whose result is the Flax side's input is the cause. (cause or None, what was ruled out)."""
    flatten = m.flatten if m.kind in ("dense", "hf_conv1d") else None
    return _probe(pair, lambda rec: rec.layer_inputs.get(m.torch_name), t.input,
                  to_torch_layout(f.input, t.input, m.kind, t.module, flatten), result.input_bound, m.torch_name)


def probe_output(pair, bound: float) -> tuple[dict | None, str]:
    """The same for the operations after the last layer, up to the model's (first) output."""
    torch_out, flax_out = _first(pair.torch_out), _first(pair.flax_out)
    return _probe(pair, lambda rec: rec.output, torch_out, to_torch_layout(flax_out, torch_out), bound, "the output")


def _first(out):
    return next(iter(out.values())) if isinstance(out, dict) else out


def _activation_of(rec, ops, values, torch_value, bound: float) -> str:
    """Which activation an elementwise one-source segment computes (torch's, written out or not)."""
    sources = segments.source_nodes(rec, ops)
    if len(sources) != 1:
        return "its own function"
    source = torch.as_tensor(values[rec.nodes[next(iter(sources))].source])
    for name, func in segments.ACTIVATIONS.items():
        with torch.no_grad():
            value = func(source).numpy()
        if value.shape == torch_value.shape and compared(value, torch_value) <= bound:
            return name
    return "its own function"


def _probe(pair, target_of, torch_value, flax_value, bound: float, where: str) -> tuple[dict | None, str]:
    try:
        rec = recording(pair)
    except Exception:  # noqa: BLE001 (a forward that cannot be recorded: nothing ruled out)
        return None, ""
    target = target_of(rec)
    ops = rec.ancestors(target) if target is not None else []
    if not ops:
        return None, "nothing: no torch operation between the layers to replay"
    values = {f"layer:{name}:{i}": out for name, c in pair.torch_caps.items() for i, out in enumerate(c.outputs)}
    values |= {f"input:{k}": v for k, v in pair.inputs.items()}
    try:
        base = segments.replay(rec, ops, values, target)
    except Exception:  # noqa: BLE001 (an operation that cannot be run again)
        return None, "nothing: the operations between the layers could not be replayed"
    if compared(base, torch_value) > bound:
        return None, "nothing: the operations between the layers could not be replayed exactly"
    base_diff = compared(base, flax_value) if flax_value.shape == base.shape else math.inf
    scale = float(np.max(np.abs(flax_value), initial=0)) if flax_value.size else 0.0
    best = None
    whole = segments.whole_segment_changes(rec, ops, target, _activation_of(rec, ops, values, torch_value, bound))
    for change in itertools.chain(segments.changes(rec, ops), whole):
        try:
            changed = segments.replay(rec, ops, values, target, change.change)
        except Exception:  # noqa: BLE001 (a change the operation does not accept)
            continue
        if changed.shape != flax_value.shape:
            continue
        d = compared(changed, flax_value)
        if d <= 2 * bound + 1e-6 * scale and d < base_diff and (best is None or d < best[0]):
            best = (d, change)
    if best is None:
        return None, SEGMENT_PROBES
    d, change = best
    fields = dict(change.fields)
    if change.cause == "pool_padding":
        fields["t0"] = fields["t"][0]
    if change.cause == "pool_ceil_mode":
        fields["f"] = not fields["t"]
    evidence = f"the torch operations with {change.says} give Flax's input to {where} (max|Δ| {d:.1e}, " \
               f"{base_diff:.1e} without the change)"
    return cause(change.cause, evidence=evidence, **fields), SEGMENT_PROBES
