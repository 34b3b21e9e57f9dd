"""After the forward agrees: BatchNorm running statistics after one train-mode step, parameter
gradients in backward order, an N-step training comparison from identical weights and batches, and
the optimisers alone on identical gradients (which separates a model difference from an optimiser
difference).

The loss is one neither model knows: half the mean squared distance of the output to a fixed random
target (the same on both sides), so that any model with any output can be compared. The PyTorch side
trains through the product's own step, `torch_ref.train.optimizer_step`, given that loss.
Optimisers are given as NAME:key=value,... : torch `adam:lr=1e-3,eps=1e-8` is torch.optim.Adam;
optax `adam:learning_rate=1e-3` is optax.adam.
"""

from __future__ import annotations

import ast
import copy
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from cnn_parity.differences import tree_max_abs_diff
from cnn_parity.errors import UsageError
from parity_check.bounds import calibrated_bound, diff
from parity_check.causes import finding
from parity_check.compare import to_flax_layout
from parity_check.torch_side import TorchSide, as_torch
from parity_check.trees import leaves
from parity_tests import bounds as fixed_bounds
from torch_ref import train as torch_train

OPTIMIZER_HINTS = {
    "adam_eps_root": "optax adds eps_root inside the square root and eps outside; torch's Adam adds eps outside only: "
                     "eps={t} in optax with eps_root=0",
    "weight_decay_coupling": "torch's Adam(weight_decay=...) adds the decay to the gradient (coupled L2), optax.adamw and "
                             "torch's AdamW decay the weights directly (decoupled): use the same kind on both sides",
    "weight_decay": "weight decay differs: torch {t}, optax {f} (torch AdamW's default is 0.01, optax.adamw's 1e-4; "
                    "optax.adam has none)",
    "optimizer_hyperparameters": "the optimisers' {what} differ: torch {t}, optax {f}",
}


def parse_optimizer(spec: str, framework: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, re.split(r",(?![^()]*\))", rest)):  # commas inside (b1, b2) kept
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"{framework} optimizer {spec!r}: expected NAME:key=value,...")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise UsageError(f"{framework} optimizer {spec!r}: {value!r} is not a number or literal") from None
    return name.strip(), kwargs


def torch_optimizer(spec: str, params) -> torch.optim.Optimizer:
    name, kwargs = parse_optimizer(spec, "torch")
    cls = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim)
           if isinstance(getattr(torch.optim, n), type) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)}
    if name.lower() not in cls:
        raise UsageError(f"torch optimizer {name!r} is not in torch.optim")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        return cls[name.lower()](params, **kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"torch optimizer {spec!r}: {e}") from None


def optax_optimizer(spec: str) -> optax.GradientTransformation:
    name, kwargs = parse_optimizer(spec, "optax")
    factory = getattr(optax, name, None)
    if not callable(factory):
        raise UsageError(f"optax has no optimizer {name!r}")
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"optax optimizer {spec!r}: {e}") from None


def lint_optimizers(torch_spec: str, optax_spec: str) -> list[dict]:
    """Findings on the two optimisers' settings (defaults included)."""
    tname, tk = parse_optimizer(torch_spec, "torch")
    oname, ok = parse_optimizer(optax_spec, "optax")
    tname, oname = tname.lower(), oname.lower()
    defaults = {"adam": {"eps": 1e-8, "weight_decay": 0.0}, "adamw": {"eps": 1e-8, "weight_decay": 0.01}}
    t = defaults.get(tname, {}) | tk
    o = {"eps": 1e-8, "eps_root": 0.0, "weight_decay": 1e-4 if oname == "adamw" else 0.0} | ok
    out = []

    def add(cause, **fields):
        out.append({"cause": cause, "torch_name": None, "flax_path": None, "severity": "error",
                    "hint": OPTIMIZER_HINTS[cause].format(**fields)})

    if tname in ("adam", "adamw") and oname in ("adam", "adamw"):
        if o["eps_root"] and not o["eps"]:
            add("adam_eps_root", t=t["eps"])
        elif not math.isclose(t["eps"], o["eps"]):
            add("optimizer_hyperparameters", what="eps", t=t["eps"], f=o["eps"])
        betas = tuple(tk.get("betas", (0.9, 0.999)))
        if betas != (ok.get("b1", 0.9), ok.get("b2", 0.999)):
            add("optimizer_hyperparameters", what="betas (b1, b2)", t=betas, f=(ok.get("b1", 0.9), ok.get("b2", 0.999)))
        coupled_vs_decoupled = {tname, oname} == {"adam", "adamw"} and t["weight_decay"] and o["weight_decay"]
        if coupled_vs_decoupled:
            add("weight_decay_coupling")
        elif not math.isclose(t["weight_decay"], o["weight_decay"]):
            add("weight_decay", t=t["weight_decay"], f=o["weight_decay"])
    lr_t, lr_o = tk.get("lr"), ok.get("learning_rate")
    if lr_t is not None and lr_o is not None and not math.isclose(lr_t, lr_o):
        add("optimizer_hyperparameters", what="learning rates", t=lr_t, f=lr_o)
    if "momentum" in tk and "momentum" in ok and not math.isclose(tk["momentum"], ok["momentum"] or 0.0):
        add("optimizer_hyperparameters", what="momenta", t=tk["momentum"], f=ok["momentum"])
    return out


