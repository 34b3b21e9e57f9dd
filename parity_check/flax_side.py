"""The Flax side of a check: a Linen module with its variables, a Hugging Face Flax model (a Linen
module and its params behind a wrapper), or an NNX model split into graph and state. Either way the
variables are a plain nested dict the check owns (the user's model and arrays are not touched). Run
with every layer's inputs and outputs captured, the data flow between layers traced (each layer's
arguments and result tagged with jax.ad_checkpoint.checkpoint_name, then read back from the jaxpr),
one layer run alone, its variables read and written.

Layers: the modules of the kinds below, and any other module holding variables of its own (generic:
a bare `self.param`, an `nnx.Param` attribute); a composite (attention, nn.RNN) owns its sub-modules.
A module called several times is captured at its first call.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import threading
from typing import Any, Callable

import flax.errors
import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from cnn_parity.errors import UsageError
from parity_check.kinds import COMPOSITE
from parity_check.trees import Capture, fill, leaves, replace, template

LINEN_KINDS: dict[type, str] = {
    nn.Conv: "conv", nn.ConvTranspose: "conv_transpose", nn.Dense: "dense", nn.DenseGeneral: "dense",
    nn.BatchNorm: "batchnorm", nn.LayerNorm: "layernorm", nn.GroupNorm: "groupnorm", nn.RMSNorm: "rmsnorm",
    nn.Embed: "embedding", nn.MultiHeadDotProductAttention: "mha", nn.RNN: "rnn", nn.Dropout: "dropout",
}
NNX_KINDS: dict[type, str] = {
    nnx.Conv: "conv", nnx.ConvTranspose: "conv_transpose", nnx.Linear: "dense", nnx.LinearGeneral: "dense",
    nnx.BatchNorm: "batchnorm", nnx.LayerNorm: "layernorm", nnx.GroupNorm: "groupnorm", nnx.RMSNorm: "rmsnorm",
    nnx.Embed: "embedding", nnx.MultiHeadAttention: "mha", nnx.RNN: "rnn", nnx.Dropout: "dropout",
}
GRU_CELLS = ("GRUCell",)
# Collections that are not the model's state.
SKIPPED_COLLECTIONS = ("intermediates",)


def is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray)) and not isinstance(x, np.generic)


def _kind(module, kinds: dict[type, str]) -> str | None:
    for cls in type(module).__mro__:
        if cls in kinds:
            kind = kinds[cls]
            if kind == "rnn":  # which recurrence: from the cell
                return "gru" if type(module.cell).__name__ in GRU_CELLS else "lstm"
            return kind
    return None


def mode_kwargs(call: Callable, train: bool) -> dict[str, bool]:
    """The keyword arguments that put a Flax model's `__call__` in train or eval mode, by name."""
    try:
        names = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return {}
    wanted = {"train": train, "training": train, "is_training": train, "deterministic": not train,
              "use_running_average": not train}
    return {k: v for k, v in wanted.items() if k in names}


def is_hugging_face(model) -> bool:
    """A transformers Flax model: a Linen module and its params behind a wrapper."""
    return isinstance(getattr(model, "module", None), nn.Module) and isinstance(getattr(model, "params", None), dict)


def host(a):
    """An array as numpy (a PRNG key, which numpy cannot hold, stays as it is)."""
    return a if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else np.array(a)


def lookup(tree: dict, path: str):
    node = tree
    for part in path.split("/") if path else []:
        if not isinstance(node, dict):
            return None
        node = node.get(part, node.get(int(part)) if part.isdigit() else None)
        if node is None:
            return None
    return node


