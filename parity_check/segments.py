"""The torch operations between layers, recorded so that they can be run again with one change: what
names the cause of a difference that enters between two layers.

A segment is the operations that compute a layer's input from the outputs of the layers before it
(and the model's inputs). Replayed from torch's captured layer outputs, it gives torch's input again;
replayed with one operation changed (another activation, another pooling stride or padding,
count_include_pad or ceil_mode flipped, softmax over another axis, the activation moved across a
residual addition, another attention scale or head count), it may give the Flax side's input
instead: that change is the cause, and the difference it leaves is the evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from parity_check.torch_side import is_tensor, no_fast_path
from parity_check.trees import leaves, replace


@dataclass
class Node:
    """A recorded value: a layer's output or a model input (`source`), or an operation's result."""

    source: str | None = None  # "layer:NAME:i" (the layer's i-th output) or "input:KEY"


@dataclass
class Op:
    func: Callable
    args: tuple  # tensors replaced by Ref
    kwargs: dict
    outputs: list[int]  # node indices of its tensor results, in order

    @property
    def name(self) -> str:
        return getattr(self.func, "__name__", str(self.func))


@dataclass(frozen=True)
class Ref:
    node: int


@dataclass
class Recording:
    nodes: list[Node] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    producer: dict[int, int] = field(default_factory=dict)  # node → index of the op that made it
    layer_inputs: dict[str, int] = field(default_factory=dict)  # layer → node of its first argument
    shapes: dict[int, tuple] = field(default_factory=dict)
    output: int | None = None  # node of the model's first output

    def new_node(self, source: str | None = None, shape: tuple | None = None) -> int:
        """A node of its own (a changed segment's intermediate value)."""
        self.nodes.append(Node(source))
        if shape is not None:
            self.shapes[len(self.nodes) - 1] = shape
        return len(self.nodes) - 1

    def ancestors(self, node: int) -> list[int]:
        """The ops (indices, in order) that compute `node` from sources (layer outputs, model inputs)."""
        wanted, stack = set(), [node]
        while stack:
            node = stack.pop()
            if self.nodes[node].source is not None or node not in self.producer:
                continue
            op = self.producer[node]
            if op in wanted:
                continue
            wanted.add(op)
            stack += [r.node for _, r in leaves((self.ops[op].args, self.ops[op].kwargs), lambda x: isinstance(x, Ref))]
        return sorted(wanted)


class _Recorder(TorchFunctionMode):
    def __init__(self, recording: Recording):
        super().__init__()
        self.r = recording
        self.node_of: dict[int, int] = {}
        self.alive: list = []

    def new(self, tensor, source=None) -> int:
        node = self.r.new_node(source, tuple(tensor.shape))
        self.node_of[id(tensor)] = node
        self.alive.append(tensor)
        return node

    def ref(self, x):
        if id(x) not in self.node_of:  # a parameter or constant: kept as its value
            return x.detach().clone()
        return Ref(self.node_of[id(x)])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("__get__", "__set__") or name.startswith("_set_grad"):
            return func(*args, **kwargs)
        recorded_args, recorded_kwargs = replace((tuple(args), dict(kwargs)), is_tensor, self.ref)
        out = func(*args, **kwargs)
        results = [t for _, t in leaves(out, is_tensor)]
        if results:
            self.r.ops.append(Op(func, recorded_args, recorded_kwargs, []))
            for t in results:
                node = self.new(t)
                self.r.producer[node] = len(self.r.ops) - 1
                self.r.ops[-1].outputs.append(node)
        return out


def record(model: torch.nn.Module, layers: dict, args: tuple, kwargs: dict, input_keys: list[str]) -> Recording:
    """One forward of `model` (eval or train as it is), recording every operation."""
    recording = Recording()
    recorder = _Recorder(recording)
    for key, value in zip(input_keys, list(args) + list(kwargs.values())):
        recorder.new(value, f"input:{key}")
    handles = []

    def before(name):
        def hook(module, a, k):
            found = leaves((a, k), is_tensor)
            if found and name not in recording.layer_inputs and id(found[0][1]) in recorder.node_of:
                recording.layer_inputs[name] = recorder.node_of[id(found[0][1])]
        return hook

    def after(name):
        def hook(module, a, k, out):
            for i, (_, t) in enumerate(leaves(out, is_tensor)):
                recorder.new(t, f"layer:{name}:{i}")
        return hook
    for name, (module, _) in layers.items():
        handles.append(module.register_forward_pre_hook(before(name), with_kwargs=True))
        handles.append(module.register_forward_hook(after(name), with_kwargs=True))
    try:
        with no_fast_path(), recorder, torch.no_grad():
            out = model(*args, **kwargs)
        first = leaves(out, is_tensor)
        recording.output = recorder.node_of.get(id(first[0][1])) if first else None
    finally:
        for h in handles:
            h.remove()
    return recording


def replay(recording: Recording, ops: list[int], values: dict[str, np.ndarray], target: int,
           change: Callable[[int, Op], Op | list[Op] | None] = lambda i, op: None) -> np.ndarray:
    """The value of node `target` recomputed by `ops` from the sources' `values` ('layer:NAME:i',
    'input:KEY'), with `change(i, op)` giving a replacement for op i (or None to keep it)."""
    env: dict[int, torch.Tensor] = {}
    for i, node in enumerate(recording.nodes):
        if node.source in values:
            env[i] = torch.as_tensor(values[node.source])

    def resolve(x):
        if isinstance(x, Ref):
            return env[x.node].clone()
        return x.clone() if isinstance(x, torch.Tensor) else x

    with torch.no_grad():
        for i in ops:
            op = recording.ops[i]
            replaced = change(i, op)
            for step in (replaced if isinstance(replaced, list) else [replaced or op]):
                a, k = replace((step.args, step.kwargs), lambda x: isinstance(x, (Ref, torch.Tensor)), resolve)
                results = [t for _, t in leaves(step.func(*a, **k), is_tensor)]
                for node, t in zip(step.outputs, results):
                    env[node] = t
    return env[target].numpy()


# --- the changes tried -------------------------------------------------------------------------------

def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "relu": F.relu, "gelu (exact)": F.gelu, "gelu (tanh approximation)": _gelu_tanh, "silu": F.silu,
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "elu": F.elu, "leaky_relu (0.01)": F.leaky_relu,
    "relu6": F.relu6, "softplus": F.softplus, "quick_gelu": _quick_gelu, "mish": F.mish, "hardswish": F.hardswish,
    "identity (none)": lambda x: x,
}
# The recorded names of the activations above (module forms call these).
ACTIVATION_NAMES = {"relu": "relu", "relu_": "relu", "gelu": None, "silu": "silu", "tanh": "tanh", "tanh_": "tanh",
                    "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "elu": "elu", "leaky_relu": "leaky_relu (0.01)",
                    "relu6": "relu6", "hardtanh": "relu6", "softplus": "softplus", "mish": "mish",
                    "hardswish": "hardswish"}
