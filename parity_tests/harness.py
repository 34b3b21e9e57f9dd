"""The parity measurements, shared by the tests (parity_tests/test_*.py) and the report (report.py).

Everything here drives the *product*: the models of flax_impl/ and torch_ref/, their converters
(canonical weights = PyTorch state_dict names and layouts), normalisers, optimiser factories, the
Flax `train_step` and `cross_entropy`. What this module adds is the plumbing that puts the two
frameworks side by side, and the numbers that compare them. Each measurement takes the converter /
optimiser factory it uses as an argument, so the planted-bug tests run the very same measurement
with one known-wrong piece swapped in.

Importing this module configures both frameworks for parity runs (`configure`): full float32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

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
# What is measured, with what. The bounds the tests assert live in bounds.py.
# ----------------------------------------------------------------------------------------------
FORWARD_KINDS = ("real", "uniform", "gaussian")  # real data; random uint8 pixels; N(0, 1) floats
BATCH_SIZES = (1, 7, 128)
DIRECTIONS = ("torch_to_flax", "flax_to_torch")  # which side initialises; the other gets converted weights
GRAD_BATCH = 128
TRAJECTORY_STEPS = 100
# The trajectory runs the recipe's optimiser (kind, lr, momentum, betas, eps) on batches of 16, not
# the recipes' 64-128: the suite must run in minutes on a 2-core CPU, where cnn_base at batch 100
# costs ~0.6 s a step for the two frameworks together. Parity does not depend on the batch size.
TRAJECTORY_BATCH = 16
# The float64 run of the same trajectory: float64 convolutions are 4-5x slower on CPU in both
# frameworks (cnn_base: 465 vs 97 ms a step in XLA, 216 vs 52 ms in torch, at batch 32), so batches of 4.
FLOAT64_BATCH = 4
OPTIMIZER_STEPS = 10  # the optimiser-alone check (same gradients): steps 2+ exercise momentum / Adam moments
ACCURACY_TEST_IMAGES = 1024  # test 8 evaluates on the first 1024 images of the test split


# ----------------------------------------------------------------------------------------------
# Framework configuration
# ----------------------------------------------------------------------------------------------

def configure() -> None:
    """Full float32 in both frameworks (no TF32 / bf16 passes), both on CPU, single-threaded torch.

    Precision: on CPU, XLA and PyTorch already compute float32 dots and convolutions in float32;
    these settings matter on GPU, where JAX's default matmul precision and PyTorch's cuDNN
    convolutions use TF32 on Ampere and later (10-bit mantissa, ~1e-3 relative error), which would
    swamp every bound. See parity_tests/README.md.

    Threads: one intra-op thread for torch. Its OpenMP pool spins while waiting; next to XLA's own
    pool on a 2-core machine (plus any other load) that made a lenet step 30x slower (440 ms vs
    14 ms measured). One thread also makes torch's reductions run in one fixed order.

    Compilation cache: XLA:CPU takes 1-6 s to compile each model's train step; a persistent cache
    (keyed by the program and the jax/XLA versions, so never stale) makes repeated runs fast. Set
    CNN_PARITY_JAX_CACHE to another folder, or to "off".
    """
    jax.config.update("jax_default_matmul_precision", "highest")
    # Like with like: torch runs on CPU here, so JAX does too, even where it sees a GPU.
    jax.config.update("jax_default_device", jax.devices("cpu")[0])
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.set_num_threads(1)
    cache = os.environ.get("CNN_PARITY_JAX_CACHE", str(neutral_data.cache_dir() / "jax-compilation-cache"))
    if cache and cache.lower() != "off":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


configure()


def device_description() -> dict[str, str]:
    jax_device = jax.config.jax_default_device or jax.devices()[0]
    return {
        "jax": f"{jax_device.platform} ({jax_device.device_kind})",
        "torch": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "machine": platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "torch_tf32": str(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
    }


def environment_versions() -> dict[str, str]:
    return versions()


# ----------------------------------------------------------------------------------------------
# Data: real batches (cached splits) and random inputs, fed to each side through its own normaliser
# ----------------------------------------------------------------------------------------------

DATA_DIR: str | None = None  # set by conftest / report; None: cnn_parity.data's own search order


def default_data_dir() -> str | None:
    """Real MNIST's folder as tests/ finds it: $CNN_PARITY_DATA_DIR, else ../shared/data beside the
    checkout when it holds mnist/; None leaves the search to cnn_parity.data (cache, download)."""
    from pathlib import Path

    if env := os.environ.get("CNN_PARITY_DATA_DIR"):
        return env
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(shared) if (shared / "mnist").is_dir() else None


def set_data_dir(path: str | os.PathLike | None) -> None:
    global DATA_DIR
    DATA_DIR = None if path is None else os.fspath(path)


@functools.lru_cache(maxsize=None)
def _load(dataset: str, split: str, data_dir: str | None) -> neutral_data.Split:
    return neutral_data.load_split(dataset, split, data_dir)


def _split(dataset: str, split: str, data_dir: str | None = None) -> neutral_data.Split:
    return _load(dataset, split, data_dir or DATA_DIR)


def real_images(recipe: Recipe, n: int, split: str = "train", start: int = 0,
                data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images `start:start+n` (uint8 (n, 28, 28)) and labels (int64) of the recipe's data set."""
    s = _split(recipe.dataset, split, data_dir)
    return s.images[start:start + n], s.labels[start:start + n].astype(np.int64)