# --- plumbing between the sides' parameter layouts --------------------------------------------------

def full_name(torch_name: str, tensor: str) -> str:
    return f"{torch_name}.{tensor}" if torch_name else tensor


def flax_tree_to_torch(pair, tree) -> dict[str, np.ndarray]:
    """A Flax params-shaped tree (parameters or gradients) as torch `name.tensor` arrays."""
    out = {}
    for m in pair.mapping.layers:
        values = pair.flax.layer_vars(m.flax_path, m.flax_kind, [tree])
        if not values or m.plan is None:
            continue
        arrays = m.plan.to_torch(values, pair.torch.layer_tensors(m.torch_name))
        out.update({full_name(m.torch_name, k): v for k, v in arrays.items()})
    return out


def torch_arrays_into_flax_tree(pair, arrays: dict[str, np.ndarray], tree) -> dict:
    tree = jax.tree.map(np.array, tree)
    for m in pair.mapping.layers:
        if m.plan is None:
            continue
        layer = {k: arrays[full_name(m.torch_name, k)] for k in pair.torch.layer_tensors(m.torch_name)
                 if full_name(m.torch_name, k) in arrays}
        pair.flax.set_layer_vars(m.flax_path, m.plan.to_flax(layer, pair.flax.layer_vars(m.flax_path, m.flax_kind)),
                                 [tree])
    return tree


def torch_params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()}


def max_tree_diff(a: dict, b: dict) -> float:
    """The largest max |Δ| over the tensors of `b` (`a` may hold more)."""
    return tree_max_abs_diff({k: a[k] for k in b if k in a}, {k: b[k] for k in b if k in a})


def first_leaf(out):
    """The model's first output array: what the checker's loss is computed on."""
    found = leaves(out, lambda x: isinstance(x, (torch.Tensor, jax.Array, np.ndarray)))
    return found[0][1]


def _targets(pair, seed: int):
    rng = np.random.default_rng(seed)
    torch_out, flax_out = first_leaf(pair.torch_out), first_leaf(pair.flax_out)
    target = rng.standard_normal(torch_out.shape).astype(np.float32)
    return target, to_flax_layout(target, flax_out)


class Applied(torch.nn.Module):
    """The user's model on a check's inputs (a dict, as the product's one-input step passes it),
    returning its first output tensor: what the product's training step drives."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        args = tuple(v for k, v in inputs.items() if k.isdigit())
        return first_leaf(self.model(*args, **{k: v for k, v in inputs.items() if not k.isdigit()}))


def _tensors(inputs: dict[str, np.ndarray], dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {k: as_torch(v, dtype) for k, v in inputs.items()}


# --- gradients ---------------------------------------------------------------------------------------

def half_mean_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The checker's loss on the PyTorch side (flax_loss is its twin)."""
    return 0.5 * ((outputs - targets) ** 2).mean()