POOLS = {  # name: the parameters after the input, in order
    "max_pool1d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "max_pool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "max_pool3d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool1d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    "avg_pool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "avg_pool3d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
}
POOL_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False,
                 "count_include_pad": True, "divisor_override": None}
SOFTMAX = ("softmax", "log_softmax")
SCALING = ("mul", "div", "mul_", "div_", "__mul__", "__truediv__", "__rmul__", "true_divide")
DIVISIONS = ("div", "div_", "__truediv__", "true_divide")


@dataclass
class Change:
    """One change to a segment: its cause code, what it says, and the replacement per op."""

    cause: str
    says: str
    change: Callable[[int, Op], Op | list[Op] | None]
    fields: dict = field(default_factory=dict)


def _activation_name(op: Op) -> str | None:
    if op.name == "gelu":
        return "gelu (tanh approximation)" if op.kwargs.get("approximate", "none") == "tanh" else "gelu (exact)"
    return ACTIVATION_NAMES.get(op.name)


def _first_ref(op: Op) -> Ref | None:
    found = leaves((op.args, op.kwargs), lambda x: isinstance(x, Ref))
    return found[0][1] if found else None


def _unary(func, op: Op) -> Op:
    return Op(func, (_first_ref(op),), {}, op.outputs)


def _pool_arguments(op: Op) -> dict[str, Any]:
    names = POOLS[op.name]
    values = dict(zip(names, op.args[1:]))
    values.update({k: v for k, v in op.kwargs.items() if k in names})
    return {n: values.get(n, POOL_DEFAULTS.get(n)) for n in names}


