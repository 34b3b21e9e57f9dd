"""The parity measurements, shared by the tests (parity_tests/test_*.py) and the report (report.py).

Everything here drives the *product*: the models of flax_impl/ and torch_ref/, their converters
(canonical weights = PyTorch state_dict names and layouts), normalisers, optimiser factories, the
Flax `train_step` and `cross_entropy`. What this module adds is only the plumbing that puts the two
frameworks side by side and the numbers that compare them. Each measurement takes the converter /
optimiser factory it uses as an argument, so the planted-bug tests run the very same measurement
with a known-wrong piece swapped in.

Precision: importing this module pins full float32 everywhere (see `configure_precision`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from cnn_parity import data as neutral_data
from cnn_parity.recipes import MODELS, Optimizer, Recipe, load_recipe
from cnn_parity.workdir import versions
from flax_impl import convert as flax_convert
from flax_impl import data as flax_data
from flax_impl import models as flax_models
from flax_impl import train as flax_train
from torch_ref import convert as torch_convert
from torch_ref import data as torch_data
from torch_ref import models as torch_models
from torch_ref import train as torch_train

Canonical = dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------
# Precision and environment
# ----------------------------------------------------------------------------------------------

def configure_precision() -> None:
    """Full float32 in both frameworks: no TF32 / bf16 passes on any device.

    On CPU these are already the defaults (XLA:CPU and PyTorch's CPU kernels compute float32 dots
    and convolutions in float32); they matter on GPU, where JAX's default matmul precision and
    PyTorch's cuDNN convolutions use TF32 on Ampere and later (~1e-3 relative error), which would
    swamp every bound below. See parity_tests/README.md.
    """
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


configure_precision()


def device_description() -> dict[str, str]:
    jax_device = jax.devices()[0]
    torch_device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "jax": f"{jax_device.platform} ({jax_device.device_kind})",
        "torch": torch_device,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "torch_allow_tf32": str(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
    }


def environment() -> dict[str, Any]:
    return {"versions": versions(), "device": device_description()}


# ----------------------------------------------------------------------------------------------
# Data: real batches (cached splits) and random inputs, fed to each side through its own normaliser
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _split(dataset: str, split: str, data_dir: str | None) -> neutral_data.Split:
    return neutral_data.load_split(dataset, split, data_dir)


def real_images(recipe: Recipe, n: int, split: str = "train", start: int = 0,
                data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images `start:start+n` (uint8 (n, 28, 28)) and labels (int64) of the recipe's data set."""
    s = _split(recipe.dataset, split, data_dir)
    return s.images[start:start + n], s.labels[start:start + n].astype(np.int64)


def random_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random uint8 pixels and labels: inputs no data set would produce."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64))


@dataclass(frozen=True)
class Batch:
    """One batch as each framework sees it: Flax float NHWC, torch float NCHW, int labels."""

    flax_x: jax.Array
    torch_x: torch.Tensor
    flax_y: jax.Array
    torch_y: torch.Tensor

    def __len__(self) -> int:
        return len(self.torch_y)


def batch_from_uint8(recipe: Recipe, images: np.ndarray, labels: np.ndarray) -> Batch:
    """Each side normalises the same uint8 pixels with its own `normalize` (the product's)."""
    mean, std = recipe.normalize_mean, recipe.normalize_std
    return Batch(flax_x=flax_data.normalize(jnp.asarray(images), mean, std),
                 torch_x=torch_data.normalize(torch.from_numpy(np.ascontiguousarray(images)), mean, std),
                 flax_y=jnp.asarray(labels, jnp.int32), torch_y=torch.from_numpy(labels.astype(np.int64)))


def batch_from_float(x_nchw: np.ndarray, labels: np.ndarray) -> Batch:
    """Arbitrary float inputs (e.g. Gaussian), bypassing the normalisers."""
    x = np.asarray(x_nchw, np.float32)
    return Batch(flax_x=jnp.asarray(x.transpose(0, 2, 3, 1)), torch_x=torch.from_numpy(x.copy()),
                 flax_y=jnp.asarray(labels, jnp.int32), torch_y=torch.from_numpy(labels.astype(np.int64)))