def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        out.update(flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def _merge(full: dict, part: dict) -> dict:
    out = dict(full)
    for k, v in part.items():
        out[k] = _merge(full[k], v) if isinstance(v, dict) else v
    return out


class _Hooks:
    """Which module calls are layer calls, and the hook they go through: `hook(path, kind, module,
    args, kwargs, call) -> result`, where call(args, kwargs) runs the layer. A composite's sub-modules
    are not layers."""

    def __init__(self, hook: Callable, owners: set[str]):
        self.hook, self.owners = hook, owners
        self.local = threading.local()

    def layer(self, path: str, module, kinds) -> str | None:
        if getattr(self.local, "inside", 0):
            return None
        kind = _kind(module, kinds)
        return kind if kind else "generic" if path in self.owners else None

    def run(self, path, kind, module, args, kwargs, call):
        composite = kind in COMPOSITE
        self.local.inside = getattr(self.local, "inside", 0) + composite
        try:
            return self.hook(path, kind, module, args, kwargs, call)
        finally:
            self.local.inside -= composite


class FlaxSide:
    """The Flax model and the variables the check owns."""

    def __init__(self, model, variables: dict | None = None, example: tuple[tuple, dict] | None = None,
                 seed: int = 0, initialise: bool = True):
        self.is_nnx = isinstance(model, nnx.Module)
        self.hugging_face = is_hugging_face(model)
        self.batch_stats_in_eval: str | None = None  # the Linen module that updates them in eval mode
        self._cached = None  # NNX: (model, modules by path) holding the current variables
        # a Linen cell built in the module that calls nn.RNN belongs to that module, not to the nn.RNN:
        # nn.RNN path → the cell's path
        self.cell_paths: dict[str, str] = {}
        if self.is_nnx:
            self._template = nnx.clone(model)
            if variables is not None:  # the user's own variables (a conversion made elsewhere)
                state = nnx.state(self._template)
                try:
                    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, variables))
                except Exception as e:  # noqa: BLE001 (a tree that does not fit the model is bad input)
                    raise UsageError(f"the Flax weights do not fit the NNX model: {_first_line(e)}") from None
                nnx.update(self._template, state)
            self.variables = jax.tree.map(host, nnx.to_pure_dict(nnx.state(self._template)))
            rng_state = flat(nnx.to_pure_dict(nnx.state(self._template, nnx.RngState)))
            self.rng_keys = set(rng_state)
        elif self.hugging_face:
            self.wrapper = model
            self.module = model.module
            self.full_params = "params" in model.params  # models with batch statistics take all collections
            given = variables if variables is not None else model.params if self.full_params else {"params": model.params}
            self.variables = jax.tree.map(np.array, dict(given))
            self.rng_keys = set()
        else:
            if not isinstance(model, nn.Module):
                raise UsageError(f"the Flax model is a {type(model).__name__}, not a Linen or NNX module "
                                 "(or a Hugging Face Flax model)")
            self.module = model
            if variables is None:
                variables = self._init(example, seed, initialise)
            self.variables = jax.tree.map(np.array, {k: v for k, v in dict(variables).items()
                                                     if k not in SKIPPED_COLLECTIONS})
            self.rng_keys = set()

    def _init(self, example, seed, initialise: bool):
        """The Linen module's variables: initialised (jitted: one compilation), or, when every one
        will be overwritten by transferred weights, only their shapes, as zeros (ones for scales
        and variances), which compiles nothing."""
        key = jax.random.key(seed)
        args, kwargs = example
        init = functools.partial(self.module.init, **mode_kwargs(self.module.__call__, False))
        try:
            if initialise:
                return jax.jit(init)({"params": key, "dropout": key}, *args, **kwargs)
            shapes = jax.eval_shape(init, {"params": key, "dropout": key}, *args, **kwargs)
            return jax.tree_util.tree_map_with_path(
                lambda path, a: (np.ones if path[-1].key in ("scale", "var") else np.zeros)(a.shape, a.dtype), shapes)
        except Exception as e:  # noqa: BLE001 (whatever the user's module raises on this input)
            raise UsageError(f"the Flax model rejects its input{_shapes(args, kwargs)}: {_first_line(e)}") from None

    # --- variables --------------------------------------------------------------------------------

    def _collections(self) -> list[dict]:
        return [self.variables] if self.is_nnx else [c for c in self.variables.values() if isinstance(c, dict)]

    def inventory(self) -> dict[str, np.ndarray]:
        """Every variable by its full path ('params/Conv_0/kernel'; NNX: 'conv1/kernel'), RNG state left out."""
        return {k: v for k, v in flat(self.variables).items() if k not in self.rng_keys}

    def owners(self) -> set[str]:
        """The module paths that hold variables of their own."""
        out = set()
        for collection in self._collections():
            for key in flat(collection):
                if key not in self.rng_keys:
                    out.add(key.rpartition("/")[0])
        return out

    def _nodes(self, path: str, trees: list[dict] | None) -> list[tuple[str, dict]]:
        """(key prefix, node) of a layer in each collection: its own node, or, for a Linen nn.RNN whose
        cell was built by the module that calls it, the cell's node under the prefix 'cell/'."""
        trees = self._collections() if trees is None else trees
        if path in self.cell_paths:
            return [("cell/", n) for n in (lookup(t, self.cell_paths[path]) for t in trees) if isinstance(n, dict)]
        return [("", n) for n in (lookup(t, path) for t in trees) if isinstance(n, dict)]

    def layer_vars(self, path: str, kind: str, trees: list[dict] | None = None) -> dict[str, np.ndarray]:
        """A layer's variables by key ('kernel'; a composite's 'query/kernel'), collections merged
        (`trees`: other trees of the same shape, such as gradients)."""
        out = {}
        where = self.cell_paths.get(path, path)
        for prefix, node in self._nodes(path, trees):
            items = flat(node) if kind in COMPOSITE else {k: v for k, v in node.items() if not isinstance(v, dict)}
            out.update({prefix + k: np.asarray(v) for k, v in items.items()
                        if "/".join(p for p in (where, k) if p) not in self.rng_keys})
        return out

    def _eval_model(self):
        """The NNX model holding the check's variables, in eval mode, and its modules by path: built once
        per set of variables (an eval-mode call changes nothing in it)."""
        if self._cached is None:
            model = self._nnx_model()
            model.eval()
            self._cached = (model, {"/".join(map(str, p)): m for p, m in nnx.iter_modules(model)})
        return self._cached

    def set_layer_vars(self, path: str, arrays: dict[str, np.ndarray], trees: list[dict] | None = None) -> None:
        if trees is None:
            self._cached = None
        for prefix, node in self._nodes(path, trees):
            for key, value in arrays.items():
                if not key.startswith(prefix):
                    continue
                *parents, leaf = key[len(prefix):].split("/")
                holder = lookup(node, "/".join(parents)) if parents else node
                if isinstance(holder, dict) and leaf in holder:
                    if tuple(np.shape(holder[leaf])) != tuple(value.shape):
                        raise UsageError(f"{path}/{key}: shape {tuple(value.shape)} does not fit Flax's "
                                         f"{tuple(np.shape(holder[leaf]))}")
                    holder[leaf] = np.asarray(value, holder[leaf].dtype)

    @property
    def params(self) -> dict:
        """The trainable parameters as a nested dict (NNX: the variables without batch stats or rng state)."""
        if self.is_nnx:
            _, params, _ = nnx.split(self._nnx_model(), nnx.Param, ...)
            return jax.tree.map(host, nnx.to_pure_dict(params))
        return self.variables["params"]

    # --- running ----------------------------------------------------------------------------------

    def _nnx_model(self, variables: dict | None = None):
        """A fresh NNX model holding `variables` (default: the check's own)."""
        model = nnx.clone(self._template)
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, variables if variables is not None else self.variables))
        nnx.update(model, state)
        return model

    def call(self, args: tuple, kwargs: dict, train: bool = False, hook: Callable | None = None, params=None,
             seed: int = 0, updates: dict | None = None):
        """The model's result on (args, kwargs) with the check's variables (`params` replacing the
        parameters: traceable), every layer call passed through `hook` (see _Hooks); `updates`, if
        given, receives the variables a train-mode call changed."""
        if self.is_nnx:
            if params is None and not train and updates is None:
                model = nnx.clone(self._eval_model()[0])  # a copy: a call may still change state (a BatchNorm
                # told use_running_average=False in eval mode)
            else:
                model = self._nnx_model(self.variables if params is None else _merge(self.variables, params))
            model.train() if train else model.eval()
            mode = mode_kwargs(type(model).__call__, train)
            with (_nnx_hooks(model, _Hooks(hook, self.owners())) if hook else contextlib.nullcontext()):
                out = model(*args, **kwargs, **mode)
            if updates is not None:
                updates.update(jax.tree.map(host, nnx.to_pure_dict(nnx.state(model))))
            return out
        variables = self.variables if params is None else {**self.variables, "params": params}
        with (nn.intercept_methods(_linen_hook(_Hooks(hook, self.owners()))) if hook else contextlib.nullcontext()):
            return self._linen_apply(variables, args, kwargs, train, seed, updates)

    def _linen_apply(self, variables, args, kwargs, train: bool, seed: int, updates: dict | None):
        mutable = [c for c in variables if c != "params"] if train or self.batch_stats_in_eval else False
        if self.hugging_face:
            call_kwargs = {"params": variables if self.full_params else variables["params"], "train": train}
            if train and "dropout_rng" in inspect.signature(self.wrapper.__call__).parameters:
                call_kwargs["dropout_rng"] = jax.random.key(seed)
            out = self.wrapper(*args, **kwargs, **call_kwargs)
            if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict) and "batch_stats" in out[1]:
                if updates is not None:
                    updates.update(out[1])
                return out[0]
            return out
        # a dropout key in eval mode too: a dropout left on then draws (and shows) instead of failing
        rngs = {"dropout": jax.random.key(seed)}
        mode = mode_kwargs(self.module.__call__, train)
        if mutable:
            out, changed = self.module.apply(variables, *args, rngs=rngs, mutable=mutable, **kwargs, **mode)
            if updates is not None:
                updates.update(changed)
            return out
        try:
            return self.module.apply(variables, *args, rngs=rngs, **kwargs, **mode)
        except flax.errors.ModifyScopeVariableError as e:
            # a BatchNorm left on batch statistics in eval mode: named by the causes, computed as it is
            found = re.search(r'in "([^"]*)"', str(e))
            self.batch_stats_in_eval = (found.group(1).strip("/") if found else "") or "?"
            return self._linen_apply(variables, args, kwargs, train, seed, updates)

    def forward(self, args: tuple, kwargs: dict, train: bool = False, seed: int = 0):
        """(output, every layer's capture)."""
        captures: dict[str, Capture] = {}

        def capture(path, kind, module, a, k, call):
            out = call(a, k)
            if path not in captures and not any(isinstance(x, jax.core.Tracer) for _, x in leaves((a, k, out), is_array)):
                recorded, arrays = template(a, k, is_array)
                found = leaves((a, k), is_array)
                outs = leaves(out, is_array)
                settings = {n: v for n, v in k.items() if isinstance(v, (bool, int, float, str, type(None)))}
                if kind in ("lstm", "gru") and not self.is_nnx:
                    self._locate_cell(path, module)
                captures[path] = Capture(path, kind, module, [np.array(x) for x in arrays], [p for p, _ in found],
                                         [np.array(x) for _, x in outs], [p for p, _ in outs], settings, recorded,
                                         primary=len(outs) - 1 if kind in ("lstm", "gru") else 0)
            return out
        try:
            out = self.call(args, kwargs, train, capture, seed=seed)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 (whatever the user's model raises on this input)
            raise UsageError(f"the Flax model rejects its input{_shapes(args, kwargs)}: {_first_line(e)}") from None
        return output_arrays(out), captures

    def _locate_cell(self, path: str, module) -> None:
        try:
            cell_path = "/".join(module.cell.path)
        except Exception:  # noqa: BLE001 (an unbound cell: it lives under the nn.RNN)
            return
        if cell_path and cell_path != f"{path}/cell":
            self.cell_paths[path] = cell_path

    def lineage(self, args: tuple, kwargs: dict, names: list[str],
                train: bool = False) -> tuple[dict[str, frozenset], dict[str, Capture]]:
        """From one traced call (nothing computed): each layer's parents, the layers (and model inputs,
        'input:NAME') its array arguments were computed from, read from the jaxpr; and the layers
        called, in call order (captures without values)."""
        calls: dict[str, Capture] = {}

        def tag(path, kind, module, a, k, call):
            if path not in calls:
                if kind in ("lstm", "gru") and not self.is_nnx:
                    self._locate_cell(path, module)
                calls[path] = Capture(path, kind, module, [], [], [], [])
            a, k = replace((a, k), is_array, lambda x: checkpoint_name(x, f"in|{path}"))
            return replace(call(a, k), is_array, lambda x: checkpoint_name(x, f"out|{path}"))

        inputs = list(args) + list(kwargs.values())
        if self.is_nnx:
            self._eval_model()  # built outside the trace: what a trace builds holds its tracers

        def run(*arrays):
            return self.call(tuple(arrays[:len(args)]), dict(zip(kwargs, arrays[len(args):])), train, tag)
        jaxpr = jax.make_jaxpr(run)(*inputs)
        return _parents(jaxpr.jaxpr, [frozenset({f"input:{n}"}) for n in names]), calls

    def run_layer(self, capture: Capture, arrays: list[np.ndarray], train: bool = False) -> list[np.ndarray]:
        """The captured layer alone on `arrays` (its captured arguments, some replaced): its outputs."""
        args, kwargs = fill(capture.call, [jnp.asarray(a) for a in arrays])
        if self.is_nnx:
            if train:
                model = self._nnx_model()
                module = dict(("/".join(map(str, p)), m) for p, m in nnx.iter_modules(model))[capture.name]
                module.train()
            else:
                module = self._eval_model()[1][capture.name]
            out = module(*args, **kwargs)
        else:
            layer = capture.module.clone(parent=None)
            variables = {c: lookup(v, capture.name) for c, v in self.variables.items()
                         if isinstance(lookup(v, capture.name), dict)}
            if capture.name in self.cell_paths:  # the cell, built elsewhere, goes with it
                layer = capture.module.clone(parent=None, cell=capture.module.cell.clone(parent=None))
                cell = self.cell_paths[capture.name]
                variables = {c: {"cell": lookup(v, cell)} for c, v in self.variables.items()
                             if isinstance(lookup(v, cell), dict)}
            rngs = {"dropout": jax.random.key(0)}
            mutable = list(variables) if train or self.batch_stats_in_eval else False
            out = layer.apply(variables, *args, rngs=rngs, mutable=mutable, **kwargs)
            out = out[0] if mutable else out
        return [np.array(x) for _, x in leaves(out, is_array)]

    def apply_fn(self, train: bool = False) -> Callable:
        """(params, args, kwargs) → output, pure, differentiable in params (the other collections fixed)."""
        return lambda params, args, kwargs: self.call(args, kwargs, train, params=params)

    def apply_perturbed(self, params, args, kwargs, perturbations: dict, train: bool = False):
        """The output with `perturbations[path]` added to each named layer's result (at its first
        call): the gradient w.r.t. a zero perturbation is that layer's activation gradient."""
        done = set()

        def perturb(path, kind, module, a, k, call):
            out = call(a, k)
            if path in perturbations and path not in done:
                done.add(path)
                first = [True]

                def add(x):
                    if first[0]:
                        first[0] = False
                        return x + perturbations[path]
                    return x
                return replace(out, is_array, add)
            return out
        return self.call(args, kwargs, train, perturb, params=params)

    def layer_state_after(self, capture: Capture, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The captured layer's variables after one train-mode call of it alone on `arrays` (with the
        call's own arguments: a port that tells it use_running_average=True keeps its statistics)."""
        args, kwargs = fill(capture.call, [jnp.asarray(a) for a in arrays])
        if self.is_nnx:
            model = self._nnx_model()
            module = dict(("/".join(map(str, p)), m) for p, m in nnx.iter_modules(model))[capture.name]
            module.train()
            module(*args, **kwargs)
            return {k: np.asarray(v) for k, v in flat(nnx.to_pure_dict(nnx.state(module))).items()}
        variables = {c: lookup(v, capture.name) for c, v in self.variables.items()
                     if isinstance(lookup(v, capture.name), dict)}
        _, updates = capture.module.clone(parent=None).apply(variables, *args, rngs={"dropout": jax.random.key(0)},
                                                             mutable=list(variables), **kwargs)
        return {k: np.asarray(v) for c in updates.values() for k, v in flat(c).items()}


def output_arrays(out):
    """The model's output as numpy arrays (a model-output object or tuple as a dict by path)."""
    if is_array(out):
        return np.array(out)
    return {path: np.array(x) for path, x in leaves(out, is_array)}


def _shapes(args, kwargs) -> str:
    found = leaves((args, kwargs), lambda x: hasattr(x, "shape"))
    return " (" + ", ".join(f"{p.split('.', 1)[-1]} {tuple(x.shape)}" for p, x in found) + ")" if found else ""


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _linen_hook(hooks: _Hooks):
    def intercept(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = "/".join(context.module.path)
        kind = hooks.layer(path, context.module, LINEN_KINDS)
        if kind is None:
            return next_fun(*args, **kwargs)
        return hooks.run(path, kind, context.module, args, kwargs, lambda a, k: next_fun(*a, **k))
    return intercept


@contextlib.contextmanager
def _nnx_hooks(model, hooks: _Hooks):
    """NNX modules are called through their class: each layer class's __call__ is wrapped for the block."""
    paths = {id(m): "/".join(map(str, p)) for p, m in nnx.iter_modules(model)}
    classes = {type(m) for _, m in nnx.iter_modules(model)}
    originals = {cls: (cls.__dict__.get("__call__"), cls.__call__) for cls in classes
                 if callable(getattr(cls, "__call__", None))}

    def wrapped(original):
        def call(self, *args, **kwargs):
            path = paths.get(id(self))
            kind = None if path is None else hooks.layer(path, self, NNX_KINDS)
            if kind is None:
                return original(self, *args, **kwargs)
            return hooks.run(path, kind, self, args, kwargs, lambda a, k: original(self, *a, **k))
        return call

    try:
        for cls, (_, resolved) in originals.items():
            cls.__call__ = wrapped(resolved)
        yield
    finally:
        for cls, (own, _) in originals.items():
            if own is None:
                del cls.__call__
            else:
                cls.__call__ = own


# --- the data flow, from a jaxpr ---------------------------------------------------------------------

def _parents(jaxpr, input_sources: list[frozenset]) -> dict[str, frozenset]:
    parents: dict[str, frozenset] = {}
    env = {v: s for v, s in zip(jaxpr.invars, input_sources)}
    _walk(jaxpr, env, parents)
    return parents


def _sub_jaxprs(params: dict) -> list:
    out = []
    for v in params.values():
        for item in (v if isinstance(v, (tuple, list)) else (v,)):
            if type(item).__name__ == "ClosedJaxpr":
                out.append(item.jaxpr)
            elif type(item).__name__ == "Jaxpr":
                out.append(item)
    return out


def _walk(jaxpr, env: dict, parents: dict) -> None:
    def get(v):
        return env.get(v, frozenset()) if not isinstance(v, jax.extend.core.Literal) else frozenset()

    for eqn in jaxpr.eqns:
        ins = [get(v) for v in eqn.invars]
        if eqn.primitive.name == "name" and "|" in str(eqn.params.get("name", "")):
            role, path = eqn.params["name"].split("|", 1)
            if role == "in":
                parents[path] = parents.get(path, frozenset()) | ins[0]
                env[eqn.outvars[0]] = ins[0]
            else:
                env[eqn.outvars[0]] = frozenset({path})
            continue
        subs = _sub_jaxprs(eqn.params)
        union = frozenset().union(*ins) if ins else frozenset()
        if len(subs) == 1 and len(subs[0].invars) == len(eqn.invars) and len(subs[0].outvars) == len(eqn.outvars):
            inner = dict(zip(subs[0].invars, ins))  # a call (jit, custom_jvp, remat): argument for argument
            _walk(subs[0], inner, parents)
            for v, w in zip(eqn.outvars, subs[0].outvars):
                env[v] = inner.get(w, frozenset()) if not isinstance(w, jax.extend.core.Literal) else frozenset()
            continue
        for sub in subs:  # loops and conditionals: everything from everything
            inner = {v: union for v in sub.invars}
            _walk(sub, inner, parents)
            union = union.union(*(inner.get(w, frozenset()) for w in sub.outvars
                                  if not isinstance(w, jax.extend.core.Literal)))
        for v in eqn.outvars:
            env[v] = union