def random_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random uint8 pixels and labels: inputs no data set would produce."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


@dataclass(frozen=True)
class Batch:
    """One batch as each framework sees it: Flax float NHWC, torch float NCHW, integer labels."""

    flax_x: jax.Array
    torch_x: torch.Tensor
    flax_y: jax.Array
    torch_y: torch.Tensor

    def __len__(self) -> int:
        return len(self.torch_y)

    def astype(self, dtype: str) -> "Batch":
        """float64: both sides get torch's normalised pixels, widened (bitwise the same as Flax's,
        test_forward.test_normalisers_agree), so a float64 run starts from identical inputs."""
        if dtype == "float32":
            return self
        x = self.torch_x.double()
        return Batch(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), x, self.flax_y, self.torch_y)


def batch_from_uint8(recipe: Recipe, images: np.ndarray, labels: np.ndarray) -> Batch:
    """Each side normalises the same uint8 pixels with its own `normalize` (the product's)."""
    mean, std = recipe.normalize_mean, recipe.normalize_std
    return Batch(flax_x=flax_data.normalize(jnp.asarray(images), mean, std),
                 torch_x=torch_data.normalize(torch.from_numpy(np.array(images)), mean, std),
                 flax_y=jnp.asarray(labels, jnp.int32), torch_y=torch.from_numpy(np.array(labels, np.int64)))


def batch_from_float(x_nchw: np.ndarray, labels: np.ndarray) -> Batch:
    """Arbitrary float inputs (e.g. Gaussian), bypassing the normalisers."""
    x = np.asarray(x_nchw, np.float32)
    return Batch(flax_x=jnp.asarray(x.transpose(0, 2, 3, 1)), torch_x=torch.from_numpy(x.copy()),
                 flax_y=jnp.asarray(labels, jnp.int32), torch_y=torch.from_numpy(np.array(labels, np.int64)))


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


@functools.lru_cache(maxsize=None)
def _flax_init(model: nn.Module):
    return jax.jit(model.init)


def flax_init_params(model: nn.Module, key: jax.Array):
    """flax_impl.models.init_params, with its jitted `model.init` kept per model. The product's
    function re-jits on every call, and XLA:CPU takes ~5 s to compile a conv model's init (the
    threefry RNG), which would cost minutes across the suite. test_conversion checks that the two
    return identical parameters."""
    return _flax_init(model)(key, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]


def pair_from_flax(name: str, seed: int = 0, init_scheme: str = "torch",
                   to_canonical: ToCanonical = flax_convert.params_to_canonical) -> Pair:
    """Flax initialises; torch gets the weights through the converter (direction flax → torch)."""
    model = flax_models.create_model(name, init_scheme)
    params = flax_init_params(model, jax.random.key(seed))
    canonical = to_canonical(name, params)
    module = torch_convert.load_canonical(name, torch_models.create_model(name, init_scheme), canonical)
    return Pair(name, load_recipe(name), canonical, module, model, params)


def make_pair(name: str, direction: str, seed: int = 0) -> Pair:
    return {"torch_to_flax": pair_from_torch, "flax_to_torch": pair_from_flax}[direction](name, seed)


# Jitted Flax functions, compiled once per (model, input shape, dtype) for the whole process.
@functools.lru_cache(maxsize=None)
def _flax_forward(model: nn.Module):
    return jax.jit(lambda params, x: model.apply({"params": params}, x, train=False))


@functools.lru_cache(maxsize=None)
def _flax_loss_grad(model: nn.Module, masked: bool):
    def loss(params, x, y, mask):
        with inject_flax_dropout_mask(mask) if masked else contextlib.nullcontext():
            outputs = model.apply({"params": params}, x, train=masked)
        return flax_train.cross_entropy(outputs, y)

    return jax.jit(jax.value_and_grad(loss))