def _pool_op(op: Op, arguments: dict[str, Any], name: str | None = None) -> Op:
    """The pooling `name` (default: op's own) with `arguments` (those it takes)."""
    name = name or op.name
    kept = {k: v for k, v in arguments.items() if k in POOLS[name] and k != "return_indices" and v is not None}
    return Op(getattr(F, name), (op.args[0],), kept, op.outputs)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def changes(recording: Recording, ops: list[int]) -> Iterator[Change]:
    """Every change tried on a segment, one at a time."""
    consumers: dict[int, list[int]] = {}
    for i in ops:
        for _, r in leaves((recording.ops[i].args, recording.ops[i].kwargs), lambda x: isinstance(x, Ref)):
            consumers.setdefault(r.node, []).append(i)
    for i in ops:
        op = recording.ops[i]
        act = _activation_name(op)
        if act is not None:
            for other, func in ACTIVATIONS.items():
                if other != act:
                    yield Change("activation", f"{act} → {other}", _only(i, _unary(func, op)), {"t": act, "f": other})
            yield from _residual_changes(recording, ops, i, op, act, consumers)
        if op.name in POOLS:
            yield from _pool_changes(i, op)
        if op.name in SOFTMAX:
            yield from _softmax_changes(recording, i, op)
        if op.name in SCALING:
            yield from _scale_changes(i, op)
        if op.name == "scaled_dot_product_attention":
            yield from _sdpa_changes(recording, i, op)
        if op.name in ("view", "reshape", "unflatten"):
            yield from _head_changes(recording, i, op)


def source_nodes(recording: Recording, ops: list[int]) -> set[int]:
    """The source nodes (layer outputs, model inputs) a segment reads."""
    refs = {r.node for i in ops for _, r in leaves((recording.ops[i].args, recording.ops[i].kwargs),
                                                   lambda x: isinstance(x, Ref))}
    return {n for n in refs if recording.nodes[n].source is not None}


def whole_segment_changes(recording: Recording, ops: list[int], target: int, torch_says: str) -> Iterator[Change]:
    """An elementwise segment from one source (an activation written out by hand, such as GELU's tanh
    form) replaced by each activation whole."""
    sources = source_nodes(recording, ops)
    if len(sources) != 1 or target not in recording.producer:
        return
    source = next(iter(sources))
    if recording.shapes.get(source) != recording.shapes.get(target):
        return
    last = recording.producer[target]
    for name, func in ACTIVATIONS.items():
        if name != torch_says:
            replacement = Op(func, (Ref(source),), {}, [target])
            yield Change("activation", f"{torch_says} → {name}", _only(last, replacement), {"t": torch_says, "f": name})


def _only(index: int, replacement: Op | list[Op]):
    return lambda i, op: replacement if i == index else None


