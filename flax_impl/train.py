"""Train one recipe with Flax: `python -m flax_impl.train --model lenet` (flags: --help).

`train_step(state, batch, rng) -> (state, metrics)` is a pure function; the trainer runs it under
`jax.jit` with the state donated, gathering each batch on the device from a per-epoch permutation:
`train_on_slice` (one step) and `train_chunk` (full batches, up to `STEPS_PER_DISPATCH` of them inside
one jitted `lax.fori_loop`: one dispatch and one host↔device exchange per chunk, not per step; Python's
per-step dispatch cost weighs on short steps, benchmarks/FINDINGS.md section 13). Every full batch runs
through that same compiled loop body whatever the chunking, so where checkpoints and resumes cut an
epoch changes no result. Nothing here names a device: the same code runs on a GPU when JAX sees one.
How the model convolves (`--conv-impl`, a tier of flax_impl/kernels.py) is chosen once, here, by
`resolve_conv_impl`: "auto" is jaxlib's own oneDNN convolution on one CPU device where its start-up
self-test passes, the pure-JAX "canonical" convolutions on a CPU otherwise (said in one line), and
XLA's own convolutions elsewhere; the native oneDNN extension only when asked for. Every program that
runs the model (`compiled_steps`, the evaluator) is compiled with the tier's XLA options.

`--api linen` (default) trains the Linen modules of flax_impl/models.py, `--api nnx` the NNX ones of
flax_impl/models_nnx.py through this same step: an NNX model is split once (`nnx.split`) into a
params dict laid out as Linen's and a `FunctionalModel` whose `apply` merges it back inside the
traced step, so TrainState, the optimiser (optax on the split state, not `nnx.Optimizer`: the same
optax update, one checkpoint layout), checkpoints, converters and multi-device code are shared.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from typing import Any, NamedTuple

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training import train_state

from cnn_parity import data as neutral_data
from cnn_parity import shared_rng, train_cli
from cnn_parity.commands import positive_int
from cnn_parity.errors import UsageError
from cnn_parity.files import write_bytes_atomic
from cnn_parity.pairs import CheckedPair
from cnn_parity.recipes import Optimizer, Recipe
from cnn_parity.trainer import CHECK_EVERY, EvalResult, StepMetrics
from cnn_parity.weights import CONV_GEOMETRY
from flax_impl import compilation_cache, data, distributed, jaxlib_onednn, kernels, models_nnx, onednn_conv, pair_model
from flax_impl.convert import params_from_canonical, params_to_canonical
from flax_impl.models import create_model, init_params, num_params

TrainState = train_state.TrainState


def make_optimizer(cfg: Optimizer, learning_rate: optax.ScalarOrSchedule | None = None) -> optax.GradientTransformation:
    """The recipe's optimizer in optax, at `learning_rate` (a schedule, `make_schedule`; default the
    constant cfg.lr). Coupled weight decay (torch's SGD, Adam, RMSprop) is added to the gradient
    first; adamw's is decoupled, as torch's AdamW."""
    lr = cfg.lr if learning_rate is None else learning_rate
    if cfg.name == "adamw":
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        # optax's trace (f ← g + m·f) is PyTorch's dampening-0 momentum buffer, Nesterov's too.
        tx = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    elif cfg.name == "adam":
        tx = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:  # rmsprop as torch's: eps added to the root (eps_in_sqrt=False), its `alpha` optax's `decay`, and
        # momentum on the scaled gradient *before* the learning rate (optax.rmsprop scales first, which
        # differs as soon as the rate changes: the parity suite's scheduled rmsprop caught it)
        scale = optax.scale_by_stddev if cfg.centered else optax.scale_by_rms
        tx = optax.chain(scale(decay=cfg.alpha, eps=cfg.eps, eps_in_sqrt=False),
                         optax.trace(decay=cfg.momentum) if cfg.momentum else optax.identity(),
                         optax.scale_by_learning_rate(lr))
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx) if cfg.weight_decay else tx


def make_schedule(recipe: Recipe, steps_per_epoch: int) -> optax.ScalarOrSchedule:
    """The recipe's learning-rate schedule in optax (a float where it is constant), over global steps;
    `cnn_parity.recipes.learning_rate` writes it out, and the parity suite holds the two together."""
    s, lr = recipe.schedule, recipe.optimizer.lr
    if s.name == "step":
        main = optax.exponential_decay(lr, s.step_epochs * steps_per_epoch, s.gamma, staircase=True)
    elif s.name == "cosine":
        main = optax.cosine_decay_schedule(lr, recipe.epochs * steps_per_epoch - s.warmup_steps, alpha=s.final_lr / lr)
    else:
        main = lr
    if s.warmup_steps:
        warmup = optax.linear_schedule(lr * s.warmup_start_factor, lr, s.warmup_steps)
        main = optax.join_schedules([warmup, main if callable(main) else optax.constant_schedule(lr)], [s.warmup_steps])
    if not callable(main):
        return main
    # optax counts steps in int32 and divides them in float32 even under x64: the count as the default
    # float (float32 unless x64 is on, the same values) lets a float64 run schedule in float64.
    return lambda count: main(jnp.asarray(count, jnp.result_type(float)))


# Steps per dispatch: the chunk whose losses EpochLog reads back at once (one dispatch, one read-back);
# long enough to hide dispatch, short enough for a live progress bar and a prompt Ctrl-C
# (benchmarks/FINDINGS.md, section 13).
STEPS_PER_DISPATCH = CHECK_EVERY


APIS = ("linen", "nnx")
CONV_IMPL_CHOICES = ("auto", *kernels.CONV_IMPLS)


def resolve_conv_impl(conv_impl: str, model: str, devices: int = 1) -> str:
    """The convolutions `model` trains with on `devices` devices of JAX's default backend, for the
    command-line choice `conv_impl`: "none" for a model without convolutions (recorded, so that no
    run claims kernels it does not use); "auto" is "jaxlib-onednn" on one CPU device where its
    self-test passes (else "canonical", said in one line), "canonical" on several CPU devices, "xla"
    elsewhere. UsageError if a oneDNN tier is chosen and cannot run. oneDNN's calls are opaque to
    XLA's partitioner, which would gather the whole batch onto every device to run them, so both
    oneDNN tiers train on one device."""
    if not CONV_GEOMETRY.get(model):  # whatever was asked (a resumed mlp run asks for the "none" it recorded); a
        return "none"  # pair of the user's own convolves as its model does
    if conv_impl not in CONV_IMPL_CHOICES:
        raise ValueError(f"conv_impl must be one of {CONV_IMPL_CHOICES}, not {conv_impl!r}")
    backend = jax.default_backend()
    if conv_impl == "auto":
        if backend != "cpu":
            return "xla"
        if devices > 1:
            return "canonical"
        usable, why = jaxlib_onednn.status()
        if not usable:
            print(f"jaxlib's oneDNN convolution is not used: {why}; convolving with the pure-JAX "
                  "'canonical' tier instead", file=sys.stderr)
            return "canonical"
        return "jaxlib-onednn"
    if conv_impl in ("onednn", "jaxlib-onednn"):
        if backend != "cpu":
            raise UsageError(f"conv_impl {conv_impl} runs on the CPU only; JAX's backend here is {backend}")
        if devices > 1:
            raise UsageError(f"conv_impl {conv_impl} trains on one device, not {devices} (XLA would run every call on "
                             "the whole batch on each device): pass --devices 1, or leave --conv-impl at its default")
        if conv_impl == "onednn":
            try:
                onednn_conv.load()
            except onednn_conv.Unavailable as e:
                raise UsageError(f"conv_impl onednn: {e}") from None
        else:
            usable, why = jaxlib_onednn.status()
            if not usable:
                raise UsageError(f"conv_impl jaxlib-onednn: {why}")
    return conv_impl


def create_train_state(recipe: Recipe, key: jax.Array, conv_impl: str, api: str = "linen",
                       steps_per_epoch: int = 1) -> TrainState:
    """The initial state of `recipe`'s model in Flax API `api`, convolving per `conv_impl` (one of
    flax_impl.kernels.CONV_IMPLS, or "none"), its parameters drawn from `key` (each API by its own
    init: the same distributions, not the same draws), its optimizer on the recipe's schedule over
    epochs of `steps_per_epoch` steps."""
    conv_kernels = kernels.of(conv_impl)
    if api == "nnx":
        model, params = models_nnx.init_params(recipe.model, key, recipe.init, conv_kernels)
    else:
        model = create_model(recipe.model, recipe.init, conv_kernels)
        params = init_params(model, key)
    return TrainState.create(apply_fn=model.apply, params=params,
                             tx=make_optimizer(recipe.optimizer, make_schedule(recipe, steps_per_epoch)))


def apply_function(recipe: Recipe, conv_impl: str, api: str):
    """`recipe`'s model's Linen-style `apply` in Flax API `api`, without parameters."""
    if api == "nnx":
        return models_nnx.functional_model(recipe.model, recipe.init, kernels.of(conv_impl)).apply
    return create_model(recipe.model, recipe.init, kernels.of(conv_impl)).apply


def kernels_of(apply_fn) -> kernels.Kernels:
    """The tier the model behind `apply_fn` (a Linen module's or a FunctionalModel's `apply`)
    convolves with."""
    return getattr(getattr(apply_fn, "__self__", None), "kernels", kernels.XLA)


def cross_entropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of logits (for fashion_cnn: of log-probabilities, which is NLL)."""
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()


