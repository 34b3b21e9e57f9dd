"""Each framework's side of a check: run the model, capturing every layer's input and output, run one
layer alone, and read and write its variables, for a torch module and for a Flax Linen or NNX model.

Layers are the modules of the kinds in KINDS (parameterised ones, plus dropout, which the causes
look at); a module called several times is captured at its first call. Functional operations
between layers (activations, pooling, flatten, residual additions) are not layers: they fold into
the segment before the next layer. On the torch side they are recorded too (TorchFunctionMode), so
that the causes can read their settings.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch.overrides import TorchFunctionMode

from cnn_parity.errors import UsageError

# Layer kind of each module type, per framework.
TORCH_KINDS: dict[type, str] = {
    torch.nn.Conv1d: "conv", torch.nn.Conv2d: "conv", torch.nn.Conv3d: "conv", torch.nn.Linear: "dense",
    torch.nn.BatchNorm1d: "batchnorm", torch.nn.BatchNorm2d: "batchnorm", torch.nn.BatchNorm3d: "batchnorm",
    torch.nn.LayerNorm: "layernorm", torch.nn.GroupNorm: "groupnorm", torch.nn.Embedding: "embedding",
    torch.nn.Dropout: "dropout", torch.nn.Dropout1d: "dropout", torch.nn.Dropout2d: "dropout",
}
LINEN_KINDS: dict[type, str] = {
    nn.Conv: "conv", nn.Dense: "dense", nn.BatchNorm: "batchnorm", nn.LayerNorm: "layernorm",
    nn.GroupNorm: "groupnorm", nn.Embed: "embedding", nn.Dropout: "dropout",
}
NNX_KINDS: dict[type, str] = {
    nnx.Conv: "conv", nnx.Linear: "dense", nnx.BatchNorm: "batchnorm", nnx.LayerNorm: "layernorm",
    nnx.GroupNorm: "groupnorm", nnx.Embed: "embedding", nnx.Dropout: "dropout",
}
PARAMETERISED = ("conv", "dense", "batchnorm", "layernorm", "groupnorm", "embedding")
# Kinds whose activations hold channels on axis 1 in torch and last in Flax (when rank >= 3).
CHANNEL_KINDS = ("conv", "batchnorm", "groupnorm")


def kind_of(module, kinds: dict[type, str]) -> str | None:
    for cls in type(module).__mro__:
        if cls in kinds:
            return kinds[cls]
    return None


@dataclass
class Capture:
    """One layer's first call: its name (torch) or path (Flax), kind, input, output, and the call's
    non-array keyword arguments (to run it alone the same way)."""

    name: str
    kind: str
    input: np.ndarray
    output: np.ndarray
    module: Any = None
    kwargs: dict = field(default_factory=dict)


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def mode_kwargs(call: Callable, train: bool) -> dict[str, bool]:
    """The keyword arguments that put a Flax model's `__call__` in train or eval mode, by name."""
    try:
        names = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return {}
    wanted = {"train": train, "training": train, "is_training": train, "deterministic": not train,
              "use_running_average": not train}
    return {k: v for k, v in wanted.items() if k in names}


# --- torch ---------------------------------------------------------------------------------------

def as_torch(x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """A model input as a tensor: floats in `dtype`, integers (token ids) as they are."""
    return torch.as_tensor(x) if np.issubdtype(np.asarray(x).dtype, np.integer) else torch.as_tensor(x, dtype=dtype)


class _FunctionRecorder(TorchFunctionMode):
    """Records every torch function called (name and non-tensor arguments) into `events`."""

    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if not name.startswith("__"):
            settings = {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, tuple, type(None)))}
            positional = [a for a in args[1:] if isinstance(a, (int, float, str, bool, tuple))]
            self.events.append(("function", name, positional, settings))
        return func(*args, **kwargs)


