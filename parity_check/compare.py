"""Transfer the weights, compare the two models layer by layer, find the first layer over its bound.

Every mapped layer is compared twice: in the full forward (its output on each side's own input),
and alone, the Flax layer run on the torch layer's input (layouts converted), which verifies the
mapping and the layer's configuration numerically. At the first layer over its bound the two tell
whether the error is introduced there (the layer alone disagrees), inherited (the layer alone
agrees but its inputs already differ: the operations since the previous layer) or amplified (both
agree to their bounds and the output does not).

Bounds, by default, are calibrated per layer: FLOOR_MULTIPLE x that layer's measured float32 rounding
(the torch model in float32 against the same model in float64, on the same input), and at least
MIN_RELATIVE x the layer's largest |output|. With bounds="fixed", the parity suite's forward bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnn_parity.errors import UsageError
from parity_check.bounds import calibrated_bound, diff
from parity_check.mapping import (Mapping, find_flatten, flatten_permutation, infer, layer_to_flax,
                                        layer_to_torch, read_mapping)
from parity_check.sides import CHANNEL_KINDS, Capture, FlaxSide, TorchSide
from parity_tests import bounds as fixed_bounds

DIRECTIONS = ("torch_to_flax", "flax_to_torch", "none")
LAYOUTS = ("channels_last", "same")


@dataclass
class LayerResult:
    torch_name: str
    flax_path: str
    kind: str
    max_abs_diff: float  # outputs in the full forward
    bound: float
    isolated_max_abs_diff: float  # the Flax layer alone on the torch layer's input
    isolated_bound: float
    input_max_abs_diff: float
    input_bound: float
    floor: float  # float32-vs-float64 rounding of the torch output (nan with fixed bounds)
    random: bool = False  # its output changes with the random seed (a dropout before it)
    train: bool = False  # compared in train mode

    @property
    def compared(self) -> bool:
        """In train mode the frameworks draw different dropout masks: layers after one are not compared."""
        return not (self.random and self.train)

    @property
    def over(self) -> bool:
        if not self.compared:
            return False
        return self.random or not (self.max_abs_diff <= self.bound and self.isolated_max_abs_diff <= self.isolated_bound)

    @property
    def status(self) -> str:
        if not self.isolated_max_abs_diff <= self.isolated_bound:
            return "introduced"
        return "inherited" if not self.input_max_abs_diff <= self.input_bound else "amplified"

    def to_dict(self) -> dict:
        return {k: _finite(v) for k, v in vars(self).items()} | {"compared": self.compared, "over_bound": self.over}


@dataclass
class Report:
    passed: bool
    first_divergence: dict | None
    layers: list[LayerResult]
    mapping: Mapping
    findings: list[dict] = field(default_factory=list)
    output: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    gradients: list[dict] | None = None
    training: dict | None = None
    # the weights both sides computed with, in canonical form (torch state_dict names and layouts)
    canonical_weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "first_divergence": self.first_divergence,
                "layers": [r.to_dict() for r in self.layers], "mapping": [m.to_dict() for m in self.mapping.layers],
                "output": self.output, "findings": self.findings, "settings": self.settings,
                "gradients": self.gradients, "training": self.training}

    def summary(self) -> str:
        """What the CLI prints."""
        s = self.settings
        lines = [f"mapped {len(self.mapping.layers)} layers ({_counts(self.mapping)}); weights {s['direction']}; "
                 f"bounds: {s['bounds']}"]
        lines.append(f"  {'torch layer':<22} {'flax layer':<24} {'max|Δ|':>9} {'bound':>9} {'alone':>9} {'bound':>9}")
        for r in self.layers:
            d = self.first_divergence
            mark = "  <-- " + r.status if d and d["kind"] == "forward" and r.torch_name == d["torch_name"] else ""
            mark = mark if r.compared else "  (after a train-mode dropout: not compared)"
            lines.append(f"  {r.torch_name:<22} {r.flax_path:<24} {_fmt(r.max_abs_diff)} {_fmt(r.bound)} "
                         f"{_fmt(r.isolated_max_abs_diff)} {_fmt(r.isolated_bound)}{mark}")
        if self.output:
            lines.append(f"  {'(output)':<22} {'':<24} {_fmt(self.output['max_abs_diff'])} {_fmt(self.output['bound'])}")
        if self.gradients:
            worst = max(self.gradients, key=lambda g: g["max_abs_diff"] / max(g["bound"], 1e-300))
            lines.append(f"gradients: {len(self.gradients)} (layer outputs and parameters), worst {worst['torch_name']} "
                         f"{_fmt(worst['max_abs_diff'])} (bound {_fmt(worst['bound']).strip()})")
        if self.training:
            lines.append(f"training: {self.training['steps']} steps, max loss |Δ| {_fmt(self.training['max_loss_diff']).strip()}, "
                         f"final param |Δ| {_fmt(self.training['param_diffs'][-1]).strip()}; optimizers alone: "
                         f"max |Δ| {_fmt(self.training['optimizer_only_max_abs_diff']).strip()}")
        for (cause, hint), names in _grouped(self.findings).items():
            lines.append(f"note [{cause}] {', '.join(names)}: {hint}")
        d = self.first_divergence
        if d is None:
            lines.append("PASS: the two models agree within the bounds")
        else:
            where = d["torch_name"] + (f" / {d['flax_path']}" if d["flax_path"] else "")
            lines.append(f"FAIL: first divergence ({d['kind']}) at {where}: max|Δ| {_fmt(_infinite(d['max_abs_diff'])).strip()}"
                         f"{' (' + d['status'] + ')' if d.get('status') else ''}; cause: {d['cause'] or 'unknown'}")
            lines.append(f"  hint: {d['hint']}")
        return "\n".join(lines)


def _grouped(findings: list[dict]) -> dict[tuple[str, str], list[str]]:
    """Findings with one hint, their layers together (a setting repeated in every block is one note)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for f in findings:
        groups.setdefault((f["cause"], f["hint"]), []).append(f["torch_name"] or "model")
    return groups