def torch_gradients(model: torch.nn.Module, inputs: dict[str, np.ndarray], target: np.ndarray, dtype=torch.float32,
                    layers: tuple[str, ...] = ()):
    """(loss, parameter gradients by name, gradients w.r.t. the outputs of `layers` (first calls))."""
    model = copy.deepcopy(model).to(dtype)
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            output = first_leaf(output)
            if name not in outputs and output.requires_grad:
                output.retain_grad()
                outputs[name] = output
        return hook

    handles = [modules[name].register_forward_hook(keep(name)) for name in layers]
    try:  # the product's own forward, loss and backward (torch_ref.train), given the checker's loss
        loss, _ = torch_train.loss_and_gradients(Applied(model), _tensors(inputs, dtype),
                                                 torch.as_tensor(target, dtype=dtype), half_mean_squared_error)
    finally:
        for h in handles:
            h.remove()
    params = {k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None}
    return float(loss), params, {k: v.grad.numpy().copy() for k, v in outputs.items() if v.grad is not None}


def flax_loss(pair, train: bool):
    def loss(params, args, kwargs, target, perturbations=None):
        out = pair.flax.apply_perturbed(params, args, kwargs, perturbations or {}, train)
        return 0.5 * jnp.mean((first_leaf(out) - target) ** 2)
    return loss


def compare_gradients(pair, bounds: str) -> list[dict]:
    """In backward order (last layer first), per mapped layer the gradient w.r.t. its output
    ("activation") and then w.r.t. each of its parameters: max |Δ| and its bound."""
    target, flax_target = _targets(pair, seed=1)
    layers = tuple(m.torch_name for m in pair.mapping.layers if m.torch_name in pair.torch_caps)
    _, t32, a32 = torch_gradients(pair.torch.model.train(pair.train), pair.inputs, target, layers=layers)
    _, t64, a64 = torch_gradients(pair.torch.model, pair.inputs, target, torch.float64, layers)
    zeros = {m.flax_path: jnp.zeros(pair.flax_caps[m.flax_path].output.shape) for m in pair.mapping.layers
             if m.flax_path in pair.flax_caps}
    args, kwargs = pair.flax_inputs
    grads, activations = jax.grad(flax_loss(pair, pair.train), argnums=(0, 4))(
        pair.flax.params, args, kwargs, flax_target, zeros)
    f = flax_tree_to_torch(pair, grads)

    def entry(torch_name, flax_path, kind, flax_value, torch32, torch64):
        bound = fixed_bounds.GRAD_ABS if bounds == "fixed" else calibrated_bound(torch32, torch64)[0]
        return {"torch_name": torch_name, "flax_path": flax_path, "kind": kind,
                "max_abs_diff": diff(flax_value, torch32), "bound": bound}

    out = []
    for m in reversed(pair.mapping.layers):
        if m.torch_name in a32 and m.flax_path in activations:
            like = np.asarray(activations[m.flax_path])
            module = pair.torch_caps[m.torch_name].module
            out.append(entry(m.torch_name, m.flax_path, "activation", like,
                             to_flax_layout(a32[m.torch_name], like, m.kind, module),
                             to_flax_layout(a64[m.torch_name], like, m.kind, module)))
        for name in (k for k in reversed(list(t32)) if k.rsplit(".", 1)[0] == m.torch_name and k in f):
            out.append(entry(name, f"{m.flax_path}/{name.rsplit('.', 1)[1]}", "parameter", f[name], t32[name], t64[name]))
    return out


# --- BatchNorm running statistics --------------------------------------------------------------------

def compare_running_means(pair) -> list[dict]:
    """Each BatchNorm's running mean after one train-mode call of that layer alone, both sides on the
    input torch's layer gets in a train-mode forward, with the call's arguments each side's own
    train-mode forward gave it (momentum's effect, and whether Flax's updates at all). Alone, not
    after a whole train-mode step: with few values per channel (a 1x1 map, batch 2) train-mode batch
    statistics magnify every rounding difference from one BatchNorm to the next."""
    out = []
    bns = [m for m in pair.mapping.layers if m.kind == "batchnorm" and m.flax_kind == "batchnorm"]
    if not bns:
        return out
    torch_train = TorchSide(pair.torch.model)
    _, torch_caps = torch_train.forward(pair.inputs, train=True)
    _, flax_caps = pair.flax.forward(*pair.flax_inputs, train=True)
    for m in bns:
        t, f = torch_caps.get(m.torch_name), flax_caps.get(m.flax_path)
        if t is None or f is None:
            continue
        means = []
        for dtype in (torch.float32, torch.float64):
            layer = copy.deepcopy(pair.torch.layers[m.torch_name][0]).to(dtype).train()  # as before the forward
            with torch.no_grad():
                layer(torch.as_tensor(t.input, dtype=dtype))
            means.append(layer.running_mean.numpy())
        mean, mean64 = means
        before = pair.flax.layer_vars(m.flax_path, m.flax_kind)["mean"].reshape(mean.shape)
        stats = pair.flax.layer_state_after(f, [to_flax_layout(t.input, f.input, m.kind, t.module)] + f.inputs[1:])
        flax_mean = np.asarray(stats["mean"]).reshape(mean.shape)
        bound, _ = calibrated_bound(mean, mean64)
        out.append({"torch_name": m.torch_name, "flax_path": m.flax_path, "max_abs_diff": diff(flax_mean, mean),
                    "bound": bound, "flax_unchanged": bool(np.array_equal(flax_mean, before))})
    return out