_train_step = jax.jit(flax_train.train_step)


@functools.lru_cache(maxsize=None)
def shared_flax_optimizer(cfg: Optimizer, factory: Callable[[Optimizer], Any] = flax_train.make_optimizer):
    """`factory(cfg)`, built once per configuration: a TrainState's optimiser is part of the jit
    cache key (optax closures compare by identity), so a fresh one would recompile train_step."""
    return factory(cfg)


def flax_forward(pair: Pair, batch: Batch) -> np.ndarray:
    return np.asarray(_flax_forward(pair.flax_model)(pair.flax_params, batch.flax_x))


def torch_forward(pair: Pair, batch: Batch) -> np.ndarray:
    pair.torch_model.eval()
    with torch.no_grad():
        return pair.torch_model(batch.torch_x).numpy()


def measure_forward(pair: Pair, batch: Batch) -> float:
    """max |Δ| of the eval-mode outputs (logits; fashion_cnn: log-probabilities)."""
    return max_abs_diff(flax_forward(pair, batch), torch_forward(pair, batch))


def forward_cases() -> list[tuple[str, str, int]]:
    return [(d, k, n) for d in DIRECTIONS for k in FORWARD_KINDS for n in BATCH_SIZES]


def forward_batch(recipe: Recipe, kind: str, n: int, data_dir: str | None = None) -> Batch:
    # Seeds differ per size so that the sizes are not prefixes of one another.
    return make_batch(recipe, kind, n, seed=1000 + n, data_dir=data_dir, start=0)


# ----------------------------------------------------------------------------------------------
# Layer outputs (for the shape tests)
# ----------------------------------------------------------------------------------------------

def flax_layer_shapes(pair: Pair, batch: Batch) -> dict[str, tuple[int, ...]]:
    """Output shape of every submodule (conv1, fc1, Dropout_0, ...) and of the model ("output").
    Traced abstractly (jax.eval_shape): shapes without computing or compiling anything."""

    def run(params, x):
        return pair.flax_model.apply({"params": params}, x, train=False, capture_intermediates=True,
                                     mutable=["intermediates"])

    _, state = jax.eval_shape(run, pair.flax_params, batch.flax_x)
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
        shapes["output"] = tuple(torch_forward(pair, batch).shape)
    finally:
        for h in handles:
            h.remove()
    return shapes


# ----------------------------------------------------------------------------------------------
# Dropout: one mask for both frameworks
# ----------------------------------------------------------------------------------------------
# Flax draws the mask: its own nn.Dropout, with the rng `train_step` is given. `flax_dropout_mask`
# reads that mask back by re-running the same apply with the same rng under an nn.intercept_methods
# interceptor that feeds the Dropout ones instead of its input, so its output is exactly
# mask / keep_prob (the rng a Flax module draws depends only on the rng passed in, the module's path
# and its call count, none of which the interceptor changes; test_dropout checks that the read-back
# mask reproduces train_step's own output bit for bit). Torch then applies that mask instead of
# drawing its own: a forward hook on `model.dropout` replaces the output by input * mask / keep_prob,
# F.dropout's own formula. Each framework's own rate and scaling are tested in test_dropout.py.

def _is_dropout_call(context) -> bool:
    return isinstance(context.module, nn.Dropout) and context.method_name == "__call__"


@functools.lru_cache(maxsize=None)
def _flax_dropout_probe(model: nn.Module, train: bool, feed_ones: bool):
    """Jitted (params, x, rng) → (Dropout input, Dropout output), optionally feeding it ones."""

    def probe(params, x, rng):
        found = []

        def interceptor(next_fun, args, kwargs, context):
            if not _is_dropout_call(context):
                return next_fun(*args, **kwargs)
            given = jnp.ones_like(args[0]) if feed_ones else args[0]
            out = next_fun(given, *args[1:], **kwargs)
            found.append((given, out))
            return out

        with nn.intercept_methods(interceptor):
            model.apply({"params": params}, x, train=train, rngs={"dropout": rng})
        (io,) = found
        return io

    return jax.jit(probe)


def flax_dropout_io(model: nn.Module, params, x: jax.Array, rng: jax.Array, train: bool,
                    feed_ones: bool = False) -> tuple[np.ndarray, np.ndarray]:
    given, out = _flax_dropout_probe(model, train, feed_ones)(params, x, rng)
    return np.asarray(given), np.asarray(out)