def _counts(mapping: Mapping) -> str:
    by = {}
    for m in mapping.layers:
        by[m.matched_by] = by.get(m.matched_by, 0) + 1
    return ", ".join(f"{n} by {k}" for k, n in by.items())


def _fmt(x: float) -> str:
    return f"{x:9.2e}" if math.isfinite(x) else f"{'shape':>9}" if x == math.inf else f"{'-':>9}"


def _infinite(v):
    return math.inf if v is None else v


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class Layout:
    """How a torch activation is laid out on the Flax side."""

    def __init__(self, flax_layout: str):
        if flax_layout not in LAYOUTS:
            raise UsageError(f"flax layout must be one of {LAYOUTS}, not {flax_layout!r}")
        self.channels_last = flax_layout == "channels_last"

    def model_input(self, x: np.ndarray) -> np.ndarray:
        return np.moveaxis(x, 1, -1) if self.channels_last and x.ndim >= 3 else x

    def activation(self, kind: str, x: np.ndarray) -> np.ndarray:
        return np.moveaxis(x, 1, -1) if self.channels_last and kind in CHANNEL_KINDS and x.ndim >= 3 else x

    def layer_input(self, kind: str, x: np.ndarray, flatten=None) -> np.ndarray:
        if kind == "dense" and flatten is not None:
            return x[..., flatten_permutation(flatten, x.shape[-1])]
        return self.activation(kind, x)

    def any(self, x_torch: np.ndarray, x_flax: np.ndarray) -> np.ndarray:
        """A dropout's or the model's output: channels moved where that makes the shapes agree."""
        if x_torch.shape != x_flax.shape and self.channels_last and x_torch.ndim >= 3:
            return np.moveaxis(x_torch, 1, -1)
        return x_torch


def transfer(mapping: Mapping, torch_side: TorchSide, flax_side: FlaxSide, direction: str) -> None:
    """Copy every mapped layer's weights across (losslessly: permutations and transposes only)."""
    for m in mapping.layers:
        if direction == "torch_to_flax":
            flax_side.set_layer_vars(m.flax_path, layer_to_flax(m.kind, torch_side.layer_params(m.torch_name), m.flatten))
        elif direction == "flax_to_torch":
            torch_side.set_layer_params(m.torch_name, layer_to_torch(m.kind, flax_side.layer_vars(m.flax_path), m.flatten))


@dataclass
class Pair:
    """Both sides after mapping and transfer, with their eval-mode captures: what every comparison starts from."""

    torch: TorchSide
    flax: FlaxSide
    mapping: Mapping
    layout: Layout
    x: np.ndarray
    torch_out: np.ndarray
    flax_out: np.ndarray
    torch_caps: dict[str, Capture]
    flax_caps: dict[str, Capture]
    events: list