def make_batch(recipe: Recipe, kind: str, n: int, seed: int = 0, data_dir: str | None = None,
               start: int = 0) -> Batch:
    """kind: "real" (the recipe's data set, train split), "uniform" (random pixels), "gaussian"."""
    if kind == "real":
        return batch_from_uint8(recipe, *real_images(recipe, n, "train", start, data_dir))
    if kind == "uniform":
        return batch_from_uint8(recipe, *random_images(n, seed))
    if kind == "gaussian":
        rng = np.random.default_rng(seed)
        return batch_from_float(rng.standard_normal((n, 1, 28, 28), np.float32), rng.integers(0, 10, n))
    raise ValueError(f"unknown batch kind {kind!r}")


def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def tree_max_abs_diff(a: Canonical, b: Canonical) -> float:
    if set(a) != set(b):
        raise AssertionError(f"names differ: {sorted(set(a) ^ set(b))}")
    return max(max_abs_diff(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# A model in both frameworks, holding the same weights
# ----------------------------------------------------------------------------------------------

ToFlax = Callable[[str, Canonical], Any]  # flax_impl.convert.params_from_canonical's signature
ToCanonical = Callable[[str, Any], Canonical]  # flax_impl.convert.params_to_canonical's signature


@dataclass
class Pair:
    name: str
    recipe: Recipe
    canonical: Canonical  # the weights both sides were built from
    torch_model: torch.nn.Module
    flax_model: nn.Module
    flax_params: Any


def torch_init(name: str, seed: int = 0, init_scheme: str = "torch") -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch_models.create_model(name, init_scheme)


def pair_from_torch(name: str, seed: int = 0, init_scheme: str = "torch",
                    to_flax: ToFlax = flax_convert.params_from_canonical) -> Pair:
    """Torch initialises; Flax gets the weights through the converter (direction torch → flax)."""
    module = torch_init(name, seed, init_scheme)
    canonical = torch_convert.state_dict_to_canonical(name, module)
    return Pair(name, load_recipe(name), canonical, module, flax_models.create_model(name, init_scheme),
                to_flax(name, canonical))


def pair_from_flax(name: str, seed: int = 0, init_scheme: str = "torch",
                   to_canonical: ToCanonical = flax_convert.params_to_canonical) -> Pair:
    """Flax initialises; torch gets the weights through the converter (direction flax → torch)."""
    model = flax_models.create_model(name, init_scheme)
    params = flax_models.init_params(model, jax.random.key(seed))
    canonical = to_canonical(name, params)
    module = torch_convert.load_canonical(name, torch_models.create_model(name, init_scheme), canonical)
    return Pair(name, load_recipe(name), canonical, module, model, params)


# Jitted Flax functions, compiled once per (model, init scheme, input shape) for the whole session.
@functools.lru_cache(maxsize=None)
def _flax_forward(model: nn.Module):
    return jax.jit(lambda params, x: model.apply({"params": params}, x, train=False))


@functools.lru_cache(maxsize=None)
def _flax_loss_grad(model: nn.Module, masked: bool):
    def loss(params, x, y, mask):
        with inject_flax_dropout_mask(mask) if masked else contextlib.nullcontext():
            outputs = model.apply({"params": params}, x, train=masked, rngs={"dropout": jax.random.key(0)})
        return flax_train.cross_entropy(outputs, y)

    return jax.jit(jax.value_and_grad(loss))


@functools.lru_cache(maxsize=None)
def _flax_train_step():
    return jax.jit(flax_train.train_step)


def forward(pair: Pair, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode outputs (logits; fashion_cnn: log-probabilities) of (Flax, torch)."""
    flax_out = np.asarray(_flax_forward(pair.flax_model)(pair.flax_params, batch.flax_x))
    pair.torch_model.eval()
    with torch.no_grad():
        torch_out = pair.torch_model(batch.torch_x).numpy()
    return flax_out, torch_out


def measure_forward(pair: Pair, batch: Batch) -> float:
    flax_out, torch_out = forward(pair, batch)
    return max_abs_diff(flax_out, torch_out)


# ----------------------------------------------------------------------------------------------
# Layer outputs (for the shape tests)
# ----------------------------------------------------------------------------------------------

def flax_layer_shapes(pair: Pair, batch: Batch, train: bool = False) -> dict[str, tuple[int, ...]]:
    """Output shape of every submodule (conv1, fc1, Dropout_0, ...) and of the model ("output")."""
    _, state = pair.flax_model.apply({"params": pair.flax_params}, batch.flax_x, train=train,
                                     rngs={"dropout": jax.random.key(0)}, capture_intermediates=True,
                                     mutable=["intermediates"])
    inter = state["intermediates"]
    shapes = {name: tuple(v["__call__"][0].shape) for name, v in inter.items() if name != "__call__"}
    shapes["output"] = tuple(inter["__call__"][0].shape)
    return shapes


def torch_layer_shapes(pair: Pair, batch: Batch) -> dict[str, tuple[int, ...]]:
    shapes, handles = {}, []
    for name, module in pair.torch_model.named_children():
        handles.append(module.register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape))))
    try:
        pair.torch_model.eval()
        with torch.no_grad():
            shapes["output"] = tuple(pair.torch_model(batch.torch_x).shape)
    finally:
        for h in handles:
            h.remove()
    return shapes


# ----------------------------------------------------------------------------------------------
# Dropout: one mask for both frameworks
# ----------------------------------------------------------------------------------------------
# Flax draws the mask (its own nn.Dropout, with the rng `train_step` is given); `flax_dropout_mask`
# reads it back by re-running the same apply with the same rng, with the Dropout's input replaced by
# ones (an nn.intercept_methods interceptor), so its output is exactly mask / keep_prob. Torch then
# uses that mask instead of drawing its own: a forward hook on `model.dropout` replaces the output
# with input * mask / keep_prob (the formula of torch's own F.dropout, survivors × 1/(1-p)).
# Torch's and Flax's own rates and scaling are tested separately (test_dropout.py).

def _is_dropout_call(context) -> bool:
    return isinstance(context.module, nn.Dropout) and context.method_name == "__call__"


def flax_dropout_mask(pair_or_model, params, x: jax.Array, rng: jax.Array) -> jax.Array:
    """The boolean keep-mask Flax's dropout draws in `model.apply(..., train=True, rngs={"dropout": rng})`."""
    model = pair_or_model.flax_model if isinstance(pair_or_model, Pair) else pair_or_model
    return _flax_mask_fn(model)(params, x, rng)


@functools.lru_cache(maxsize=None)
def _flax_mask_fn(model: nn.Module):
    def mask_fn(params, x, rng):
        found = []

        def interceptor(next_fun, args, kwargs, context):
            if not _is_dropout_call(context):
                return next_fun(*args, **kwargs)
            scaled = next_fun(jnp.ones_like(args[0]), *args[1:], **kwargs)  # mask / keep_prob
            found.append(scaled != 0)
            return scaled * args[0]

        with nn.intercept_methods(interceptor):
            model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
        (mask,) = found
        return mask

    return jax.jit(mask_fn)


@contextlib.contextmanager
def inject_flax_dropout_mask(mask) -> Iterator[None]:
    """Within the block, Flax's nn.Dropout (train mode) applies `mask` instead of drawing one."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if not _is_dropout_call(context) or nn.merge_param("deterministic", module.deterministic,
                                                            kwargs.get("deterministic")):
            return next_fun(*args, **kwargs)
        keep = 1.0 - module.rate
        return jax.lax.select(mask, args[0] / keep, jnp.zeros_like(args[0]))  # nn.Dropout's own formula

    with nn.intercept_methods(interceptor):
        yield


@contextlib.contextmanager
def inject_torch_dropout_mask(module: torch.nn.Module, mask: np.ndarray | torch.Tensor,
                              scale: float | None = None) -> Iterator[None]:
    """Within the block, `module.dropout` (train mode) applies `mask` (survivors × 1/(1-p))."""
    dropout = module.dropout
    scale = 1.0 / (1.0 - dropout.p) if scale is None else scale
    keep = torch.as_tensor(np.asarray(mask)).bool()

    def hook(m, inputs, output):
        if not m.training:
            return output
        return inputs[0] * keep.to(inputs[0].dtype) * scale

    handle = dropout.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------
# Gradients of the recipe's loss
# ----------------------------------------------------------------------------------------------

def torch_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The recipe loss as torch_ref.train.TorchTrainer computes it (fashion_cnn: CE on log-probs = NLL)."""
    return F.cross_entropy(outputs, labels)


@dataclass
class GradResult:
    flax_loss: float
    torch_loss: float
    flax_grads: Canonical
    torch_grads: Canonical

    @property
    def loss_diff(self) -> float:
        return abs(self.flax_loss - self.torch_loss)

    def abs_diffs(self) -> dict[str, float]:
        return {k: max_abs_diff(self.flax_grads[k], self.torch_grads[k]) for k in self.torch_grads}

    def rel_diffs(self) -> dict[str, float]:
        """max |Δ| of each tensor over max |g| of that tensor (torch's)."""
        return {k: d / max(float(np.max(np.abs(self.torch_grads[k]))), 1e-30) for k, d in self.abs_diffs().items()}

    @property
    def max_abs_diff(self) -> float:
        return max(self.abs_diffs().values())

    @property
    def max_rel_diff(self) -> float:
        return max(self.rel_diffs().values())


def measure_grads(pair: Pair, batch: Batch, train: bool = False, seed: int = 0,
                  to_canonical: ToCanonical = flax_convert.params_to_canonical) -> GradResult:
    """Gradient of the recipe's loss w.r.t. every parameter, in canonical layout, from both sides.

    train=True (fashion_cnn): both run in train mode with one dropout mask drawn by Flax.
    Flax gradients are brought to canonical layout with the same converter as the weights (it only
    permutes entries, so it maps gradients exactly as it maps parameters).
    """
    masked = train and pair.name == "fashion_cnn"
    mask = None
    if masked:
        mask = flax_dropout_mask(pair, pair.flax_params, batch.flax_x, jax.random.key(seed))
    loss, grads = _flax_loss_grad(pair.flax_model, masked)(pair.flax_params, batch.flax_x, batch.flax_y, mask)

    module = pair.torch_model
    module.train(train)
    module.zero_grad(set_to_none=True)
    with inject_torch_dropout_mask(module, mask) if masked else contextlib.nullcontext():
        t_loss = torch_loss(module(batch.torch_x), batch.torch_y)
    t_loss.backward()
    torch_grads = {name: p.grad.detach().numpy().copy() for name, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    return GradResult(float(loss), float(t_loss), to_canonical(pair.name, grads), torch_grads)


# ----------------------------------------------------------------------------------------------
# Training: k optimiser steps on the same batches (one update = k of 1; the trajectory = k of 100)
# ----------------------------------------------------------------------------------------------

FlaxOptimizerFactory = Callable[[Optimizer], Any]  # flax_impl.train.make_optimizer
TorchOptimizerFactory = Callable[[Any, Optimizer], torch.optim.Optimizer]  # torch_ref.train.make_optimizer


@dataclass
class Trajectory:
    flax_losses: list[float] = field(default_factory=list)
    torch_losses: list[float] = field(default_factory=list)
    param_diffs: list[float] = field(default_factory=list)  # max |Δ| over all parameters after each step
    final_flax: Canonical | None = None
    final_torch: Canonical | None = None

    @property
    def steps(self) -> int:
        return len(self.flax_losses)

    @property
    def loss_diffs(self) -> list[float]:
        return [abs(a - b) for a, b in zip(self.flax_losses, self.torch_losses)]

    @property
    def max_loss_diff(self) -> float:
        return max(self.loss_diffs)

    @property
    def final_param_diff(self) -> float:
        return self.param_diffs[-1]


def train_batches(recipe: Recipe, steps: int, batch_size: int | None = None,
                  data_dir: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`steps` consecutive batches of real training data (uint8), the same for both frameworks."""
    b = batch_size or recipe.batch_size
    images, labels = real_images(recipe, steps * b, "train", 0, data_dir)
    return [(images[i * b:(i + 1) * b], labels[i * b:(i + 1) * b]) for i in range(steps)]


def run_training(pair: Pair, batches: list[tuple[np.ndarray, np.ndarray]], optimizer: Optimizer | None = None,
                 flax_optimizer: FlaxOptimizerFactory = flax_train.make_optimizer,
                 torch_optimizer: TorchOptimizerFactory = torch_train.make_optimizer,
                 torch_optimizer_cfg: Optimizer | None = None, dropout_seed: int = 0,
                 to_canonical: ToCanonical = flax_convert.params_to_canonical,
                 dropout_scale: float | None = None, track_params: bool = True) -> Trajectory:
    """Train both sides from `pair`'s weights on `batches`, in the same order, with the recipe's optimiser.

    Flax: `flax_impl.train.train_step` (jitted) on a TrainState built from the converted weights and
    `make_optimizer(cfg)`. Torch: the torch model, `torch_ref.train.make_optimizer(params, cfg)`, and
    the loss/step sequence of TorchTrainer.train_epoch. fashion_cnn trains with dropout on; step i's
    mask is the one Flax's train_step draws from rng fold_in(key(dropout_seed), i) (as FlaxTrainer
    does), injected into torch.
    """
    recipe = pair.recipe
    cfg = optimizer or recipe.optimizer
    state = flax_train.TrainState.create(apply_fn=pair.flax_model.apply, params=pair.flax_params,
                                         tx=flax_optimizer(cfg))
    step_fn = _flax_train_step()
    module = pair.torch_model
    module.train()
    opt = torch_optimizer(module.parameters(), torch_optimizer_cfg or cfg)
    dropout_key = jax.random.key(dropout_seed)
    uses_dropout = pair.name == "fashion_cnn"
    traj = Trajectory()
    for i, (images, labels) in enumerate(batches):
        batch = batch_from_uint8(recipe, images, labels)
        rng = jax.random.fold_in(dropout_key, i)
        mask = flax_dropout_mask(pair, state.params, batch.flax_x, rng) if uses_dropout else None
        state, metrics = step_fn(state, {"image": batch.flax_x, "label": batch.flax_y}, rng)

        opt.zero_grad(set_to_none=True)
        with (inject_torch_dropout_mask(module, mask, dropout_scale) if uses_dropout
              else contextlib.nullcontext()):
            loss = torch_loss(module(batch.torch_x), batch.torch_y)
        loss.backward()
        opt.step()

        traj.flax_losses.append(float(metrics["loss"]))
        traj.torch_losses.append(float(loss.detach()))
        if track_params or i == len(batches) - 1:
            flax_now = to_canonical(pair.name, state.params)
            torch_now = torch_convert.state_dict_to_canonical(pair.name, module)
            traj.param_diffs.append(tree_max_abs_diff(flax_now, torch_now))
            traj.final_flax, traj.final_torch = flax_now, torch_now
    return traj


# ----------------------------------------------------------------------------------------------
# Accuracy with independent initialisations (each framework's own RNG), via the product trainers
# ----------------------------------------------------------------------------------------------

def trained_accuracy(framework: str, name: str, seed: int, steps: int, data_dir: str | None = None) -> float:
    """Test accuracy after `steps` training steps of the product trainer (its own init and shuffle)."""
    from tqdm import tqdm

    from cnn_parity.training import EpochLog

    recipe = load_recipe(name, overrides={"seed": seed})
    trainer = (flax_train.FlaxTrainer if framework == "flax" else torch_train.TorchTrainer)(recipe, data_dir=data_dir)
    with tqdm(total=steps, disable=True) as progress:
        log = EpochLog(1, progress)
        trainer.train_epoch(1, steps, log)
        log.flush()
    return trainer.evaluate().accuracy


MODEL_NAMES = MODELS
