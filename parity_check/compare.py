"""Both sides prepared (captured, mapped, weights transferred) and compared layer by layer.

Every mapped layer is compared twice: in the full forward (its output on each side's own input),
and alone, the Flax layer run on the torch layer's inputs (layouts converted), which verifies the
mapping and the layer's configuration numerically. At the first layer over its bound the two tell
whether the error is introduced there (the layer alone disagrees), inherited (the layer alone
agrees but its inputs already differ: the operations since the layers it reads from) or amplified
(both agree to their bounds and the output does not).

Layouts: a torch activation is compared with its Flax counterpart as they lie where the shapes
agree, with channels moved last (convolutions, batch and group norms, and wherever only that makes
the shapes agree), time-major swapped to batch-major (recurrent and attention layers built with
batch_first=False), rows permuted after a flatten, and broadcast where one side computes a value
once for the whole batch ((1, T, D) position embeddings against (B, T, D)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from cnn_parity.errors import UsageError
from parity_check.bounds import calibrated_bound, compared
from parity_check.flax_side import FlaxSide, output_arrays
from parity_check.kinds import CHANNEL_KINDS, Misfit, flatten_permutation, plan
from parity_check.mapping import Layer, Mapping, infer, read_mapping
from parity_check.torch_side import TorchSide
from parity_check.trees import Capture
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
    broadcast: bool = False  # one side's output is the other's broadcast over an axis
    nonfinite: bool = False  # either side's output holds nan or inf

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


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class Layout:
    """How the model's inputs are laid out on the Flax side."""

    def __init__(self, flax_layout: str):
        if flax_layout not in LAYOUTS:
            raise UsageError(f"flax layout must be one of {LAYOUTS}, not {flax_layout!r}")
        self.channels_last = flax_layout == "channels_last"

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """Float inputs of rank >= 3 channels-last (NCHW → NHWC); token ids and masks as they are."""
        return np.moveaxis(x, 1, -1) if self.channels_last and x.ndim >= 3 and x.dtype.kind == "f" else x

    def flax_arguments(self, inputs: dict[str, np.ndarray]) -> tuple[tuple, dict]:
        converted = {k: self.model_input(v) for k, v in inputs.items()}
        return (tuple(v for k, v in converted.items() if k.isdigit()),
                {k: v for k, v in converted.items() if not k.isdigit()})


def time_major(kind: str, module) -> bool:
    """A torch recurrent or attention layer that takes (T, N, F): Flax's take (N, T, F)."""
    return kind in ("lstm", "gru", "mha") and not getattr(module, "batch_first", False)


def to_flax_layout(x: np.ndarray, like: np.ndarray | None, kind: str = "generic", module=None,
                   flatten=None) -> np.ndarray:
    """A torch activation laid out as the Flax side holds it (`like`: the Flax counterpart, when known)."""
    if x.ndim == 0:
        return x
    if flatten is not None and x.ndim >= 2:
        return x[..., flatten_permutation(flatten, x.shape[-1])]
    candidates = []
    if time_major(kind, module) and x.ndim >= 2:
        candidates.append(np.swapaxes(x, 0, 1))
    if kind in CHANNEL_KINDS and x.ndim >= 3:
        candidates.append(np.moveaxis(x, 1, -1))
    candidates.append(x)
    if x.ndim >= 3:
        candidates.append(np.moveaxis(x, 1, -1))
    if x.ndim >= 2:  # after a time-major layer, torch's activations stay (T, N, ...)
        candidates.append(np.swapaxes(x, 0, 1))
    if like is None:
        return candidates[0]
    for c in candidates:  # the kind's own layout first, then whatever makes the shapes agree
        if c.shape == like.shape:
            return c
    for c in candidates:
        if _broadcastable(c.shape, like.shape):
            return c
    return candidates[0]


def to_torch_layout(x: np.ndarray, like: np.ndarray, kind: str = "generic", module=None, flatten=None) -> np.ndarray:
    """The inverse: a Flax activation laid out as torch holds `like` (where the shapes differ, as the
    kind lays it out)."""
    if flatten is not None and x.ndim >= 2:
        return x[..., np.argsort(flatten_permutation(flatten, x.shape[-1]))]
    swapped = [np.swapaxes(x, 0, 1)] if x.ndim >= 2 else []
    moved = [np.moveaxis(x, -1, 1)] if x.ndim >= 3 else []
    if time_major(kind, module):
        candidates = swapped + [x] + moved
    else:
        candidates = (moved + [x] if kind in CHANNEL_KINDS else [x] + moved) + swapped
    return next((c for c in candidates if c.shape == like.shape), candidates[0])