class TorchSide:
    """A private copy of the user's torch module (theirs is never modified)."""

    def __init__(self, model: torch.nn.Module, dtype=torch.float32):
        self.user_dtypes = {p.dtype for p in model.parameters()}  # what the user's model computes in
        self.model = copy.deepcopy(model).to(device="cpu", dtype=dtype)  # compared on the CPU, as the suite does
        self.dtype = dtype
        self.named = {name: m for name, m in self.model.named_modules() if kind_of(m, TORCH_KINDS)}

    def double(self) -> "TorchSide":
        return TorchSide(self.model, torch.float64)

    def forward(self, x: np.ndarray, train: bool = False, events: list | None = None,
                seed: int = 0) -> tuple[np.ndarray, dict[str, Capture]]:
        """Output and every layer's capture, torch's random generator seeded with `seed`; `events`
        (if given) receives the layers and functions in call order."""
        torch.manual_seed(seed)
        self.model.train(train)
        captures: dict[str, Capture] = {}
        events = events if events is not None else []

        def hook(name, kind):
            def record(module, inputs, output):
                if name not in captures and inputs and isinstance(inputs[0], torch.Tensor):
                    captures[name] = Capture(name, kind, _numpy(inputs[0]), _numpy(output), module)
                    events.append(("layer", name))
            return record

        handles = [m.register_forward_hook(hook(name, kind_of(m, TORCH_KINDS))) for name, m in self.named.items()]
        try:
            with _FunctionRecorder(events), torch.no_grad():
                out = self.model(self.tensor(x))
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise UsageError(f"the torch model rejects input of shape {tuple(x.shape)}: {str(e).splitlines()[0]}") from None
        finally:
            for h in handles:
                h.remove()
        return _numpy(out), captures

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        return as_torch(x, self.dtype)

    def state(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer (num_batches_tracked left out) as float32 numpy: the canonical form."""
        return {k: _numpy(v).astype(np.float32) for k, v in self.model.state_dict().items()
                if not k.endswith("num_batches_tracked")}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace every parameter and buffer by `arrays` (state_dict names; shapes must agree)."""
        state = {k: v for k, v in self.model.state_dict().items() if not k.endswith("num_batches_tracked")}
        missing, extra = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
        if missing or extra:
            raise UsageError(f"the weights do not fit the torch model: missing {missing[:4] or 'nothing'}, "
                             f"unexpected {extra[:4] or 'nothing'}")
        for name, tensor in state.items():
            if tuple(arrays[name].shape) != tuple(tensor.shape):
                raise UsageError(f"weight {name} has shape {tuple(arrays[name].shape)}, the model's is {tuple(tensor.shape)}")
            with torch.no_grad():
                tensor.copy_(torch.as_tensor(np.asarray(arrays[name])))

    def run_layer(self, name: str, x: np.ndarray, train: bool = False) -> np.ndarray:
        module = copy.deepcopy(self.named[name]).train(train)
        with torch.no_grad():
            return _numpy(module(self.tensor(x)))

    def layer_params(self, name: str) -> dict[str, np.ndarray]:
        """The layer's own parameters and buffers by their torch names (num_batches_tracked left out)."""
        module = self.named[name]
        tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        return {k: _numpy(v).copy() for k, v in tensors.items() if k != "num_batches_tracked"}

    def set_layer_params(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        module = self.named[name]
        with torch.no_grad():
            for k, v in arrays.items():
                getattr(module, k).copy_(torch.as_tensor(np.ascontiguousarray(v)))


# --- Flax ----------------------------------------------------------------------------------------

class FlaxSide:
    """A Linen module with its variables, or an NNX model split into graph and state; either way the
    variables are a plain nested dict the check owns (the user's model and arrays are not touched)."""

    def __init__(self, model, variables: dict | None = None, example_flax_input: np.ndarray | None = None,
                 seed: int = 0, initialise: bool = True):
        self.is_nnx = isinstance(model, nnx.Module)
        if self.is_nnx:
            self._template = nnx.clone(model)
            self.variables = jax.tree.map(_host, nnx.to_pure_dict(nnx.state(self._template)))
        else:
            if not isinstance(model, nn.Module):
                raise UsageError(f"the Flax model is a {type(model).__name__}, not a Linen or NNX module")
            self.module = model
            if variables is None:
                variables = self._init(example_flax_input, seed, initialise)
            self.variables = jax.tree.map(np.array, dict(variables))

    def _init(self, x, seed, initialise: bool):
        """The Linen module's variables: initialised (jitted: one compilation), or, when every one
        will be overwritten by transferred weights, only their shapes, as zeros (ones for scales
        and variances), which compiles nothing."""
        key = jax.random.key(seed)
        init = functools.partial(self.module.init, **mode_kwargs(self.module.__call__, False))
        try:
            if initialise:
                return jax.jit(init)({"params": key, "dropout": key}, jnp.asarray(x))
            shapes = jax.eval_shape(init, {"params": key, "dropout": key}, jnp.asarray(x))
            return jax.tree_util.tree_map_with_path(
                lambda path, a: (np.ones if path[-1].key in ("scale", "var") else np.zeros)(a.shape, a.dtype), shapes)
        except (TypeError, ValueError) as e:
            raise UsageError(f"the Flax model rejects input of shape {tuple(x.shape)}: {str(e).splitlines()[0]}") from None

    # variables of one layer, by Flax name (kernel, bias, scale, mean, var, embedding)
    def layer_vars(self, path: str) -> dict[str, np.ndarray]:
        out = {}
        for collection in self._collections():
            node = _lookup(collection, path)
            if isinstance(node, dict):
                out.update({k: np.asarray(v) for k, v in node.items() if not isinstance(v, dict) and k != "rngs"})
        return out

    def set_layer_vars(self, path: str, arrays: dict[str, np.ndarray]) -> None:
        for collection in self._collections():
            node = _lookup(collection, path)
            if isinstance(node, dict):
                for k, v in arrays.items():
                    if k in node:
                        if tuple(node[k].shape) != tuple(v.shape):
                            raise UsageError(f"{path}.{k}: shape {tuple(v.shape)} does not fit Flax's {tuple(node[k].shape)}")
                        node[k] = np.asarray(v, node[k].dtype)

    def _collections(self) -> list[dict]:
        return [self.variables] if self.is_nnx else [c for c in self.variables.values() if isinstance(c, dict)]

    def _nnx_model(self, variables: dict | None = None):
        """A fresh NNX model holding `variables` (default: the check's own)."""
        model = nnx.clone(self._template)
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, variables if variables is not None else self.variables))
        nnx.update(model, state)
        return model

    def forward(self, x: np.ndarray, train: bool = False, seed: int = 0) -> tuple[np.ndarray, dict[str, Capture]]:
        captures: dict[str, Capture] = {}
        try:
            out = self.call(jnp.asarray(x), train, _capturing(captures), seed=seed)
        except (TypeError, ValueError) as e:
            raise UsageError(f"the Flax model rejects input of shape {tuple(x.shape)}: {str(e).splitlines()[0]}") from None
        return np.asarray(out), captures

    def call(self, x, train: bool = False, hook: Callable | None = None, params=None, seed: int = 0):
        """The model's output on `x` with the check's variables (`params` replacing the parameters:
        traceable), every layer call passed through `hook(path, kind, module, input, output, kwargs)
        -> output` (sides' layer hooks: capture, perturb)."""
        if self.is_nnx:
            model = self._nnx_model(self.variables if params is None else _merge(self.variables, params))
            model.train() if train else model.eval()
            if hook is None:
                return model(x, **mode_kwargs(type(model).__call__, train))
            paths = {id(m): "/".join(map(str, p)) for p, m in nnx.iter_modules(model)}
            with _nnx_hook(paths, hook):
                return model(x, **mode_kwargs(type(model).__call__, train))
        variables = self.variables if params is None else {**self.variables, "params": params}
        if hook is None:
            return self._linen_apply(x, train, seed, variables)
        with nn.intercept_methods(_linen_hook(hook)):
            return self._linen_apply(x, train, seed, variables)

    def _linen_apply(self, x, train: bool, seed: int, variables):
        kwargs = mode_kwargs(self.module.__call__, train)
        # a dropout key in eval mode too: a dropout left on then draws (and shows) instead of failing
        rngs = {"dropout": jax.random.key(seed)}
        if train:
            out, _ = self.module.apply(variables, x, rngs=rngs, mutable=[c for c in variables if c != "params"], **kwargs)
            return out
        return self.module.apply(variables, x, rngs=rngs, **kwargs)

    def apply_fn(self, train: bool = False) -> Callable:
        """(params, x) → output, pure, differentiable in params (the non-param collections fixed)."""
        return lambda params, x: self.call(x, train, params=params)

    def apply_perturbed(self, params, x, perturbations: dict, train: bool = False):
        """The output with `perturbations[path]` added to each named layer's output (at its first
        call): the gradient w.r.t. a zero perturbation is that layer's activation gradient."""
        return self.call(x, train, _perturbing(perturbations), params=params)

    def stats_after_train_step(self, x: np.ndarray) -> dict:
        """The variables after one train-mode forward on `x` (batch statistics updated)."""
        x = jnp.asarray(x)
        if self.is_nnx:
            model = self._nnx_model()
            model.train()
            model(x, **mode_kwargs(type(model).__call__, True))
            return jax.tree.map(_host, nnx.to_pure_dict(nnx.state(model)))
        _, updates = self.module.apply(self.variables, x, rngs={"dropout": jax.random.key(0)},
                                       mutable=[c for c in self.variables if c != "params"],
                                       **mode_kwargs(self.module.__call__, True))
        return updates.get("batch_stats", {})

    @property
    def params(self) -> dict:
        """The trainable parameters as a nested dict (NNX: the variables without batch stats or rng state)."""
        if self.is_nnx:
            _, params, _ = nnx.split(self._nnx_model(), nnx.Param, ...)
            return jax.tree.map(_host, nnx.to_pure_dict(params))
        return self.variables["params"]

    def run_layer(self, capture: Capture, x: np.ndarray, train: bool = False) -> np.ndarray:
        """The captured layer alone, on `x`, with the current variables."""
        path, x = capture.name, jnp.asarray(x)
        if self.is_nnx:
            module = dict((("/".join(map(str, p))), m) for p, m in nnx.iter_modules(self._nnx_model()))[path]
            module.train() if train else module.eval()
            return np.asarray(module(x))
        layer = capture.module.clone(parent=None)
        variables = {c: _lookup(v, path) for c, v in self.variables.items() if _lookup(v, path) is not None}
        if train:
            return np.asarray(layer.apply(variables, x, rngs={"dropout": jax.random.key(0)},
                                          mutable=list(variables), **capture.kwargs)[0])
        return np.asarray(layer.apply(variables, x, **capture.kwargs))