def flax_dropout_mask(pair: Pair, params, x: jax.Array, rng: jax.Array) -> np.ndarray:
    """The boolean keep-mask Flax's dropout draws in `apply(..., train=True, rngs={"dropout": rng})`."""
    _, scaled = flax_dropout_io(pair.flax_model, params, x, rng, train=True, feed_ones=True)
    return scaled != 0


@functools.lru_cache(maxsize=None)
def _flax_train_forward(model: nn.Module, masked: bool):
    def forward(params, x, rng, mask):
        with inject_flax_dropout_mask(mask) if masked else contextlib.nullcontext():
            return model.apply({"params": params}, x, train=True, rngs={"dropout": rng})

    return jax.jit(forward)


def flax_train_forward(pair: Pair, batch: Batch, rng: jax.Array, mask=None) -> np.ndarray:
    """Train-mode outputs: Flax's own dropout drawn from `rng`, or, given `mask`, that mask."""
    return np.asarray(_flax_train_forward(pair.flax_model, mask is not None)(pair.flax_params, batch.flax_x, rng, mask))


def torch_train_forward(pair: Pair, batch: Batch, mask, scale: float | None = None) -> np.ndarray:
    """Torch's train-mode outputs with dropout `mask` injected."""
    module = pair.torch_model
    module.train()
    try:
        with inject_torch_dropout_mask(module, mask, scale), torch.no_grad():
            return module(batch.torch_x).numpy()
    finally:
        module.eval()


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
def inject_torch_dropout_mask(module: torch.nn.Module, mask, scale: float | None = None) -> Iterator[None]:
    """Within the block, `module.dropout` in train mode applies `mask`, survivors × 1/(1-p)
    (`scale` overrides that factor: the planted-bug tests use it)."""
    dropout = module.dropout
    scale = 1.0 / (1.0 - dropout.p) if scale is None else scale
    keep = torch.from_numpy(np.array(mask, dtype=bool))

    def hook(m, inputs, output):
        if not m.training:
            return output
        return inputs[0] * keep.to(inputs[0].dtype) * scale

    handle = dropout.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def torch_dropout_io(module: torch.nn.Module, x: torch.Tensor, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of `module.dropout` in one forward pass, torch drawing its own mask."""
    found = []
    handle = module.dropout.register_forward_hook(
        lambda m, i, o: found.append((i[0].detach().numpy().copy(), o.detach().numpy().copy())))
    try:
        module.train(train)
        with torch.no_grad():
            module(x)
    finally:
        handle.remove()
        module.eval()
    (io,) = found
    return io


# ----------------------------------------------------------------------------------------------
# Gradients of the recipe's loss
# ----------------------------------------------------------------------------------------------

def torch_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The recipe loss exactly as torch_ref.train.TorchTrainer computes it (for fashion_cnn:
    cross-entropy on log-probabilities, i.e. NLL). Flax's is flax_impl.train.cross_entropy."""
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
        """Per tensor: max |Δ| over max |g| (torch's)."""
        return {k: d / max(float(np.max(np.abs(self.torch_grads[k]))), 1e-30) for k, d in self.abs_diffs().items()}

    @property
    def max_abs_diff(self) -> float:
        return max(self.abs_diffs().values())

    @property
    def max_rel_diff(self) -> float:
        return max(self.rel_diffs().values())


def measure_grads(pair: Pair, batch: Batch, train: bool = False, dropout_seed: int = 0,
                  to_canonical: ToCanonical = flax_convert.params_to_canonical,
                  torch_dropout_scale: float | None = None, dropout_rng: jax.Array | None = None) -> GradResult:
    """Gradient of the recipe's loss w.r.t. every parameter, in canonical layout, from both sides.

    train=True (fashion_cnn): both in train mode with one dropout mask, drawn by Flax. Flax's
    gradients are brought to canonical layout by the weights' converter: it only permutes entries,
    so it maps a gradient exactly as it maps the parameter.
    """
    masked = train and pair.name == "fashion_cnn"
    mask = None
    if masked:
        rng = jax.random.key(dropout_seed) if dropout_rng is None else dropout_rng
        mask = flax_dropout_mask(pair, pair.flax_params, batch.flax_x, rng)
    loss, grads = _flax_loss_grad(pair.flax_model, masked)(pair.flax_params, batch.flax_x, batch.flax_y, mask)

    module = pair.torch_model
    module.train(train)
    module.zero_grad(set_to_none=True)
    with inject_torch_dropout_mask(module, mask, torch_dropout_scale) if masked else contextlib.nullcontext():
        t_loss = torch_loss(module(batch.torch_x), batch.torch_y)
    t_loss.backward()
    torch_grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    module.eval()
    return GradResult(float(loss), t_loss.item(), to_canonical(pair.name, grads), torch_grads)


# ----------------------------------------------------------------------------------------------
# Training: the same batches, in the same order, on both sides (one update = the first step)
# ----------------------------------------------------------------------------------------------

FlaxOptimizerFactory = Callable[[Optimizer], Any]  # flax_impl.train.make_optimizer
TorchOptimizerFactory = Callable[[Any, Optimizer], torch.optim.Optimizer]  # torch_ref.train.make_optimizer


@dataclass
class Trajectory:
    flax_losses: list[float] = field(default_factory=list)
    torch_losses: list[float] = field(default_factory=list)
    param_diffs: list[float] = field(default_factory=list)  # max |Δ| over all parameters after each step
    first_step_change: float = 0.0  # max |θ1 - θ0| on the torch side: how far one update moved
    total_change: float = 0.0  # max |θT - θ0| on the torch side: how far training moved
    first_step: tuple[Canonical, Canonical] | None = None  # (Flax, torch) weights after step 1

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

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "max_loss_diff": self.max_loss_diff, "final_param_diff": self.final_param_diff,
                "loss_diffs": self.loss_diffs, "param_diffs": self.param_diffs,
                "flax_losses": self.flax_losses, "torch_losses": self.torch_losses}


