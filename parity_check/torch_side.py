"""The torch side of a check: a private copy of the user's module, run with every layer's inputs and
outputs captured (copied when the hook runs, so that an in-place ReLU or `out += identity` later does
not change what was kept), the data flow between layers traced, one layer run alone, and its tensors
read and written.

Layers (kinds.py): modules with parameters or persistent buffers of their own, the composite kinds
whole (MultiheadAttention, LSTM, GRU: their sub-modules belong to them), and dropout modules (the
causes look at them). The data flow: every torch function called during the forward passes on the
set of layers its tensor arguments came from (TorchFunctionMode), and each layer's output starts a
new set, so each layer knows the layers (and model inputs) its arguments were computed from.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from cnn_parity.errors import UsageError
from parity_check.kinds import COMPOSITE
from parity_check.trees import Capture, fill, leaves, replace, template

TORCH_KINDS: dict[type, str] = {
    torch.nn.Conv1d: "conv", torch.nn.Conv2d: "conv", torch.nn.Conv3d: "conv",
    torch.nn.ConvTranspose1d: "conv_transpose", torch.nn.ConvTranspose2d: "conv_transpose",
    torch.nn.ConvTranspose3d: "conv_transpose", torch.nn.Linear: "dense",
    torch.nn.BatchNorm1d: "batchnorm", torch.nn.BatchNorm2d: "batchnorm", torch.nn.BatchNorm3d: "batchnorm",
    torch.nn.SyncBatchNorm: "batchnorm", torch.nn.LayerNorm: "layernorm", torch.nn.GroupNorm: "groupnorm",
    torch.nn.RMSNorm: "rmsnorm", torch.nn.Embedding: "embedding", torch.nn.MultiheadAttention: "mha",
    torch.nn.LSTM: "lstm", torch.nn.GRU: "gru",
    torch.nn.Dropout: "dropout", torch.nn.Dropout1d: "dropout", torch.nn.Dropout2d: "dropout",
    torch.nn.Dropout3d: "dropout", torch.nn.AlphaDropout: "dropout",
}
# A counter Flax has no counterpart for (it only matters with momentum=None): accounted, never transferred.
COUNTERS = ("num_batches_tracked",)


def is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def numpy(x) -> np.ndarray:
    """A copy, never a view: the tensor may be overwritten in place after it is captured."""
    return x.detach().cpu().numpy().copy()


def own_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters and persistent buffers (not its sub-modules'), counters left out."""
    out = {k: v for k, v in module._parameters.items() if v is not None}
    out |= {k: v for k, v in module._buffers.items()
            if v is not None and k not in module._non_persistent_buffers_set and k not in COUNTERS}
    return out


def kind_of(module: torch.nn.Module) -> str | None:
    for cls in type(module).__mro__:
        if cls in TORCH_KINDS:
            return TORCH_KINDS[cls]
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # Hugging Face's, weight stored (in, out)
        return "hf_conv1d"
    return "generic" if own_tensors(module) else None