def _host(a):
    """An array as numpy (a PRNG key, which numpy cannot hold, stays as it is)."""
    return a if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else np.array(a)


def _lookup(tree: dict, path: str):
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict):
            return None
        node = node.get(part, node.get(int(part)) if part.isdigit() else None)
        if node is None:
            return None
    return node


def _merge(full: dict, part: dict) -> dict:
    out = dict(full)
    for k, v in part.items():
        out[k] = _merge(full[k], v) if isinstance(v, dict) else v
    return out


def _capturing(captures: dict[str, Capture]) -> Callable:
    def hook(path, kind, module, x, out, kwargs):
        if path not in captures and not isinstance(out, jax.core.Tracer):
            settings = {k: v for k, v in kwargs.items() if isinstance(v, (bool, int, float, str, type(None)))}
            captures[path] = Capture(path, kind, np.asarray(x), np.asarray(out), module, settings)
        return out
    return hook


def _perturbing(perturbations: dict) -> Callable:
    done = set()

    def hook(path, kind, module, x, out, kwargs):
        if path in perturbations and path not in done:
            done.add(path)
            return out + perturbations[path]
        return out
    return hook


def _linen_hook(hook: Callable):
    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        kind = kind_of(context.module, LINEN_KINDS)
        if kind and context.method_name == "__call__" and args:
            return hook("/".join(context.module.path), kind, context.module, args[0], out, kwargs)
        return out
    return intercept


@contextlib.contextmanager
def _nnx_hook(paths: dict[int, str], hook: Callable):
    """NNX modules are called through their class: each layer class's __call__ is wrapped for the block."""
    originals = {cls: cls.__call__ for cls in NNX_KINDS}

    def wrapped(cls):
        original = originals[cls]

        def call(self, x, *args, **kwargs):
            out = original(self, x, *args, **kwargs)
            path = paths.get(id(self))
            return out if path is None else hook(path, NNX_KINDS[cls], self, x, out, {})
        return call

    try:
        for cls in originals:
            cls.__call__ = wrapped(cls)
        yield
    finally:
        for cls, original in originals.items():
            cls.__call__ = original