NUMPY_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def padded_input(x: np.ndarray, module, like: np.ndarray) -> np.ndarray:
    """A convolution with padding_mode reflect / replicate / circular pads its input inside: where the
    Flax port pads before its convolution (jnp.pad, then padding='VALID'), torch's input padded the
    same way is what the Flax convolution's input must equal."""
    mode = NUMPY_PAD_MODES.get(getattr(module, "padding_mode", "zeros"))
    if mode is None or not isinstance(module.padding, tuple):
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - len(module.padding)) + [(p, p) for p in module.padding], mode=mode)
    return padded if padded.shape != x.shape and to_flax_layout(padded, like, "conv").shape == like.shape else x


def _broadcastable(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and a != b and all(x == y or 1 in (x, y) for x, y in zip(a, b))


def difference(torch_value: np.ndarray, flax_value: np.ndarray) -> tuple[float, bool]:
    """(max |Δ|, whether one was broadcast to the other's shape first)."""
    if _broadcastable(torch_value.shape, flax_value.shape):
        shape = np.broadcast_shapes(torch_value.shape, flax_value.shape)
        return compared(np.broadcast_to(torch_value, shape), np.broadcast_to(flax_value, shape)), True
    return compared(torch_value, flax_value), False


# --- transfer ---------------------------------------------------------------------------------------

def transfer(mapping: Mapping, torch_side: TorchSide, flax_side: FlaxSide, direction: str) -> None:
    """Copy every mapped layer's weights across."""
    for m in mapping.layers:
        if m.plan is None or direction == "none":
            continue
        try:
            if direction == "torch_to_flax":
                template = flax_side.layer_vars(m.flax_path, m.flax_kind)
                flax_side.set_layer_vars(m.flax_path, m.plan.to_flax(torch_side.layer_tensors(m.torch_name), template))
            else:
                values = flax_side.layer_vars(m.flax_path, m.flax_kind)
                torch_side.set_layer_tensors(m.torch_name, m.plan.to_torch(values, torch_side.layer_tensors(m.torch_name)))
        except Misfit as e:
            raise UsageError(f"{m.torch_name} ↔ {m.flax_path}: {e}") from None


# --- both sides prepared ---------------------------------------------------------------------------

@dataclass
class Pair:
    """Both sides after mapping and transfer, with their captures: what every comparison starts from."""

    torch: TorchSide
    flax: FlaxSide
    mapping: Mapping
    layout: Layout
    inputs: dict[str, np.ndarray]  # torch layout; positional ones named '0', '1', ...
    torch_out: object
    flax_out: object
    torch_caps: dict[str, Capture]
    flax_caps: dict[str, Capture]
    events: list
    train: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def flax_inputs(self) -> tuple[tuple, dict]:
        return self.layout.flax_arguments(self.inputs)

    def run_torch(self, **kwargs):
        return self.torch.forward(self.inputs, self.train, **kwargs)

    def run_flax(self, **kwargs):
        args, kw = self.flax_inputs
        return self.flax.forward(args, kw, self.train, **kwargs)

    def refresh(self) -> None:
        self.events = []
        self.torch_out, self.torch_caps = self.run_torch(events=self.events)
        self.flax_out, self.flax_caps = self.run_flax()


def as_inputs(example) -> dict[str, np.ndarray]:
    """The model's inputs by name: one array (positional: '0'), a tuple or list (positional: '0',
    '1', ...) or a dict (keyword arguments)."""
    if isinstance(example, dict):
        return {str(k): np.asarray(v) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return {str(i): np.asarray(v) for i, v in enumerate(example)}
    return {"0": np.asarray(example)}


def torch_layers(side: TorchSide, captures: dict[str, Capture]) -> list[Layer]:
    order = {name: i for i, name in enumerate(captures)}
    tied = side.tied_layers()
    return [Layer(name, kind, module, side.layer_tensors(name), order.get(name, len(order) + i), name in captures,
                  captures[name].parents if name in captures else frozenset(), tied.get(name))
            for i, (name, (module, kind)) in enumerate(side.layers.items())]


def flax_layers(side: FlaxSide, captures: dict[str, Capture], parents: dict[str, frozenset]) -> list[Layer]:
    out = [Layer(c.name, c.kind, c.module, side.layer_vars(c.name, c.kind), i, True, parents.get(c.name, frozenset()))
           for i, c in enumerate(captures.values())]
    inside = [c.name for c in captures.values() if c.kind in ("mha", "lstm", "gru")] + list(side.cell_paths.values())
    for owner in sorted(side.owners() - set(captures)):  # never called: matched by name only
        if not any(owner == p or owner.startswith(p + "/") for p in inside):
            out.append(Layer(owner, "generic", None, side.layer_vars(owner, "generic"), len(out), False))
    return out


def prepare(torch_model, flax_model, example_input, variables=None, direction="torch_to_flax",
            mapping: str | None = None, flax_layout: str = "channels_last", train: bool = False,
            torch_weights: dict[str, np.ndarray] | None = None) -> Pair:
    """Sides, mapping, transfer, and the forward captures (data-flow choices resolved and flatten
    orders found from the captures)."""
    if direction not in DIRECTIONS:
        raise UsageError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    layout = Layout(flax_layout)
    inputs = {k: (v if v.dtype.kind in "iub" else v.astype(np.float32)) for k, v in as_inputs(example_input).items()}
    torch_side = TorchSide(torch_model)
    if torch_weights is not None:
        torch_side.load_state(torch_weights)
    pair = Pair(torch_side, None, Mapping(), layout, inputs, None, None, {}, {}, [], train)
    pair.torch_out, pair.torch_caps = pair.run_torch(events=pair.events)
    try:
        pair.flax = FlaxSide(flax_model, variables, layout.flax_arguments(inputs), initialise=direction != "torch_to_flax")
        flax_side = pair.flax
        args, kwargs = pair.flax_inputs
        try:  # the Flax layers and the data flow between them from one trace (nothing computed yet)
            parents, flax_calls = flax_side.lineage(args, kwargs, list(inputs), train)
        except UsageError:
            raise
        except Exception:  # noqa: BLE001 (a model that cannot be traced is mapped without its data flow)
            pair.refresh()
            parents, flax_calls = {}, pair.flax_caps
            pair.notes.append("the Flax model could not be traced, so layers were matched without their data flow")
    except UsageError as e:
        if layout.channels_last and "rejects its input" in str(e) and any(
                v.ndim >= 3 and v.dtype.kind == "f" for v in inputs.values()):
            raise UsageError(f"{e} (float inputs of rank >= 3 go to Flax channels-last by default: a (N, T, D) "
                             "sequence becomes (N, D, T); if the Flax model takes its input as torch does, pass "
                             "--flax-layout same, flax_layout=\"same\" in Python)") from None
        raise
    t_layers, f_layers = torch_layers(torch_side, pair.torch_caps), flax_layers(flax_side, flax_calls, parents)
    pair.notes += [f"{t.name} holds {t.tied_to}'s tensors (tied): they are transferred, and compared, as {t.tied_to}'s"
                   for t in t_layers if t.tied_to]
    if mapping is not None:
        pair.mapping = read_mapping(mapping, t_layers, f_layers)
    else:
        pair.mapping = infer(t_layers, f_layers)
    transfer(pair.mapping, torch_side, flax_side, direction)
    pair.refresh()
    if direction != "none":
        resolve(pair, direction, t_layers, f_layers)
    while _next_flatten(pair):  # a Linear after a flatten: its permutation, from both sides' inputs to it
        transfer(pair.mapping, torch_side, flax_side, direction)
        pair.refresh()
    return pair


def output_difference(pair: Pair) -> float:
    """max |Δ| of the model outputs (every array of them), layouts aligned."""
    worst = 0.0
    for t, f in zip(output_leaves(pair.torch_out), output_leaves(pair.flax_out)):
        worst = max(worst, difference(to_flax_layout(t, f), f)[0])
    return worst


def output_leaves(out) -> list[np.ndarray]:
    return list(out.values()) if isinstance(out, dict) else [out]


def resolve(pair: Pair, direction: str, t_layers: list[Layer], f_layers: list[Layer]) -> None:
    """Each data-flow choice (same-shaped layers reading the same inputs, e.g. two branches) settled
    by trying every assignment: the one under which the outputs agree is kept."""
    settled: dict[str, str] = {}
    for torch_names, flax_paths in pair.mapping.ambiguous:
        if len(torch_names) > 4:
            pair.notes.append(f"{len(torch_names)} same-shaped layers ({', '.join(torch_names[:3])}, ...) read the same "
                              "inputs: matched in execution order, not verified")
            continue
        tried = []
        for perm in itertools.permutations(flax_paths):
            forced = settled | dict(zip(torch_names, perm))
            try:
                trial = infer(t_layers, f_layers, forced)
            except UsageError:
                continue
            pair.mapping = trial
            transfer(trial, pair.torch, pair.flax, direction)
            pair.refresh()
            tried.append((output_difference(pair), forced, trial))
        if not tried:
            continue
        best_diff, settled, best = min(tried, key=lambda x: x[0])
        pair.mapping = best
        transfer(best, pair.torch, pair.flax, direction)
        pair.refresh()
        if len(tried) > 1:
            chosen = ", ".join(f"{t} ↔ {settled[t]}" for t in torch_names)
            pair.notes.append(f"{', '.join(torch_names)} read the same inputs with the same shapes: {chosen}, the "
                              f"assignment under which the outputs agree best (max |Δ| {best_diff:.2e} of "
                              f"{len(tried)} tried)")


def _next_flatten(pair: Pair) -> bool:
    """Find the next Linear whose input is a flattened feature map (torch (C, *S), Flax (*S, C)) and
    record its permutation; False when there is none left."""
    channels = []
    for m in pair.mapping.layers:
        t, f = pair.torch_caps.get(m.torch_name), pair.flax_caps.get(m.flax_path)
        if t is None or f is None:
            continue
        if m.kind in CHANNEL_KINDS and t.output.ndim >= 3:
            channels.append(t.output.shape[1])
        if m.kind in ("dense", "hf_conv1d") and m.flatten is None and m.matched_by != "file":
            chw = find_flatten(t.input, f.input, channels)
            if chw is not None:
                m.flatten = chw
                m.plan = plan(m.kind, m.flax_kind, t.module, f.module, pair.torch.layer_tensors(m.torch_name),
                                   pair.flax.layer_vars(m.flax_path, m.flax_kind), chw)
                return True
    return False


def find_flatten(torch_input: np.ndarray, flax_input: np.ndarray, channel_counts: list[int]) -> tuple | None:
    """The (C, *S) whose flatten permutation relates a Linear's two inputs, if they differ by one:
    C from the channel counts of the layers before it (the permutation depends on C and the product
    of S only; the squarest H x W is reported)."""
    if torch_input.ndim != 2 or torch_input.shape != flax_input.shape:
        return None
    scale = max(float(np.max(np.abs(torch_input))), 1e-30) if torch_input.size else 1.0
    if compared(torch_input, flax_input) <= 1e-3 * scale:
        return None
    features = torch_input.shape[1]
    for c in dict.fromkeys(reversed(channel_counts)):
        if c < 2 or features % c:
            continue
        hw = features // c
        for h in sorted((h for h in range(1, hw + 1) if hw % h == 0), key=lambda h: abs(h - hw // h)):
            if compared(torch_input[:, flatten_permutation((c, h, hw // h), features)], flax_input) <= 1e-3 * scale:
                return (c, h, hw // h)
    return None


# --- comparison ---------------------------------------------------------------------------------------

def compare_layers(pair: Pair, bounds: str = "calibrated") -> tuple[list[LayerResult], dict]:
    """Per mapped layer (execution order): full-forward, alone and input differences with their
    bounds; and the output's."""
    if bounds not in ("calibrated", "fixed"):
        raise UsageError(f"bounds must be calibrated or fixed, not {bounds!r}")
    train = pair.train
    t64 = pair.torch.double() if bounds == "calibrated" else None
    inputs64 = {k: (v if v.dtype.kind in "iub" else v.astype(np.float64)) for k, v in pair.inputs.items()}
    out64, caps64 = t64.forward(inputs64, train) if t64 else (None, {})
    random = _random_layers(pair)
    results = []
    for m in pair.mapping.layers:
        t, f = pair.torch_caps.get(m.torch_name), pair.flax_caps.get(m.flax_path)
        if t is None or f is None:
            continue
        module = t.module
        out_t = to_flax_layout(t.output, f.output, m.kind, module)
        alone = _run_alone(pair, t, f, m)
        if bounds == "fixed":
            bound = iso_bound = in_bound = fixed_bounds.FORWARD_ABS
            floor = math.nan
        else:
            c64 = caps64[m.torch_name]
            bound, floor = calibrated_bound(t.output, c64.output)
            arrays64 = [a if a.dtype.kind in "iub" else a.astype(np.float64) for a in t.inputs]
            iso_bound, _ = calibrated_bound(t.output, t64.run_layer(t, arrays64, train)[t.primary])
            in_bound, _ = calibrated_bound(t.input, c64.input)
        d, broadcast = difference(out_t, f.output)
        in_t = to_flax_layout(padded_input(t.input, module, f.input), f.input, m.kind, module,
                              m.flatten if m.kind in ("dense", "hf_conv1d") else None)
        d_in, broadcast_in = difference(in_t, f.input)
        results.append(LayerResult(m.torch_name, m.flax_path, m.kind, d, bound, difference(out_t, alone)[0], iso_bound,
                                   d_in, in_bound, floor, m.torch_name in random, train, broadcast or broadcast_in,
                                   not (np.isfinite(t.output).all() and np.isfinite(f.output).all())))
    worst, out_bound = 0.0, 0.0
    outputs64 = output_leaves(out64) if out64 is not None else [None] * len(output_leaves(pair.torch_out))
    for t_out, f_out, t64_out in zip(output_leaves(pair.torch_out), output_leaves(pair.flax_out), outputs64):
        worst = max(worst, difference(to_flax_layout(t_out, f_out), f_out)[0])
        out_bound = max(out_bound, fixed_bounds.FORWARD_ABS if t64_out is None else calibrated_bound(t_out, t64_out)[0])
    shapes_differ = len(output_leaves(pair.torch_out)) != len(output_leaves(pair.flax_out))
    return results, {"max_abs_diff": math.inf if shapes_differ else worst, "bound": out_bound}


def _run_alone(pair: Pair, t: Capture, f: Capture, m) -> np.ndarray:
    """The Flax layer alone on the torch layer's input, laid out as Flax takes it. Only the first
    argument is torch's: the others (a mask, a key and value) keep the Flax side's own, whose meaning
    may differ from torch's at the same position (an additive mask against a boolean one)."""
    arrays = list(f.inputs)
    if t.inputs and arrays and t.input.dtype.kind == f.input.dtype.kind == "f":
        flatten = m.flatten if m.kind in ("dense", "hf_conv1d") else None
        converted = to_flax_layout(padded_input(t.input, t.module, f.input), f.input, m.kind, t.module, flatten)
        arrays[0] = np.broadcast_to(converted, f.input.shape) if _broadcastable(converted.shape, f.input.shape) \
            else converted
    try:
        outs = pair.flax.run_layer(f, arrays, pair.train)
    except Exception:  # noqa: BLE001 (the input does not fit the layer: reported as a shape difference)
        return np.full((0,), np.nan)
    return outs[f.primary] if len(outs) > f.primary else np.full((0,), np.nan)


def _random_layers(pair: Pair) -> set[str]:
    """Torch names of the mapped layers whose output (either side's) changes with the random seed
    (the Flax side's layers are captured again only where its output changes: no dropout, no need)."""
    _, torch_again = pair.run_torch(seed=1)
    args, kwargs = pair.flax_inputs
    flax_output = output_arrays(pair.flax.call(args, kwargs, pair.train, seed=1))
    if all(np.array_equal(a, b, equal_nan=True) for a, b in zip(output_leaves(flax_output), output_leaves(pair.flax_out))):
        flax_again = pair.flax_caps
    else:
        _, flax_again = pair.run_flax(seed=1)
    out = set()
    for m in pair.mapping.layers:
        for caps, again, name in ((pair.torch_caps, torch_again, m.torch_name), (pair.flax_caps, flax_again, m.flax_path)):
            if name in caps and name in again and not np.array_equal(caps[name].output, again[name].output, equal_nan=True):
                out.add(m.torch_name)
    return out