def train_batches(recipe: Recipe, steps: int, batch_size: int = TRAJECTORY_BATCH,
                  data_dir: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`steps` consecutive batches of the recipe's real training data (uint8): the batch order."""
    images, labels = real_images(recipe, steps * batch_size, "train", 0, data_dir)
    return [(images[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size])
            for i in range(steps)]


def _cast_params(params, dtype: str):
    if dtype == "float32":
        return params
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)


def run_training(pair: Pair, batches: Sequence[tuple[np.ndarray, np.ndarray]], optimizer: Optimizer | None = None,
                 flax_optimizer: FlaxOptimizerFactory = flax_train.make_optimizer,
                 torch_optimizer: TorchOptimizerFactory = torch_train.make_optimizer,
                 torch_optimizer_cfg: Optimizer | None = None, dropout_seed: int = 0,
                 torch_dropout_scale: float | None = None, torch_batch_offset: int = 0,
                 dtype: str = "float32") -> Trajectory:
    """Train both sides from `pair`'s weights (left untouched) on `batches`, in order.

    Flax: `flax_impl.train.train_step` (jitted) on a TrainState of the converted weights and
    `make_optimizer(cfg)`. Torch: a copy of the torch model, `torch_ref.train.make_optimizer(params,
    cfg)`, and TorchTrainer.train_epoch's zero_grad / loss / backward / step. fashion_cnn trains with
    dropout: step i's mask is the one Flax's train_step draws from fold_in(key(dropout_seed), i), as
    FlaxTrainer folds the step into its key, injected into torch.

    dtype="float64" runs both sides in float64 (jax x64, torch .double()): the same code and the
    same algorithm with 29 more mantissa bits, which separates float32 rounding from real differences.
    The remaining arguments plant bugs (a wrong optimiser on one side, unscaled dropout, batches
    shifted by one).
    """
    if dtype == "float64":
        with jax.enable_x64(True):
            return _run_training(**locals() | {"dtype": "float64_inner"})
    return _run_training(**locals())


def _run_training(pair, batches, optimizer, flax_optimizer, torch_optimizer, torch_optimizer_cfg, dropout_seed,
                  torch_dropout_scale, torch_batch_offset, dtype) -> Trajectory:
    dtype = "float64" if dtype == "float64_inner" else dtype
    recipe = pair.recipe
    cfg = optimizer or recipe.optimizer
    state = flax_train.TrainState.create(apply_fn=pair.flax_model.apply, params=_cast_params(pair.flax_params, dtype),
                                         tx=shared_flax_optimizer(cfg, flax_optimizer))
    module = copy.deepcopy(pair.torch_model)
    if dtype == "float64":
        module.double()
    module.train()
    opt = torch_optimizer(module.parameters(), torch_optimizer_cfg or cfg)
    dropout_key = jax.random.key(dropout_seed)
    uses_dropout = pair.name == "fashion_cnn"
    traj = Trajectory()
    for i in range(len(batches)):
        batch = batch_from_uint8(recipe, *batches[i]).astype(dtype)
        rng = jax.random.fold_in(dropout_key, i)
        mask = flax_dropout_mask(pair, state.params, batch.flax_x, rng) if uses_dropout else None
        state, metrics = _train_step(state, {"image": batch.flax_x, "label": batch.flax_y}, rng)

        t_batch = batch_from_uint8(recipe, *batches[(i + torch_batch_offset) % len(batches)]).astype(dtype)
        opt.zero_grad(set_to_none=True)
        with (inject_torch_dropout_mask(module, mask, torch_dropout_scale) if uses_dropout
              else contextlib.nullcontext()):
            loss = torch_loss(module(t_batch.torch_x), t_batch.torch_y)
        loss.backward()
        opt.step()

        traj.flax_losses.append(float(metrics["loss"]))
        traj.torch_losses.append(loss.item())
        torch_now = torch_convert.state_dict_to_canonical(pair.name, module)
        traj.param_diffs.append(tree_max_abs_diff(flax_convert.params_to_canonical(pair.name, state.params), torch_now))
        if i == 0:
            traj.first_step = (flax_convert.params_to_canonical(pair.name, state.params), torch_now)
        if i in (0, len(batches) - 1):
            change = tree_max_abs_diff(torch_now, {k: v.astype(torch_now[k].dtype) for k, v in pair.canonical.items()})
            traj.first_step_change = change if i == 0 else traj.first_step_change
            traj.total_change = change
    return traj