def prepare(torch_model, flax_model, example_input, variables=None, direction="torch_to_flax",
            mapping: str | None = None, flax_layout: str = "channels_last", train: bool = False,
            torch_weights: dict[str, np.ndarray] | None = None) -> Pair:
    """Sides, mapping, transfer, and the forward captures (flatten orders found from them)."""
    if direction not in DIRECTIONS:
        raise UsageError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    layout = Layout(flax_layout)
    x = np.asarray(example_input)
    x = x if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)  # token ids stay integers
    torch_side = TorchSide(torch_model)
    if torch_weights is not None:
        torch_side.load_state(torch_weights)
    flax_side = FlaxSide(flax_model, variables, layout.model_input(x), initialise=direction != "torch_to_flax")
    events: list = []
    torch_out, torch_caps = torch_side.forward(x, train, events)
    flax_out, flax_caps = flax_side.forward(layout.model_input(x), train)
    if mapping is not None:
        layer_map = read_mapping(mapping, list(torch_caps.values()), list(flax_caps.values()))
    else:
        layer_map = infer(list(torch_caps.values()), list(flax_caps.values()), torch_side.layer_params, flax_side.layer_vars)
    transfer(layer_map, torch_side, flax_side, direction)
    while True:  # a Linear after a flatten: its permutation, from both sides' inputs to it
        events = []
        torch_out, torch_caps = torch_side.forward(x, train, events)
        flax_out, flax_caps = flax_side.forward(layout.model_input(x), train)
        found = _next_flatten(layer_map, torch_caps, flax_caps)
        if found is None:
            break
        transfer(layer_map, torch_side, flax_side, direction)
    return Pair(torch_side, flax_side, layer_map, layout, x, torch_out, flax_out, torch_caps, flax_caps, events)


def _next_flatten(mapping: Mapping, torch_caps, flax_caps):
    channels = []
    for m in mapping.layers:
        t, f = torch_caps[m.torch_name], flax_caps[m.flax_path]
        if m.kind in CHANNEL_KINDS and t.output.ndim >= 3:
            channels.append(t.output.shape[1])
        if m.kind == "dense" and m.flatten is None and m.matched_by != "file":
            chw = find_flatten(t.input, f.input, channels)
            if chw is not None:
                m.flatten = chw
                return m
    return None


def compare_layers(pair: Pair, bounds: str = "calibrated", train: bool = False) -> tuple[list[LayerResult], dict]:
    """Per mapped layer (execution order): full-forward, alone and input differences with their bounds; and the output's."""
    if bounds not in ("calibrated", "fixed"):
        raise UsageError(f"bounds must be calibrated or fixed, not {bounds!r}")
    t64 = pair.torch.double()
    out64, caps64 = t64.forward(_float64(pair.x), train) if bounds == "calibrated" else (None, {})
    random = _random_layers(pair, train)
    results = []
    for m in pair.mapping.layers:
        t, f = pair.torch_caps[m.torch_name], pair.flax_caps[m.flax_path]
        out_t = pair.layout.activation(m.kind, t.output)
        in_t = pair.layout.layer_input(m.kind, t.input, m.flatten)
        alone = _run_alone(pair.flax, f, in_t, train)
        if bounds == "fixed":
            bound = iso_bound = in_bound = fixed_bounds.FORWARD_ABS
            floor = math.nan
        else:
            c64 = caps64[m.torch_name]
            bound, floor = calibrated_bound(t.output, c64.output)
            iso_bound, _ = calibrated_bound(t.output, t64.run_layer(m.torch_name, _float64(t.input), train))
            in_bound, _ = calibrated_bound(t.input, c64.input)
        results.append(LayerResult(m.torch_name, m.flax_path, m.kind, diff(out_t, f.output), bound,
                                   diff(out_t, alone), iso_bound, diff(in_t, f.input), in_bound, floor,
                                   m.torch_name in random, train))
    out_t = pair.layout.any(pair.torch_out, pair.flax_out)
    out_bound = fixed_bounds.FORWARD_ABS if bounds == "fixed" else calibrated_bound(pair.torch_out, out64)[0]
    output = {"max_abs_diff": diff(out_t, pair.flax_out), "bound": out_bound}
    return results, output


def _float64(x: np.ndarray) -> np.ndarray:
    return x if np.issubdtype(x.dtype, np.integer) else x.astype(np.float64)


def _random_layers(pair: Pair, train: bool) -> set[str]:
    """Torch names of the mapped layers whose output (either side's) changes with the random seed."""
    _, torch_again = pair.torch.forward(pair.x, train, seed=1)
    _, flax_again = pair.flax.forward(pair.layout.model_input(pair.x), train, seed=1)
    return {m.torch_name for m in pair.mapping.layers
            if not np.array_equal(torch_again[m.torch_name].output, pair.torch_caps[m.torch_name].output)
            or not np.array_equal(flax_again[m.flax_path].output, pair.flax_caps[m.flax_path].output)}


def _run_alone(flax_side: FlaxSide, capture: Capture, x: np.ndarray, train: bool) -> np.ndarray:
    try:
        return flax_side.run_layer(capture, x, train)
    except (TypeError, ValueError):  # the input does not fit the layer: reported as a shape difference
        return np.full((0,), np.nan)
