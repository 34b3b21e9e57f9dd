"""The weight mapping between a torch model and a Flax one: which torch layer is which Flax layer, and
how each tensor's layout changes, inferred or read from a TOML file; and the lossless transfer of
weights through it, in either direction.

Inference: layers (sides.PARAMETERISED kinds) match by normalised name ("layer1.0.conv1" and Linen's
"layer1_0/conv1" are both layer1 · 0 · conv1) where kind and shape agree; the rest by execution
order within their kind, with a shape check after the layout transform; anything else fails with
one line and a skeleton mapping file to complete.

Layouts (torch → Flax): conv weight (O, I/g, *K) → kernel (*K, I/g, O); Linear weight (out, in) →
kernel (in, out), its rows permuted where the Linear follows a flatten of feature maps (torch
flattens (C, H, W), Flax (H, W, C): found by `flatten_permutation` from both sides' inputs);
norms' weight → scale, running_mean/var → mean/var; Embedding weight → embedding.

Mapping file (TOML):
    [layers]            # torch module name = Flax path ("/"-separated)
    "fc1" = "Dense_0"
    [flatten]           # optional: a Linear whose input is a flattened (C, H, W) feature map
    "fc1" = [16, 4, 4]
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field

import numpy as np

from cnn_parity.errors import UsageError
from parity_check.sides import PARAMETERISED, Capture

# torch tensor name → Flax variable name, per kind
TENSOR_NAMES = {
    "conv": {"weight": "kernel", "bias": "bias"},
    "dense": {"weight": "kernel", "bias": "bias"},
    "batchnorm": {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"},
    "layernorm": {"weight": "scale", "bias": "bias"},
    "groupnorm": {"weight": "scale", "bias": "bias"},
    "embedding": {"weight": "embedding"},
}


class MappingError(UsageError):
    """Inference failed: one line, plus the skeleton mapping file the user completes."""

    def __init__(self, message: str, skeleton: str):
        super().__init__(message)
        self.skeleton = skeleton


@dataclass
class LayerMap:
    torch_name: str
    flax_path: str
    kind: str
    matched_by: str  # "name", "order" or "file"
    flatten: tuple[int, int, int] | None = None  # (C, H, W) of a Linear's flattened input

    def to_dict(self) -> dict:
        return {"torch_name": self.torch_name, "flax_path": self.flax_path, "kind": self.kind,
                "matched_by": self.matched_by, "flatten": list(self.flatten) if self.flatten else None}


@dataclass
class Mapping:
    layers: list[LayerMap] = field(default_factory=list)

    def by_torch(self, name: str) -> LayerMap | None:
        return next((m for m in self.layers if m.torch_name == name), None)

    def to_toml(self) -> str:
        lines = ["[layers]"] + [f'"{m.torch_name}" = "{m.flax_path}"' for m in self.layers]
        flat = [m for m in self.layers if m.flatten]
        if flat:
            lines += ["", "[flatten]"] + [f'"{m.torch_name}" = {list(m.flatten)}' for m in flat]
        return "\n".join(lines) + "\n"


def normalised(name: str) -> tuple[str, ...]:
    return tuple(t for t in re.split(r"[./_]+", name.lower()) if t)


def flatten_permutation(chw: tuple[int, int, int] | None, features: int) -> np.ndarray:
    """perm with flax_input = torch_input[..., perm] (identity without a flatten)."""
    if chw is None:
        return np.arange(features)
    return np.arange(features).reshape(chw).transpose(1, 2, 0).ravel()


def torch_to_flax_tensor(kind: str, name: str, array: np.ndarray, chw=None) -> np.ndarray:
    if name == "weight" and kind == "conv":
        return array.transpose(*range(2, array.ndim), 1, 0)
    if name == "weight" and kind == "dense":
        return array.T[flatten_permutation(chw, array.shape[1])]
    return array


def flax_to_torch_tensor(kind: str, name: str, array: np.ndarray, chw=None) -> np.ndarray:
    if name == "weight" and kind == "conv":
        return array.transpose(array.ndim - 1, array.ndim - 2, *range(array.ndim - 2))
    if name == "weight" and kind == "dense":
        return array[np.argsort(flatten_permutation(chw, array.shape[0]))].T
    return array


def layer_to_flax(kind: str, arrays: dict[str, np.ndarray], chw=None) -> dict[str, np.ndarray]:
    names = TENSOR_NAMES[kind]
    return {names[k]: np.ascontiguousarray(torch_to_flax_tensor(kind, k, v, chw)) for k, v in arrays.items() if k in names}


def layer_to_torch(kind: str, arrays: dict[str, np.ndarray], chw=None) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(flax_to_torch_tensor(kind, k, arrays[f], chw))
            for k, f in TENSOR_NAMES[kind].items() if f in arrays}


def _fits(torch_params: dict[str, np.ndarray], kind: str, flax_vars: dict[str, np.ndarray]) -> bool:
    converted = layer_to_flax(kind, torch_params)
    return bool(converted) and all(k in flax_vars and flax_vars[k].shape == v.shape for k, v in converted.items())


def infer(torch_layers: list[Capture], flax_layers: list[Capture], torch_params, flax_vars) -> Mapping:
    """Match parameterised layers (execution order on both sides); `torch_params(name)` and
    `flax_vars(path)` give a layer's arrays. Raises MappingError with a skeleton when layers remain."""
    torch_left = [c for c in torch_layers if c.kind in PARAMETERISED]
    flax_left = [c for c in flax_layers if c.kind in PARAMETERISED]
    matched: dict[str, LayerMap] = {}
    flax_by_name = {normalised(c.name): c for c in flax_left}
    for t in torch_left:
        f = flax_by_name.get(normalised(t.name))
        if f is not None and f.kind == t.kind and _fits(torch_params(t.name), t.kind, flax_vars(f.name)):
            matched[t.name] = LayerMap(t.name, f.name, t.kind, "name")
    used = {m.flax_path for m in matched.values()}
    torch_left = [t for t in torch_left if t.name not in matched]
    flax_left = [f for f in flax_left if f.name not in used]
    for kind in PARAMETERISED:
        ts = [t for t in torch_left if t.kind == kind]
        fs = [f for f in flax_left if f.kind == kind]
        if len(ts) == len(fs) and all(_fits(torch_params(t.name), kind, flax_vars(f.name)) for t, f in zip(ts, fs)):
            matched.update({t.name: LayerMap(t.name, f.name, kind, "order") for t, f in zip(ts, fs)})
    unmapped = [t for t in torch_left if t.name not in matched]
    used = {m.flax_path for m in matched.values()}
    spare = [f for f in flax_layers if f.kind in PARAMETERISED and f.name not in used]
    if spare and not unmapped:
        raise MappingError(f"the Flax model's layer(s) {', '.join(f.name for f in spare[:4])} have no torch counterpart: "
                           "their parameters would be left unmapped", skeleton(torch_layers, spare, matched))
    if unmapped:
        raise MappingError(
            f"cannot map {len(unmapped)} torch layer(s) ({', '.join(t.name for t in unmapped[:4])}"
            f"{', ...' if len(unmapped) > 4 else ''}) to Flax by name or by order within their kind; "
            "complete the skeleton mapping and pass it with --mapping", skeleton(torch_layers, spare, matched))
    order = {t.name: i for i, t in enumerate(torch_layers)}
    return Mapping(sorted(matched.values(), key=lambda m: order[m.torch_name]))