def _pool_changes(i: int, op: Op) -> Iterator[Change]:
    a = _pool_arguments(op)
    kernel = _pair(a["kernel_size"])
    stride = _pair(a["stride"]) if a["stride"] not in (None, ()) else kernel
    padding = _pair(a["padding"])
    fn = op.name
    for s in {(1,) * len(kernel), kernel} - {stride}:
        yield Change("pool_stride", f"{fn} stride {stride} → {s}", _only(i, _pool_op(op, a | {"stride": s})),
                     {"t": stride, "f": s})
    for p in {(0,) * len(kernel), tuple(k // 2 for k in kernel)} - {padding}:
        if all(2 * pp <= k for pp, k in zip(p, kernel)):
            yield Change("pool_padding", f"{fn} padding {padding} → {p}", _only(i, _pool_op(op, a | {"padding": p})),
                         {"t": padding, "f": p, "fn": fn})
    yield Change("pool_ceil_mode", f"{fn} ceil_mode {a['ceil_mode']} → {not a['ceil_mode']}",
                 _only(i, _pool_op(op, a | {"ceil_mode": not a["ceil_mode"]})), {"t": a["ceil_mode"]})
    if "count_include_pad" in a and any(padding) or "count_include_pad" in a and a["ceil_mode"]:
        counted = a["count_include_pad"]
        yield Change("count_include_pad", f"{fn} count_include_pad {counted} → {not counted}",
                     _only(i, _pool_op(op, a | {"count_include_pad": not a["count_include_pad"]})),
                     {"t": a["count_include_pad"], "f": not a["count_include_pad"]})
    other = fn.replace("max", "avg") if fn.startswith("max") else fn.replace("avg", "max")
    yield Change("pool_type", f"{fn} → {other}", _only(i, _pool_op(op, a, other)), {"t": fn, "f": other})


def _softmax_changes(recording: Recording, i: int, op: Op) -> Iterator[Change]:
    ndim = _ndim(recording, op)
    dim = op.kwargs.get("dim", op.args[1] if len(op.args) > 1 else None)
    if ndim is None or not isinstance(dim, int):
        return
    dim %= ndim
    func = getattr(F, op.name)
    for d in range(ndim):
        if d != dim:
            yield Change("softmax_axis", f"{op.name} over axis {dim} → {d}",
                         _only(i, Op(func, (op.args[0],), {"dim": d}, op.outputs)), {"fn": op.name, "t": dim, "f": d})
    other = "log_softmax" if op.name == "softmax" else "softmax"
    swapped = Op(getattr(F, other), (op.args[0],), {"dim": dim}, op.outputs)
    yield Change("softmax_axis", f"{op.name} → {other}", _only(i, swapped), {"fn": op.name, "t": op.name, "f": other})


def _ndim(recording: Recording, op: Op) -> int | None:
    first = _first_ref(op)
    shape = recording.shapes.get(first.node) if first is not None else None
    return len(shape) if shape is not None else None


RATIOS = sorted({r for k in range(2, 17) for r in (math.sqrt(k), 1 / math.sqrt(k), float(k), 1 / k)})


def _scale_changes(i: int, op: Op) -> Iterator[Change]:
    scalars = [(j, a) for j, a in enumerate(op.args) if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if len(scalars) != 1 or scalars[0][1] in (0, 1, -1):
        return
    j, c = scalars[0]
    factor = c if op.name not in DIVISIONS else 1 / c
    for r in RATIOS:
        new = list(op.args)
        new[j] = c * r if op.name not in DIVISIONS else c / r
        yield Change("attention_scale", f"scale {factor:.4g} → {factor * r:.4g}",
                     _only(i, Op(op.func, tuple(new), op.kwargs, op.outputs)), {"t": factor, "f": factor * r})
    yield Change("attention_scale", f"scale {factor:.4g} → none", _only(i, Op(lambda x: x, (op.args[0],), {}, op.outputs)),
                 {"t": factor, "f": 1.0})


def _sdpa_changes(recording: Recording, i: int, op: Op) -> Iterator[Change]:
    shape = recording.shapes.get(_first_ref(op).node) if _first_ref(op) else None
    if not shape:
        return
    scale = op.kwargs.get("scale") or 1 / math.sqrt(shape[-1])
    for r in RATIOS + [None]:
        s = 1.0 if r is None else scale * r
        yield Change("attention_scale", f"scale {scale:.4g} → {s:.4g}",
                     _only(i, Op(op.func, op.args, op.kwargs | {"scale": s}, op.outputs)), {"t": scale, "f": s})


def _head_changes(recording: Recording, i: int, op: Op) -> Iterator[Change]:
    """A (..., D) → (..., H, D/H) split into heads, with another head count (and the scale that goes
    with it, where the scores are scaled after)."""
    shape = [a for a in op.args[1:] if isinstance(a, int)] if op.name != "unflatten" else None
    if op.name in ("view", "reshape") and len(op.args) == 2 and isinstance(op.args[1], (tuple, list)):
        shape = list(op.args[1])
    source = recording.shapes.get(_first_ref(op).node) if _first_ref(op) else None
    if not shape or not source or len(shape) != len(source) + 1 or shape[-2] * shape[-1] != source[-1]:
        return
    heads, width = shape[-2], shape[-1]
    features = heads * width
    for h in (h for h in range(1, features + 1) if features % h == 0 and h != heads):
        new_shape = tuple(shape[:-2]) + (h, features // h)
        for rescaled in (False, True):
            yield Change("attention_heads", f"{heads} heads of {width} → {h} of {features // h}"
                         + (" (scaled by its head size)" if rescaled else ""),
                         _heads(op, new_shape, math.sqrt(width / (features // h)) if rescaled else 1.0),
                         {"t": heads, "f": h, "d": features})


def _heads(op, new_shape, ratio: float):
    """Every split like `op` (query, key and value alike) made with `new_shape`, and the scores'
    scaling by 1/sqrt(head size) changed by `ratio` (1: left as it is)."""
    def change(i, other):
        if other.name in ("view", "reshape") and _same_split(other, op):
            return Op(other.func, (other.args[0], new_shape), {}, other.outputs)
        if ratio != 1.0 and other.name in SCALING:
            args = list(other.args)
            for j, a in enumerate(args):
                if isinstance(a, (int, float)) and not isinstance(a, bool):
                    args[j] = a / ratio if other.name in DIVISIONS else a * ratio
            return Op(other.func, tuple(args), other.kwargs, other.outputs)
        return None
    return change


def _same_split(a: Op, b: Op) -> bool:
    def shape(op):
        if len(op.args) == 2 and isinstance(op.args[1], (tuple, list)):
            return tuple(op.args[1])
        return tuple(x for x in op.args[1:] if isinstance(x, int))
    return shape(a) == shape(b)


def _residual_changes(recording: Recording, ops: list[int], i: int, op: Op, act: str, consumers) -> Iterator[Change]:
    """relu(x + shortcut) against relu(x) + shortcut, either way round."""
    func = ACTIVATIONS[act]
    first = _first_ref(op)
    maker = recording.ops[recording.producer[first.node]] if first and first.node in recording.producer else None
    if maker is not None and maker.name in ("add", "add_", "__add__", "__iadd__") and recording.producer[first.node] in ops:
        add_index = recording.producer[first.node]
        operands = [a for a in maker.args if isinstance(a, Ref)]
        if len(operands) == 2:
            for j, operand in enumerate(operands):
                pre = recording.new_node()
                activated = Op(func, (operand,), {}, [pre])
                others = [Ref(pre) if k == j else o for k, o in enumerate(operands)]
                added = Op(torch.add, tuple(others), {}, maker.outputs)
                post = Op(lambda x: x, (first,), {}, op.outputs)

                def change(k, o, activated=activated, added=added, post=post):
                    return [activated, added] if k == add_index else post if k == i else None
                yield Change("residual_order", f"{act} moved before the residual addition (on operand {j})", change,
                             {"t": "after", "f": "before"})
    for c in consumers.get(op.outputs[0], []) if op.outputs else []:
        adder = recording.ops[c]
        if adder.name in ("add", "add_", "__add__", "__iadd__"):
            moved = Op(lambda x: x, (first,), {}, op.outputs)
            after = recording.new_node()
            summed = Op(adder.func, adder.args, adder.kwargs, [after])
            activated = Op(func, (Ref(after),), {}, adder.outputs)

            def change(k, o, moved=moved, summed=summed, activated=activated, c=c):
                return moved if k == i else [summed, activated] if k == c else None
            yield Change("residual_order", f"{act} moved after the residual addition", change, {"t": "before", "f": "after"})