def optimizer_parity(pair: Pair, batches: Sequence[tuple[np.ndarray, np.ndarray]], optimizer: Optimizer | None = None,
                     flax_optimizer: FlaxOptimizerFactory = flax_train.make_optimizer,
                     torch_optimizer: TorchOptimizerFactory = torch_train.make_optimizer) -> list[float]:
    """The optimisers alone: both sides step from the same weights with the *same* gradients.

    Each step's gradient is torch's (eval mode, the recipe loss) at torch's current weights; Flax gets
    it through the weights' converter (a permutation, exact) and applies `make_optimizer(cfg)`'s
    update with optax.apply_updates, torch runs `make_optimizer(params, cfg).step()`. Returns max |Δθ|
    after each step: what remains is the optimisers' arithmetic, with no gradient rounding for Adam
    to amplify. Several steps, so momentum buffers and Adam's moments and bias corrections act.
    """
    import optax

    cfg = optimizer or pair.recipe.optimizer
    tx = flax_optimizer(cfg)
    params = pair.flax_params
    opt_state = tx.init(params)
    module = copy.deepcopy(pair.torch_model)
    module.eval()
    opt = torch_optimizer(module.parameters(), cfg)
    diffs = []
    for images, labels in batches:
        batch = batch_from_uint8(pair.recipe, images, labels)
        opt.zero_grad(set_to_none=True)
        torch_loss(module(batch.torch_x), batch.torch_y).backward()
        grads = flax_convert.params_from_canonical(pair.name, {n: p.grad.numpy() for n, p in module.named_parameters()})
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        opt.step()
        diffs.append(tree_max_abs_diff(flax_convert.params_to_canonical(pair.name, params),
                                       torch_convert.state_dict_to_canonical(pair.name, module)))
    return diffs


def first_update_excess(pair: Pair, traj: Trajectory, batch: Batch) -> float:
    """How much of the first full training step's weight difference the gradients' own rounding
    does *not* explain: max_i |Δθ_i| - |u(g_flax,i) - u(g_torch,i)|, where u is the recipe
    optimiser's first update as a function of the gradient (SGD with or without momentum: lr·g;
    Adam: lr·g/(|g| + eps), its bias corrections being exact at step 1) and g_flax, g_torch are each
    framework's gradient on that batch. Adam's u is steep near g = 0 (slope lr/eps = 2e4 for
    cnn_base), so there a 1e-9 gradient rounding difference moves a weight by 1e-6 or more."""
    o = pair.recipe.optimizer
    # train mode with step 0's dropout rng, as run_training's first step (only fashion_cnn has dropout)
    grads = measure_grads(pair, batch, train=True, dropout_rng=jax.random.fold_in(jax.random.key(0), 0))

    def u(g):
        g = np.asarray(g, np.float64)
        return o.lr * g / (np.abs(g) + o.eps) if o.name == "adam" else o.lr * g

    flax_w, torch_w = traj.first_step
    return max(float(np.max(np.abs(flax_w[k].astype(np.float64) - torch_w[k])
                            - np.abs(u(grads.flax_grads[k]) - u(grads.torch_grads[k])))) for k in torch_w)