def layers_of(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """name → (module, kind) of every layer; the sub-modules of a composite layer are part of it."""
    out, inside = {}, []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        kind = kind_of(module)
        if kind is not None:
            out[name] = (module, kind)
            if kind in COMPOSITE:
                inside.append(name)
    return out


def as_torch(x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """A model input as a tensor: floats in `dtype`, integers and booleans (token ids, masks) as they are."""
    x = np.asarray(x)
    return torch.as_tensor(x) if x.dtype.kind in "iub" else torch.as_tensor(x, dtype=dtype)


class _Flow(TorchFunctionMode):
    """Passes on, through every torch function, the set of layers (and inputs) tensors came from, and
    records each function's name and plain settings in `events` (for the causes)."""

    def __init__(self, events: list):
        super().__init__()
        self.sources: dict[int, frozenset] = {}
        self.alive: list = []  # every tensor seen stays alive, so that no id is reused during the forward
        self.events = events

    def mark(self, tree, sources: frozenset) -> None:
        for _, t in leaves(tree, is_tensor):
            self.sources[id(t)] = sources
            self.alive.append(t)

    def of(self, tree) -> frozenset:
        return frozenset().union(*(self.sources.get(id(t), frozenset()) for _, t in leaves(tree, is_tensor)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name in ("__get__", "__set__", "size", "dim", "numel", "__len__", "__bool__", "item", "tolist"):
            return out
        self.mark(out, self.of((args, kwargs)))
        if not name.startswith("__") or name.startswith("__i"):
            plain = (int, float, str, bool, tuple, type(None))
            settings = {k: v for k, v in kwargs.items() if isinstance(v, plain)}
            self.events.append(("function", name, [a for a in args[1:] if isinstance(a, plain)], settings))
        return out


@contextlib.contextmanager
def no_fast_path():
    """MultiheadAttention and TransformerEncoderLayer skip their sub-modules in eval mode (a fused
    kernel), so the layers inside them would never be called: the plain path for the check."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


class TorchSide:
    """A private copy of the user's torch module (theirs is never modified)."""

    def __init__(self, model: torch.nn.Module, dtype=torch.float32):
        self.user_dtypes = {p.dtype for p in model.parameters()}  # what the user's model computes in
        try:
            self.model = copy.deepcopy(model).to(device="cpu", dtype=dtype)  # compared on the CPU, as the suite does
        except Exception as e:  # noqa: BLE001 (a module that cannot be copied is the user's to fix)
            raise UsageError(f"the torch model cannot be copied ({type(e).__name__}: {e})") from None
        self.dtype = dtype
        self.layers = layers_of(self.model)

    def double(self) -> "TorchSide":
        return TorchSide(self.model, torch.float64)

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        return as_torch(x, self.dtype)

    def forward(self, inputs: dict[str, np.ndarray], train: bool = False, events: list | None = None, seed: int = 0,
                perturb: dict[str, np.ndarray] | None = None):
        """(output, every layer's capture) with torch's random generator seeded with `seed`; `events`
        (if given) receives the layers and functions in call order; `perturb[name]` is added to that
        layer's result."""
        torch.manual_seed(seed)
        self.model.train(train)
        captures: dict[str, Capture] = {}
        events = events if events is not None else []
        flow = _Flow(events)
        args, kwargs = self.call_arguments(inputs)
        for key, value in zip(inputs, list(args) + list(kwargs.values())):
            flow.mark(value, frozenset({f"input:{key}"}))
        pending: dict[str, Capture] = {}

        def before(name, kind):
            def hook(module, args, kwargs):
                if name not in captures and name not in pending:
                    call, arrays = template(args, kwargs, is_tensor)
                    found = leaves((args, kwargs), is_tensor)
                    settings = {k: v for k, v in kwargs.items() if isinstance(v, (bool, int, float, str, type(None)))}
                    pending[name] = Capture(name, kind, module, [numpy(a) for a in arrays], [p for p, _ in found],
                                            [], [], settings, call, flow.of((args, kwargs)))
            return hook

        def after(name, kind):
            def hook(module, args, kwargs, output):
                if name in perturb_left:
                    output = _add(output, perturb_left.pop(name))
                if name in pending:
                    capture = pending.pop(name)
                    found = leaves(output, is_tensor)
                    capture.outputs, capture.output_names = [numpy(t) for _, t in found], [p for p, _ in found]
                    captures[name] = capture
                    events.append(("layer", name))
                flow.mark(output, frozenset({name}))
                return output
            return hook

        perturb_left = dict(perturb or {})
        handles = []
        for name, (module, kind) in self.layers.items():
            handles.append(module.register_forward_pre_hook(before(name, kind), with_kwargs=True))
            handles.append(module.register_forward_hook(after(name, kind), with_kwargs=True))
        try:
            with no_fast_path(), flow, torch.no_grad():
                out = self.model(*args, **kwargs)
        except (RuntimeError, ValueError, TypeError, IndexError, AttributeError, KeyError, AssertionError) as e:
            shapes = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in inputs.items())
            raise UsageError(f"the torch model rejects its input ({shapes}): {str(e).strip().splitlines()[0]}") from None
        finally:
            for h in handles:
                h.remove()
        return replace_output(out), captures

    def call_arguments(self, inputs: dict[str, np.ndarray]) -> tuple[tuple, dict]:
        """Positional inputs (named by their position: '0', '1', ...) and keyword ones, as tensors."""
        args = tuple(self.tensor(v) for k, v in inputs.items() if k.isdigit())
        kwargs = {k: self.tensor(v) for k, v in inputs.items() if not k.isdigit()}
        return args, kwargs

    def state(self) -> dict[str, np.ndarray]:
        """Every parameter and persistent buffer (counters left out) as float32 numpy: the canonical form."""
        return {k: numpy(v).astype(np.float32) if v.is_floating_point() else numpy(v)
                for k, v in self.model.state_dict().items() if k.rsplit(".", 1)[-1] not in COUNTERS}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace every parameter and buffer by `arrays` (state_dict names; shapes must agree)."""
        state = {k: v for k, v in self.model.state_dict().items() if k.rsplit(".", 1)[-1] not in COUNTERS}
        missing, extra = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
        if missing or extra:
            raise UsageError(f"the weights do not fit the torch model: missing {missing[:4] or 'nothing'}, "
                             f"unexpected {extra[:4] or 'nothing'}")
        for name, tensor in state.items():
            if tuple(arrays[name].shape) != tuple(tensor.shape):
                raise UsageError(f"weight {name} has shape {tuple(arrays[name].shape)}, "
                                 f"the model's is {tuple(tensor.shape)}")
            with torch.no_grad():
                tensor.copy_(torch.as_tensor(np.asarray(arrays[name])))

    def run_layer(self, capture: Capture, arrays: list[np.ndarray], train: bool = False) -> list[np.ndarray]:
        """The layer alone on `arrays` (its captured arguments, some replaced): its outputs."""
        module = copy.deepcopy(self.layers[capture.name][0]).train(train)
        args, kwargs = fill(capture.call, [torch.as_tensor(a) if a.dtype.kind in "iub" else
                                           torch.as_tensor(a, dtype=self.dtype) for a in arrays])
        with no_fast_path(), torch.no_grad():
            return [numpy(t) for _, t in leaves(module(*args, **kwargs), is_tensor)]

    def layer_tensors(self, name: str) -> dict[str, np.ndarray]:
        """The layer's tensors by their names in it ('weight'; a composite's 'out_proj.weight')."""
        module, kind = self.layers[name]
        if kind in COMPOSITE:
            return {k: numpy(v) for k, v in module.state_dict().items() if k.rsplit(".", 1)[-1] not in COUNTERS}
        return {k: numpy(v) for k, v in own_tensors(module).items()}

    def tied_layers(self) -> dict[str, str]:
        """Layers all of whose tensors are another layer's (a language model's head tied to its
        embedding): name → the layer that holds them first."""
        owner, out = {}, {}
        for name, (module, kind) in self.layers.items():
            tensors = module.state_dict(keep_vars=True).values() if kind in COMPOSITE else own_tensors(module).values()
            pointers = [t.data_ptr() for t in tensors]
            if pointers and all(p in owner for p in pointers):
                out[name] = owner[pointers[0]]
            for p in pointers:
                owner.setdefault(p, name)
        return out

    def set_layer_tensors(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        module, _ = self.layers[name]
        with torch.no_grad():
            for key, value in arrays.items():
                owner, _, attr = key.rpartition(".")
                target = getattr(module.get_submodule(owner) if owner else module, attr)
                target.copy_(torch.as_tensor(np.ascontiguousarray(value)))


def _add(output, delta: np.ndarray):
    """The layer's result with `delta` added to its first tensor (its output: the others are states)."""
    first = [True]

    def add(t):
        if first[0]:
            first[0] = False
            return t + torch.as_tensor(delta, dtype=t.dtype)
        return t
    return replace(output, is_tensor, add)


def replace_output(out):
    """The model's output as numpy arrays in the same structure (a model-output object as a dict)."""
    if isinstance(out, torch.Tensor):
        return numpy(out)
    return {path: numpy(t) for path, t in leaves(out, is_tensor)}