# --- training -------------------------------------------------------------------------------------

def random_inputs(inputs: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
    """Inputs like the example: floats Gaussian at its spread, integers (token ids, masks) in its range."""
    out = {}
    for k, x in inputs.items():
        if x.dtype.kind in "iub":
            out[k] = rng.integers(int(x.min()), int(x.max()) + 1, x.shape).astype(x.dtype)
        else:
            out[k] = rng.standard_normal(x.shape).astype(np.float32) * float(np.std(x) or 1.0)
    return out


def _float64(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in inputs.items()}


def _flax_float64(params):
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float64) if jnp.issubdtype(jnp.asarray(p).dtype, jnp.floating)
                        else jnp.asarray(p), params)


def compare_training(pair, steps: int, torch_spec: str, optax_spec: str, seed: int = 2) -> dict:
    """`steps` steps on both sides from the same weights, on the same random batches (example-shaped)
    and targets; then the optimisers alone, fed the same random gradients for `steps` steps. Both in
    float64, as the parity suite's trajectory test: in float32 an adaptive optimiser (Adam at a high
    rate) turns the rounding of a gradient near zero into a step of up to the learning rate, so two
    float32 implementations of one computation part within a few steps and no bound separates them
    from two computations; in float64 that rounding is 1e-9 of float32's."""
    rng = np.random.default_rng(seed)
    batches = [_float64(random_inputs(pair.inputs, rng)) for _ in range(steps)]
    target, flax_target = (t.astype(np.float64) for t in _targets(pair, seed))
    model = copy.deepcopy(pair.torch.model).to(torch.float64).train(pair.train)
    opt_t = torch_optimizer(torch_spec, model.parameters())
    opt_f = optax_optimizer(optax_spec)
    loss_diffs, param_diffs = [], []
    with jax.enable_x64(True):
        params = _flax_float64(pair.flax.params)
        state = opt_f.init(params)
        loss_and_grad = jax.jit(jax.value_and_grad(flax_loss(pair, pair.train)))
        for batch in batches:  # PyTorch: the product's own optimiser step (torch_ref.train), on this loss
            loss_t, _ = torch_train.optimizer_step(Applied(model), opt_t, _tensors(batch, torch.float64),
                                                   torch.as_tensor(target), loss_fn=half_mean_squared_error)
            args, kwargs = pair.layout.flax_arguments(batch)
            loss_f, grads = loss_and_grad(params, args, kwargs, jnp.asarray(flax_target))
            updates, state = opt_f.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            loss_diffs.append(abs(float(loss_f) - float(loss_t)))
            param_diffs.append(max_tree_diff(flax_tree_to_torch(pair, params), torch_params(model)))
        only = optimizers_alone(pair, steps, torch_spec, optax_spec)
    return {"steps": steps, "dtype": "float64", "loss_diffs": loss_diffs, "param_diffs": param_diffs,
            "max_loss_diff": max(loss_diffs), "loss_bound": fixed_bounds.TRAJECTORY_LOSS,
            "param_bound": fixed_bounds.TRAJECTORY_PARAM, "optimizer_only_diffs": only,
            "optimizer_only_max_abs_diff": max(only), "optimizer_only_bound": fixed_bounds.UPDATE_ABS,
            "findings": lint_optimizers(torch_spec, optax_spec)}