def torch_kernel_control(pair: Pair, batches: Sequence[tuple[np.ndarray, np.ndarray]], dropout_seed: int = 0) -> Trajectory:
    """Torch against itself: the same weights, batches, optimiser and dropout masks, one copy run in
    channels_last memory format, which selects different convolution kernels (a different float32
    summation order, identical mathematics). How far *this* drifts is what float32 rounding alone
    does to a trajectory; the cross-framework drift is judged against it (test_training.py)."""
    recipe = pair.recipe
    models = [copy.deepcopy(pair.torch_model), copy.deepcopy(pair.torch_model).to(memory_format=torch.channels_last)]
    opts = [torch_train.make_optimizer(m.parameters(), recipe.optimizer) for m in models]
    rng = np.random.default_rng(dropout_seed)
    traj = Trajectory()
    for images, labels in batches:
        batch = batch_from_uint8(recipe, images, labels)
        mask = rng.random((len(labels), pair.torch_model.fc1.out_features)) < 0.5 if pair.name == "fashion_cnn" else None
        losses = []
        for m, opt, x in zip(models, opts, (batch.torch_x, batch.torch_x.contiguous(memory_format=torch.channels_last))):
            m.train()
            opt.zero_grad(set_to_none=True)
            with inject_torch_dropout_mask(m, mask) if mask is not None else contextlib.nullcontext():
                loss = torch_loss(m(x), batch.torch_y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        traj.flax_losses.append(losses[1])  # "flax" slot holds the channels_last copy
        traj.torch_losses.append(losses[0])
        traj.param_diffs.append(tree_max_abs_diff(*(torch_convert.state_dict_to_canonical(pair.name, m) for m in models)))
    return traj


# ----------------------------------------------------------------------------------------------
# Accuracy with independent initialisations: each framework its own RNG for init, order, dropout
# ----------------------------------------------------------------------------------------------

def _evaluate(predict: Callable[[np.ndarray], np.ndarray], recipe: Recipe, n_test: int, data_dir: str | None) -> float:
    images, labels = real_images(recipe, n_test, "test", 0, data_dir)
    correct = 0
    for start in range(0, n_test, 128):  # chunks of 128: the forward tests' compiled shape
        correct += int((predict(images[start:start + 128]).argmax(1) == labels[start:start + 128]).sum())
    return correct / n_test


def independent_accuracy(framework: str, name: str, seed: int, steps: int,
                         batch_size: int = TRAJECTORY_BATCH, n_test: int = ACCURACY_TEST_IMAGES,
                         data_dir: str | None = None) -> float:
    """Test accuracy (first `n_test` test images) after `steps` steps of the recipe's optimiser,
    from the framework's own initialisation, shuffling and dropout, all seeded by `seed`. Each side
    normalises its whole run's images at once with its own `normalize` (per-step Python overhead,
    not compute, dominates these small steps on CPU)."""
    recipe = load_recipe(name, overrides={"seed": seed})
    train = _split(recipe.dataset, "train", data_dir)
    mean, std = recipe.normalize_mean, recipe.normalize_std
    n = steps * batch_size
    if framework == "flax":
        init_key, shuffle_key, dropout_key = jax.random.split(jax.random.key(seed), 3)
        model = flax_models.create_model(name, recipe.init)
        state = flax_train.TrainState.create(apply_fn=model.apply, params=flax_init_params(model, init_key),
                                             tx=shared_flax_optimizer(recipe.optimizer))
        order = np.asarray(jax.random.permutation(shuffle_key, len(train.labels)))
        order = np.concatenate([order] * (n // len(order) + 1))[:n]  # further epochs repeat the order
        images = flax_data.normalize(jnp.asarray(train.images[order]), mean, std)
        labels = jnp.asarray(train.labels[order], jnp.int32)
        for i in range(steps):
            part = slice(i * batch_size, (i + 1) * batch_size)
            state, _ = _train_step(state, {"image": images[part], "label": labels[part]},
                                   jax.random.fold_in(dropout_key, i))
        fwd = _flax_forward(model)
        return _evaluate(lambda im: np.asarray(fwd(state.params, flax_data.normalize(jnp.asarray(im), mean, std))),
                         recipe, n_test, data_dir)
    torch.manual_seed(seed)
    module = torch_models.create_model(name, recipe.init)
    opt = torch_train.make_optimizer(module.parameters(), recipe.optimizer)
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed)).numpy()
    order = np.concatenate([order] * (n // len(order) + 1))[:n]
    images = torch_data.normalize(torch.from_numpy(train.images[order]), mean, std)
    labels = torch.from_numpy(train.labels[order].astype(np.int64))
    module.train()
    for i in range(steps):
        part = slice(i * batch_size, (i + 1) * batch_size)
        opt.zero_grad(set_to_none=True)
        torch_loss(module(images[part]), labels[part]).backward()
        opt.step()
    module.eval()

    def predict(im):
        with torch.no_grad():
            return module(torch_data.normalize(torch.from_numpy(np.array(im)), mean, std)).numpy()

    return _evaluate(predict, recipe, n_test, data_dir)


MODEL_NAMES = MODELS


# ----------------------------------------------------------------------------------------------
# Per-model measurements, computed once and shared (tests: a session fixture; the report)
# ----------------------------------------------------------------------------------------------

class Measurements:
    def __init__(self):
        self._cache: dict[tuple, Any] = {}

    def _get(self, key: tuple, compute: Callable[[], Any]):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def pair(self, name: str, direction: str = "torch_to_flax") -> Pair:
        return self._get(("pair", name, direction), lambda: make_pair(name, direction))

    def forward(self, name: str, direction: str, kind: str, n: int) -> float:
        return self._get(("forward", name, direction, kind, n), lambda: measure_forward(
            self.pair(name, direction), forward_batch(load_recipe(name), kind, n)))

    def grads(self, name: str, kind: str = "real", train: bool = False) -> GradResult:
        return self._get(("grads", name, kind, train), lambda: measure_grads(
            self.pair(name), make_batch(load_recipe(name), kind, GRAD_BATCH, seed=7, start=1000), train=train))

    def grad_cases(self, name: str) -> list[tuple[str, bool]]:
        """(input kind, train mode): real and Gaussian inputs in eval mode; fashion_cnn also in train mode."""
        return [("real", False), ("gaussian", False)] + ([("real", True)] if name == "fashion_cnn" else [])

    def batches(self, name: str, batch_size: int = TRAJECTORY_BATCH):
        return self._get(("batches", name, batch_size),
                         lambda: train_batches(load_recipe(name), TRAJECTORY_STEPS, batch_size))

    def trajectory(self, name: str, dtype: str = "float32") -> Trajectory:
        batch_size = FLOAT64_BATCH if dtype == "float64" else TRAJECTORY_BATCH
        return self._get(("trajectory", name, dtype),
                         lambda: run_training(self.pair(name), self.batches(name, batch_size), dtype=dtype))

    def optimizer(self, name: str) -> list[float]:
        return self._get(("optimizer", name),
                         lambda: optimizer_parity(self.pair(name), self.batches(name)[:OPTIMIZER_STEPS]))

    def first_update_excess(self, name: str) -> float:
        return self._get(("excess", name), lambda: first_update_excess(
            self.pair(name), self.trajectory(name), batch_from_uint8(load_recipe(name), *self.batches(name)[0])))

    def first_step_check(self, name: str) -> dict[str, Any]:
        """The one-training-step verdict (test_training.test_one_training_step, the report): max |Δθ|
        within bounds.UPDATE_ABS, or, for Adam only, its excess over what Adam's first-update formula
        makes of the two frameworks' gradient rounding within it (first_update_excess)."""
        from parity_tests import bounds

        diff = self.trajectory(name).param_diffs[0]
        result = {"max_abs_diff": diff, "excess_over_gradient_rounding": None, "ok": diff <= bounds.UPDATE_ABS}
        if not result["ok"] and load_recipe(name).optimizer.name == "adam":
            excess = self.first_update_excess(name)
            result.update(excess_over_gradient_rounding=excess, ok=excess <= bounds.UPDATE_ABS)
        return result

    def control(self, name: str) -> Trajectory:
        return self._get(("control", name), lambda: torch_kernel_control(self.pair(name), self.batches(name)))

    def num_params(self, name: str) -> tuple[int, int]:
        pair = self.pair(name)
        return flax_models.num_params(pair.flax_params), torch_models.num_params(pair.torch_model)

    def trajectory_bounds(self, name: str) -> tuple[float, float]:
        """(per-step loss bound, final-parameter bound) for the float32 trajectory: the issue's 1e-4,
        or, only where float32 drifts past it, bounds.CONTROL_FACTOR x torch's own drift (control)."""
        from parity_tests import bounds

        traj = self.trajectory(name)
        loss_bound, param_bound = bounds.TRAJECTORY_LOSS, bounds.TRAJECTORY_PARAM
        if traj.max_loss_diff > loss_bound or traj.final_param_diff > param_bound:
            control = self.control(name)
            loss_bound = bounds.trajectory_allowance(loss_bound, control.max_loss_diff)
            param_bound = bounds.trajectory_allowance(param_bound, control.final_param_diff)
        return loss_bound, param_bound


def weights_names(model: str) -> list[str]:
    from cnn_parity.weights import canonical_shapes

    return list(canonical_shapes(model))