def loss_and_gradients(apply_fn, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
                       train: bool = True) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """((loss, outputs), gradients w.r.t. `params`) on `batch` ({"image": float NHWC, "label": int});
    `train` selects training mode (dropout on, driven by `rng`)."""

    def loss_fn(params):
        rngs = {"dropout": rng} if train else {}
        outputs = apply_fn({"params": params}, batch["image"], train=train, rngs=rngs)
        return cross_entropy(outputs, batch["label"]), outputs

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on `batch` ({"image": float NHWC, "label": int}); `rng` drives dropout."""
    (loss, outputs), grads = loss_and_gradients(state.apply_fn, state.params, batch, rng)
    correct = jnp.sum(jnp.argmax(outputs, -1) == batch["label"])
    return state.apply_gradients(grads=grads), {"loss": loss, "correct": correct}


def train_on_slice(state: TrainState, split: data.DeviceSplit, perm: jax.Array, start, rng: jax.Array, *,
                   mean: float, std: float, mesh: jax.sharding.Mesh, batch_size: int):
    """`train_step` on the batch of `batch_size` examples at `perm[start:]`, gathered and normalised
    (by `mean`, `std`) on the device and sharded over `mesh`; its dropout key is `rng` folded with the step."""
    index = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
    index = jax.lax.with_sharding_constraint(index, distributed.batch_sharded(mesh))
    batch = {"image": data.normalize(split.images[index], mean=mean, std=std), "label": split.labels[index]}
    state, metrics = train_step(state, batch, jax.random.fold_in(rng, state.step))
    return jax.lax.with_sharding_constraint(state, distributed.replicated(mesh)), metrics


_STATIC = ("mean", "std", "mesh", "batch_size")  # a step is a function of its data, given these


def train_chunk(state: TrainState, split: data.DeviceSplit, perm: jax.Array, first, count, rng: jax.Array, *,
                mean: float, std: float, mesh: jax.sharding.Mesh, batch_size: int):
    """Steps `first` .. `first + count - 1` of an epoch (count ≤ STEPS_PER_DISPATCH, all full batches),
    as `train_on_slice`; their losses and correct counts come back in buffers of STEPS_PER_DISPATCH
    (so that one compilation serves every count)."""

    def body(i, carry):
        state, losses, correct = carry
        state, metrics = train_on_slice(state, split, perm, (first + i) * batch_size, rng, mean=mean, std=std,
                                        mesh=mesh, batch_size=batch_size)
        return state, losses.at[i].set(metrics["loss"]), correct.at[i].set(metrics["correct"])

    buffers = jnp.zeros(STEPS_PER_DISPATCH, jnp.float32), jnp.zeros(STEPS_PER_DISPATCH, jnp.int32)
    return jax.lax.fori_loop(0, count, body, (state, *buffers))


class CompiledSteps(NamedTuple):
    """The gathered step, jitted, with the state donated: `train_on_slice` (one step: an epoch's last,
    partial batch, and the benchmarks' per-step loops) and `train_chunk` (full batches, one dispatch)."""

    train_on_slice: Any
    train_chunk: Any


@functools.lru_cache(maxsize=None)
def _compiled_steps(options: tuple[tuple[str, str], ...]) -> CompiledSteps:
    jit = functools.partial(jax.jit, donate_argnums=0, static_argnames=_STATIC, compiler_options=dict(options) or None)
    return CompiledSteps(jit(train_on_slice), jit(train_chunk))


def compiled_steps(conv_kernels: kernels.Kernels) -> CompiledSteps:
    """The steps of a model convolving with `conv_kernels`, compiled with its XLA options (one pair of
    jitted functions per set of options, shared by every trainer)."""
    return _compiled_steps(tuple(sorted((conv_kernels.jit_options() or {}).items())))


def eval_sums(apply_fn, params: Any, images: jax.Array, labels: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed loss and correct count over the examples of a chunk marked `valid`."""
    outputs = apply_fn({"params": params}, images, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
    correct = jnp.argmax(outputs, -1) == labels
    return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(jnp.where(valid, correct, 0))


def make_evaluator(recipe: Recipe, mesh: jax.sharding.Mesh, api: str = "linen", apply_fn=None,
                   compiler_options: dict[str, str] | None = None):
    """A function (params, DeviceSplit) -> EvalResult over the whole split, jitted per chunk of
    `recipe.eval_batch_size` (the last chunk padded and masked, so it compiles once, and no example is
    dropped or counted twice), each chunk sharded over the mesh's devices and compiled with
    `compiler_options` (the training tier's). The forward pass uses XLA's own convolutions on every
    backend: only their CPU *gradients* are slow, and the im2col patches of a 1,000-image chunk would
    be large (benchmarks/FINDINGS.md, section 13); same parameters, same function.
    `apply_fn`: the model's own (a pair of the user's own), instead of the built-in model's."""
    apply_fn = apply_fn or apply_function(recipe, "xla", api)
    normalize = functools.partial(data.normalize, mean=recipe.normalization[0], std=recipe.normalization[1])
    distributed.check_batch_size(mesh, recipe.eval_batch_size, "eval batch size")

    @functools.partial(jax.jit, static_argnames="size", compiler_options=compiler_options)
    def eval_chunk(params, split, start, size):
        index = jax.lax.with_sharding_constraint(start + jnp.arange(size), distributed.batch_sharded(mesh))
        valid = index < len(split.labels)
        index = jnp.minimum(index, len(split.labels) - 1)
        return eval_sums(apply_fn, params, normalize(split.images[index]), split.labels[index], valid)

    synchronous = distributed.synchronous_dispatch(mesh)

    def evaluate(params, split: data.DeviceSplit) -> EvalResult:
        n, size = len(split.labels), recipe.eval_batch_size
        sums = []
        for start in range(0, n, size):
            sums.append(eval_chunk(params, split, start, size=size))
            if synchronous:
                jax.block_until_ready(sums[-1])
        loss = math.fsum(float(s[0]) for s in sums)
        correct = sum(int(s[1]) for s in sums)
        return EvalResult(loss=loss / n, accuracy=correct / n, examples=n)

    return evaluate


class FlaxTrainer:
    framework = "flax"

    def __init__(self, recipe: Recipe, pipeline: str = "device", data_dir: str | None = None, conv_impl: str = "auto",
                 mesh: jax.sharding.Mesh | None = None, api: str = "linen", pair: CheckedPair | None = None):
        """`conv_impl`: one of CONV_IMPL_CHOICES, resolved here (before the data loads, so that an
        unusable choice fails at once) into `self.conv_impl`, what the run records; `mesh`: the
        devices to train on (default: every local device, flax_impl.distributed); `api`: the Flax
        API of the model, "linen" or "nnx" (APIS); `pair`: a recipe's own pair as checked
        (cnn_parity.pairs.check): its transfer table, and its initial weights for a paired run."""
        self.recipe, self.pipeline, self.api = recipe, pipeline, api
        self.is_primary, self.is_single_process = jax.process_index() == 0, jax.process_count() == 1
        self.mesh = mesh if mesh is not None else distributed.make_mesh()
        self.conv_impl = resolve_conv_impl(conv_impl, recipe.model, self.mesh.size)
        self.kernels = kernels.of(self.conv_impl)
        self.steps = compiled_steps(self.kernels)
        replicated = distributed.replicated(self.mesh)
        self.train_data = data.to_device(data.load_split(recipe, "train", pipeline, data_dir), replicated)
        self.test_data = data.to_device(data.load_split(recipe, "test", pipeline, data_dir), replicated)
        n, b = len(self.train_data.labels), recipe.batch_size
        distributed.check_batch_size(self.mesh, b, "batch size")
        if not recipe.drop_last:
            distributed.check_batch_size(self.mesh, n % b or b, "the last batch's size")
        self.steps_per_epoch = n // b if recipe.drop_last else math.ceil(n / b)
        init_key, self.shuffle_key, self.dropout_key = jax.random.split(jax.random.key(recipe.seed), 3)
        self.pair, self.pair_model = pair, None
        if recipe.pair is not None:
            example = data.normalize(self.test_data.images[:1], *recipe.normalization)
            self.pair_model, params = pair_model.init(recipe, init_key, np.asarray(example))
            outputs = self.pair_model.apply({"params": params}, example).shape[-1]
            for split in ("train", "test"):
                neutral_data.check_labels(data.load_split(recipe, split, pipeline, data_dir), outputs, recipe.data_name)
            state = TrainState.create(apply_fn=self.pair_model.apply, params=params,
                                      tx=make_optimizer(recipe.optimizer, make_schedule(recipe, self.steps_per_epoch)))
        else:
            state = create_train_state(recipe, init_key, self.conv_impl, api, self.steps_per_epoch)
        self.state = jax.device_put(state, replicated)
        if recipe.init_rng == "shared":
            self.load_canonical(pair.initial_weights if pair is not None else
                                shared_rng.initial_weights(recipe.model, recipe.init, recipe.seed))
        self.num_params = num_params(self.state.params)
        device = self.mesh.devices.flat[0]
        count = f"{self.mesh.size} × " if self.mesh.size > 1 else ""
        self.device = f"{count}{device.platform} ({device.device_kind})"
        self.num_devices = self.mesh.size
        # The static arguments of the compiled steps.
        self.step_options = {"mean": recipe.normalization[0], "std": recipe.normalization[1], "mesh": self.mesh,
                             "batch_size": recipe.batch_size}
        self._evaluate = make_evaluator(recipe, self.mesh, api, self.pair_model.apply if self.pair_model else None,
                                        self.kernels.jit_options())
        self._synchronous = distributed.synchronous_dispatch(self.mesh)
        self._order: tuple[int, jax.Array] | None = None  # (epoch, its order), computed once per epoch

    def train_steps(self, epoch: int, start: int, count: int) -> StepMetrics:
        # The permutation and every dropout key are functions of (seed, epoch, step): resuming at
        # `start` needs no saved RNG state.
        n, b = len(self.train_data.labels), self.recipe.batch_size
        perm = self.epoch_order(epoch)
        full = max(0, min(start + count, n // b) - start)  # full batches among the steps
        partial = n - (start + full) * b if full < count else 0  # the epoch's last batch, if short (no drop_last)
        losses, correct = [], []
        if full:
            self.state, chunk_losses, chunk_correct = self.steps.train_chunk(self.state, self.train_data, perm, start,
                                                                             full, self.dropout_key, **self.step_options)
            losses.append(chunk_losses[:full])
            correct.append(chunk_correct[:full])
        if partial:
            self.state, metrics = self.steps.train_on_slice(self.state, self.train_data, perm, (start + full) * b,
                                                            self.dropout_key, **{**self.step_options, "batch_size": partial})
            losses.append(metrics["loss"])
            correct.append(metrics["correct"])
        if self._synchronous:
            jax.block_until_ready(self.state)
        return StepMetrics(losses, correct, examples=full * b + partial)

    def epoch_order(self, epoch: int) -> jax.Array:
        """The order (indices into the training split) in which epoch `epoch` (1-based) visits it."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.train_data.labels)
            if self.recipe.shuffle_rng == "shared":
                order = shared_rng.epoch_permutation(self.recipe.seed, epoch, n).astype(np.int32)
                order = jax.device_put(order, distributed.replicated(self.mesh))
            else:
                order = data.epoch_permutation(self.shuffle_key, epoch, n)
            self._order = (epoch, order)
        return self._order[1]

    def evaluate(self) -> EvalResult:
        return self._evaluate(self.state.params, self.test_data)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        params = distributed.host_tree(self.state.params)
        if self.pair_model is not None:
            return pair_model.to_canonical(self.pair_model, params, self.pair.transfer)
        return params_to_canonical(self.recipe.model, params)

    def load_canonical(self, arrays: dict[str, np.ndarray]) -> None:
        if self.pair_model is not None:
            params = pair_model.from_canonical(self.pair_model, self.state.params, arrays, self.pair.transfer)
        else:
            params = params_from_canonical(self.recipe.model, arrays)
        state = TrainState.create(apply_fn=self.state.apply_fn, params=params, tx=self.state.tx)
        self.state = jax.device_put(state, distributed.replicated(self.mesh))

    def collect_state(self) -> None:
        """Nothing to gather: every process holds the same replicated state, and dropout's keys are
        functions of (seed, epoch, step)."""

    def save_state(self, folder: Path) -> None:
        # One msgpack file written by one plain write: a full disk or a missing inode is one OSError,
        # where Orbax's asynchronous writer hung on its timeouts or sprayed tracebacks.
        write_bytes_atomic(Path(folder) / "state.msgpack", serialization.to_bytes(jax.device_get(self.state)))

    def restore_state(self, folder: Path) -> None:
        state = serialization.from_bytes(self.state, (Path(folder) / "state.msgpack").read_bytes())
        self.state = jax.device_put(state, distributed.replicated(self.mesh))

    def any_process(self, flag: bool) -> bool:
        return flag if self.is_single_process else distributed.any_process(flag)


def add_api_flag(parser) -> dict[str, str]:
    """The --api flag; returns its default."""
    parser.add_argument("--api", choices=APIS,
                        help="Flax API of the model: linen (flax_impl/models.py, default) or nnx (flax_impl/models_nnx.py)")
    return {"api": "linen"}


def add_flax_flags(parser) -> dict[str, object]:
    """Flax's own training flags; returns their defaults."""
    defaults = add_api_flag(parser)
    parser.add_argument("--conv-impl", choices=CONV_IMPL_CHOICES,
                        help="how the training step convolves (flax_impl/kernels.py): auto (default: jaxlib-onednn "
                             "on one CPU device where its self-test passes, else canonical on a CPU; xla elsewhere), "
                             "xla (Flax's own convolutions), gemm (im2col), canonical (pure JAX), jaxlib-onednn "
                             "(jaxlib's oneDNN, one CPU device), or onednn (opt-in native extension, one CPU device; "
                             f"build it first: `{onednn_conv.BUILD_COMMAND}`); evaluation always uses XLA's forward; "
                             "the run records what ran (none for a model without convolutions)")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help=f"do not use JAX's persistent compilation cache (${compilation_cache.ENV}, "
                             "default ~/.cache/cnn_parity/jax-compilation-cache)")
    parser.add_argument("--devices", type=positive_int, metavar="N",
                        help="train on N devices in all (default: all), the batch sharded over them: the first N "
                             "local ones, or in a multi-host run the first N / P of each process's")
    parser.add_argument("--coordinator", type=_host_port, metavar="HOST:PORT",
                        help="multi-host: process 0's address (all hosts)")
    parser.add_argument("--num-processes", type=positive_int, metavar="P", help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, metavar="I", help="multi-host: this process's index, 0 .. P-1")
    return {**defaults, "conv_impl": "auto", "no_compile_cache": False, "devices": None, "coordinator": None,
            "num_processes": None, "process_id": None}


def _host_port(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in 1 .. 65535, got {text!r}")
    return text


def make_trainer(recipe: Recipe, args) -> FlaxTrainer:
    if args.process_id is not None and args.num_processes is not None and not 0 <= args.process_id < args.num_processes:
        raise UsageError(f"--process-id must be in 0 .. {args.num_processes - 1} (--num-processes {args.num_processes}), "
                         f"got {args.process_id}")
    if not args.no_compile_cache:
        compilation_cache.enable()
    distributed.configure_cpu(args.threads, args.devices if args.coordinator is None else None)
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    trainer = FlaxTrainer(recipe, args.pipeline, args.data_dir, conv_impl=args.conv_impl,
                          mesh=distributed.make_mesh(args.devices), api=args.api, pair=args.checked_pair)
    args.conv_impl = trainer.conv_impl  # recorded as resolved: "auto" is not the same on every backend
    return trainer


def main(argv=None) -> int:
    return train_cli.run("flax", data.PIPELINES, make_trainer, argv, add_flags=add_flax_flags,
                         recorded_flags=("api", "conv_impl", "threads"))


if __name__ == "__main__":
    sys.exit(main())