def skeleton(torch_layers: list[Capture], spare_flax: list[Capture], matched: dict[str, LayerMap]) -> str:
    lines = ["# torch module name = Flax path; fill in the empty ones", "[layers]"]
    for t in torch_layers:
        if t.kind in PARAMETERISED:
            lines.append(f'"{t.name}" = "{matched[t.name].flax_path if t.name in matched else ""}"  # {t.kind}')
    lines.append("# Flax layers not yet mapped: " + (", ".join(f"{f.name} ({f.kind})" for f in spare_flax) or "none"))
    return "\n".join(lines) + "\n"


def read_mapping(path: str | os.PathLike, torch_layers: list[Capture], flax_layers: list[Capture]) -> Mapping:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read mapping {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"mapping {path} is not TOML: {e}") from None
    layers, flatten = data.get("layers"), data.get("flatten", {})
    if not isinstance(layers, dict) or not all(isinstance(v, str) for v in layers.values()):
        raise UsageError(f"mapping {path} needs a [layers] table of \"torch name\" = \"flax path\"")
    torch_kinds = {c.name: c.kind for c in torch_layers}
    flax_kinds = {c.name: c.kind for c in flax_layers}
    result = []
    for torch_name, flax_path in layers.items():
        if torch_name not in torch_kinds:
            raise UsageError(f"mapping {path}: the torch model has no layer {torch_name!r}")
        if flax_path not in flax_kinds:
            raise UsageError(f"mapping {path}: the Flax model has no layer {flax_path!r} (for {torch_name})")
        chw = flatten.get(torch_name)
        if chw is not None and not (isinstance(chw, list) and len(chw) == 3 and all(isinstance(n, int) for n in chw)):
            raise UsageError(f"mapping {path}: flatten of {torch_name} must be [C, H, W]")
        result.append(LayerMap(torch_name, flax_path, torch_kinds[torch_name], "file", tuple(chw) if chw else None))
    missing = [c.name for c in torch_layers if c.kind in PARAMETERISED and c.name not in layers]
    if missing:
        raise UsageError(f"mapping {path} leaves torch layer(s) unmapped: {', '.join(missing)}")
    order = {t.name: i for i, t in enumerate(torch_layers)}
    return Mapping(sorted(result, key=lambda m: order[m.torch_name]))


def find_flatten(torch_input: np.ndarray, flax_input: np.ndarray, channel_counts: list[int]) -> tuple | None:
    """The (C, H, W) whose flatten permutation relates a Linear's two inputs, if they differ by one:
    C from the channel counts of the layers before it, H·W = features / C."""
    if torch_input.ndim != 2 or torch_input.shape != flax_input.shape:
        return None
    scale = max(float(np.max(np.abs(torch_input))), 1e-30)
    if np.max(np.abs(torch_input - flax_input)) <= 1e-3 * scale:
        return None
    features = torch_input.shape[1]
    for c in dict.fromkeys(reversed(channel_counts)):
        if c < 2 or features % c:
            continue
        hw = features // c
        # the permutation depends on C and H·W only; the squarest H x W is the one reported
        for h in sorted((h for h in range(1, hw + 1) if hw % h == 0), key=lambda h: abs(h - hw // h)):
            perm = flatten_permutation((c, h, hw // h), features)
            if np.max(np.abs(torch_input[:, perm] - flax_input)) <= 1e-3 * scale:
                return (c, h, hw // h)
    return None