def optimizers_alone(pair, steps: int, torch_spec: str, optax_spec: str, seed: int = 3) -> list[float]:
    """Max |Δ| of the parameters after each step when both optimisers get the same gradients (in
    float64, under the caller's enable_x64)."""
    rng = np.random.default_rng(seed)
    model = copy.deepcopy(pair.torch.model).to(torch.float64)
    opt_t = torch_optimizer(torch_spec, model.parameters())
    opt_f = optax_optimizer(optax_spec)
    params = _flax_float64(pair.flax.params)
    state = opt_f.init(params)
    diffs = []
    for _ in range(steps):
        grads = {k: rng.standard_normal(p.shape) * 1e-2 for k, p in model.named_parameters()}
        for k, p in model.named_parameters():
            p.grad = torch.as_tensor(grads[k])
        opt_t.step()
        flax_grads = _flax_float64(torch_arrays_into_flax_tree(pair, grads, jax.tree.map(np.zeros_like, params)))
        updates, state = opt_f.update(flax_grads, state, params)
        params = optax.apply_updates(params, updates)
        diffs.append(max_tree_diff(flax_tree_to_torch(pair, params), torch_params(model)))
    return diffs


def extend(report, pair, bounds: str, grads: bool, steps: int, torch_spec: str | None, optax_spec: str | None) -> None:
    """Add the running statistics, gradient and training comparisons to a passing forward `report`,
    with the first divergence among them (in that order)."""
    findings = {f["cause"]: f for f in report.findings}
    stats = compare_running_means(pair) if not pair.train else []
    if stats:
        report.findings.append(finding("bn_unbiased_var", stats[0]["torch_name"], stats[0]["flax_path"], severity="note"))
        bad = next((s for s in stats if not s["max_abs_diff"] <= s["bound"]), None)
        if bad is not None:
            cause = findings.get("bn_momentum")
            if bad["flax_unchanged"]:
                cause = finding("bn_frozen_in_train", bad["torch_name"], bad["flax_path"])
            _diverge(report, bad, "training", cause["cause"] if cause else None,
                     cause["hint"] if cause else "running means differ after one train-mode step")
            return
    if grads:
        report.gradients = compare_gradients(pair, bounds)
        bad = next((g for g in report.gradients if not g["max_abs_diff"] <= g["bound"]), None)
        if bad is not None:
            where = ("the gradient w.r.t. this layer's output" if bad["kind"] == "activation"
                     else "this parameter's gradient")
            _diverge(report, bad, "gradient", None, f"the forward agrees but {where} does not: the backward pass of "
                     "what follows differs (a custom gradient, max-pool ties, or a stop_gradient / detach on one side)")
            return
    if steps:
        if not (torch_spec and optax_spec):
            raise UsageError("a training comparison needs both --torch-optimizer and --optax")
        random = [r.torch_name for r in report.layers if r.random]
        if pair.train and random:
            report.training = {"steps": steps, "comparable": False}
            report.notes.append(f"not comparable step by step: in train mode each framework draws its own dropout "
                                f"masks (the layers from {random[0]} on change with the seed), so {steps} training steps "
                                "would part from the first one whatever the port; compare training without --train "
                                "(dropout off), or with dropout rates of 0")
            return
        training = compare_training(pair, steps, torch_spec, optax_spec)
        report.training = training
        over = [i for i, (l, p) in enumerate(zip(training["loss_diffs"], training["param_diffs"]))
                if not (l <= training["loss_bound"] and p <= training["param_bound"])]
        only_bad = not training["optimizer_only_max_abs_diff"] <= training["optimizer_only_bound"]
        if over or only_bad:
            step = over[0] if over else None
            lint = training["findings"]
            cause, hint = ((lint[0]["cause"], lint[0]["hint"]) if lint else
                           ("optimizer", "the optimisers alone disagree on identical gradients") if only_bad else
                           (None, "the optimisers agree on identical gradients, so the model's gradients differ in training"))
            where = {"torch_name": f"step {step + 1}" if step is not None else "(optimizer)", "flax_path": None,
                     "max_abs_diff": training["param_diffs"][step] if step is not None else training["optimizer_only_max_abs_diff"]}
            _diverge(report, where, "training", cause, hint)
            report.first_divergence["step"] = step + 1 if step is not None else None


def _diverge(report, where: dict, kind: str, cause, hint) -> None:
    report.passed = False
    report.first_divergence = {"torch_name": where["torch_name"], "flax_path": where["flax_path"], "kind": kind,
                               "status": None, "max_abs_diff": where["max_abs_diff"], "cause": cause, "hint": hint}
