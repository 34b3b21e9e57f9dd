"""Train one recipe with PyTorch: `python -m torch_ref.train --model lenet` (flags: --help).

Plain PyTorch, as the sources wrote it: nn.Module, torch.optim, an iterable of batches. Uses CUDA
when available. Seeding: `torch.manual_seed(seed)` before building the model (its initial weights),
and a generator seeded from the same seed for the shuffling order. Under torchrun it trains with
DistributedDataParallel (torch_ref/distributed.py).
"""

from __future__ import annotations

import io
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnn_parity import data as neutral_data
from cnn_parity import shared_rng, train_cli
from cnn_parity.recipe_data import recipe_split
from cnn_parity.files import write_bytes_atomic
from cnn_parity.pairs import CheckedPair
from cnn_parity.recipes import Optimizer, Recipe
from cnn_parity.trainer import EvalResult, StepMetrics
from torch.nn.parallel import DistributedDataParallel

from torch_ref import data, distributed, pair_model
from torch_ref.convert import load_canonical, state_dict_to_canonical
from torch_ref.models import create_model, num_params


def make_optimizer(params, cfg: Optimizer) -> torch.optim.Optimizer:
    """The recipe's optimizer in torch.optim (coupled weight decay but for AdamW's, as torch defines them)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, centered=cfg.centered)
    adam = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return adam(params, lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The recipe's learning-rate schedule in torch.optim.lr_scheduler, stepped after every optimizer
    step (None where the rate is constant); `cnn_parity.recipes.learning_rate` writes it out, and the
    parity suite holds the two together."""
    s, schedulers = recipe.schedule, torch.optim.lr_scheduler
    main = None
    if s.name == "step":
        main = schedulers.StepLR(optimizer, step_size=s.step_epochs * steps_per_epoch, gamma=s.gamma)
    elif s.name == "cosine":
        main = schedulers.CosineAnnealingLR(optimizer, T_max=recipe.epochs * steps_per_epoch - s.warmup_steps,
                                            eta_min=s.final_lr)
    if not s.warmup_steps:
        return main
    warmup = schedulers.LinearLR(optimizer, start_factor=s.warmup_start_factor, total_iters=s.warmup_steps)
    return warmup if main is None else schedulers.SequentialLR(optimizer, [warmup, main], milestones=[s.warmup_steps])


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (for fashion_cnn: of log-probabilities, which is NLL)."""
    return F.cross_entropy(outputs, labels)


def loss_and_gradients(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       loss_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss and backward in the model's current mode: returns (loss, outputs), both detached,
    with every parameter's `.grad` holding the gradient of this batch alone. `loss_fn(outputs, labels)`:
    another loss than the recipes' `cross_entropy` (the model checker's); None: that one, looked up
    when called."""
    model.zero_grad(set_to_none=True)
    outputs = model(images)
    loss = (loss_fn or cross_entropy)(outputs, labels)
    loss.backward()
    return loss.detach(), outputs.detach()


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                   targets: torch.Tensor, loss_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on `loss_fn(model(inputs), targets)`: returns (loss, outputs), detached."""
    loss, outputs = loss_and_gradients(model, inputs, targets, loss_fn)
    optimizer.step()
    return loss, outputs


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch (NCHW float images, int labels), the model in training mode;
    returns (mean loss, correct count) as device tensors, so a caller need not wait for them."""
    loss, outputs = optimizer_step(model, optimizer, images, labels)
    return loss, (outputs.argmax(1) == labels).sum()


@torch.inference_mode()
def evaluation_sums(model: torch.nn.Module, loader, device: torch.device) -> torch.Tensor:
    """(summed loss, correct, examples) of `model` over every batch of `loader`, in evaluation mode."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        outputs = model(images)
        sums += torch.stack([F.cross_entropy(outputs, labels, reduction="sum").double(),
                             (outputs.argmax(1) == labels).sum().double(), torch.tensor(len(labels), device=device)])
    return sums


def evaluate_model(model: torch.nn.Module, loader, device: torch.device) -> EvalResult:
    """Loss and accuracy of `model` over every batch of `loader`."""
    return _eval_result(evaluation_sums(model, loader, device))


def _eval_result(sums: torch.Tensor) -> EvalResult:
    loss, correct, examples = sums.tolist()
    return EvalResult(loss=loss / examples, accuracy=correct / examples, examples=int(examples))


class TorchTrainer:
    framework = "torch"

    def __init__(self, recipe: Recipe, pipeline: str = "tensor", data_dir: str | None = None,
                 world: distributed.World | None = None, pair: CheckedPair | None = None):
        """`world`: this process's place in a torchrun job (None: one process); `pair`: a recipe's own
        pair as checked (cnn_parity.pairs.check), for its initial weights in a paired run."""
        self.recipe, self.pipeline, self.world = recipe, pipeline, world
        self.is_primary, self.is_single_process = world is None or world.is_primary, world is None
        if world is not None:
            self.torch_device = world.device
        else:
            self.torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.cuda.get_device_name(self.torch_device) if self.torch_device.type == "cuda" else "cpu"
        self.device = f"{world.size} × {device} ({world.size} processes)" if world is not None else device
        self.num_devices = world.size if world is not None else 1
        torch.manual_seed(recipe.seed)
        model = pair_model.build(recipe) if recipe.pair is not None else create_model(recipe.model, recipe.init)
        self.model = model.to(self.torch_device)
        if recipe.init_rng == "shared":  # after torch's own draw, so dropout's stream is the same either way
            shared = pair.initial_weights if recipe.pair is not None else \
                shared_rng.initial_weights(recipe.model, recipe.init, recipe.seed)
            load_canonical(recipe.model, self.model, shared)
        self.num_params = num_params(self.model)
        self.optimizer = make_optimizer(self.model.parameters(), recipe.optimizer)
        self._ddp = None
        if world is not None:
            self._ddp = DistributedDataParallel(self.model)  # broadcasts rank 0's weights (all equal anyway)
            torch.manual_seed(recipe.seed + world.rank)  # each rank its own dropout masks
        self.shuffle_generator = torch.Generator().manual_seed(recipe.seed)
        self.train_loader, self.test_loader = data.make_loaders(recipe, pipeline, data_dir, self.torch_device,
                                                                self.shuffle_generator, world)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = make_scheduler(self.optimizer, recipe, self.steps_per_epoch)
        if recipe.pair is not None:  # a pair's model and data: its labels must index its outputs
            images, _ = next(iter(self.test_loader))
            with torch.no_grad():
                outputs = self.model.eval()(images[:1].to(self.torch_device)).shape[-1]
            for split in ("train", "test"):
                neutral_data.check_labels(recipe_split(recipe, split, data_dir), outputs, recipe.data_name)
        self._batches = None  # the running epoch's batch iterator, from step self._next_step on
        self._epoch, self._next_step = 0, 0
        self._epoch_start_shuffle_state: torch.Tensor | None = None  # while an epoch is running

    def train_steps(self, epoch: int, start: int, count: int) -> StepMetrics:
        if self._batches is None or (self._epoch, self._next_step) != (epoch, start):
            # The shuffle generator is drawn from only when an epoch's iterator starts; keeping its state
            # from before that draw lets a checkpoint taken mid-epoch replay the same order on resume,
            # while one taken after the epoch's last step keeps the drawn state, for the next epoch's order.
            self._epoch_start_shuffle_state = self.shuffle_generator.get_state()
            data.set_epoch(self.train_loader, epoch)
            self._batches = itertools.islice(self.train_loader, start, None)
            self._epoch, self._next_step = epoch, start
        self.model.train()
        model = self._ddp if self._ddp is not None else self.model
        losses, correct, examples = [], [], 0
        for images, labels in itertools.islice(self._batches, count):
            images = images.to(self.torch_device, non_blocking=True)
            labels = labels.to(self.torch_device, non_blocking=True)
            loss, batch_correct = train_step(model, self.optimizer, images, labels)
            if self.scheduler is not None:
                self.scheduler.step()
            if self.world is None:
                batch_examples = len(labels)
            else:  # the global batch's mean loss and correct count, as one process logs them; every
                # rank holds an equal share, and the sums stay on the device (no host sync per step)
                batch_examples = len(labels) * self.world.size
                totals = distributed.all_sum(torch.stack([loss * len(labels), batch_correct.to(loss.dtype)]))
                loss, batch_correct = totals[0] / batch_examples, totals[1]
            losses.append(loss)
            correct.append(batch_correct)
            examples += batch_examples
        self._next_step += count
        if self._next_step == self.steps_per_epoch:
            self._batches, self._epoch_start_shuffle_state = None, None
        return StepMetrics([torch.stack(losses).cpu()], [torch.stack(correct).cpu()], examples)

    def evaluate(self) -> EvalResult:
        sums = evaluation_sums(self.model, self.test_loader, self.torch_device)
        return _eval_result(sums if self.world is None else distributed.all_sum(sums))

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return state_dict_to_canonical(self.recipe.model, self.model)

    def load_canonical(self, arrays: dict[str, np.ndarray]) -> None:
        load_canonical(self.recipe.model, self.model, arrays)

    def collect_state(self) -> None:
        # Dropout draws from this process's CPU generator, or on CUDA from its device's; under DDP each rank
        # has its own, so the checkpoint keeps every rank's (one row each).
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state(self.torch_device) if self.torch_device.type == "cuda" else None
        if self.world is None:
            self._rank_rng_states = (cpu[None], None if cuda is None else cuda[None])
        else:
            self._rank_rng_states = (distributed.all_gather(cpu, self.world),
                                     None if cuda is None else distributed.all_gather(cuda, self.world))

    def save_state(self, folder: Path) -> None:
        mid_epoch = self._epoch_start_shuffle_state is not None
        cpu_rng, cuda_rng = self._rank_rng_states
        # Serialised in memory, written by one plain write: torch.save to a file reports a full disk as a
        # RuntimeError after leaving a partial file; this raises OSError and leaves nothing.
        buffer = io.BytesIO()
        torch.save({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": cpu_rng,
            "cuda_rng": cuda_rng,
            "shuffle": self._epoch_start_shuffle_state if mid_epoch else self.shuffle_generator.get_state(),
        }, buffer)
        write_bytes_atomic(Path(folder) / "state.pt", buffer.getvalue())

    def restore_state(self, folder: Path) -> None:
        state = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        # A rank the checkpoint has no row for (a resume on more processes) keeps its own seeding.
        rank = 0 if self.world is None else self.world.rank
        cpu_rng, cuda_rng = state["rng"], state["cuda_rng"]
        if cpu_rng.dim() == 1:  # a checkpoint of one process's generators, of an earlier version
            cpu_rng, cuda_rng = cpu_rng[None], cuda_rng[self.torch_device.index or 0][None] if cuda_rng else None
        if rank < len(cpu_rng):  # a copy of the row: torch 2.14 set_rng_state segfaults on a view at an offset
            torch.set_rng_state(cpu_rng[rank].clone())
            if cuda_rng is not None and self.torch_device.type == "cuda":
                torch.cuda.set_rng_state(cuda_rng[rank].clone(), self.torch_device)
        self.shuffle_generator.set_state(state["shuffle"])
        self._batches = None  # the next train_steps starts its epoch's iterator from the restored generator

    def any_process(self, flag: bool) -> bool:
        return flag if self.world is None else distributed.any_rank(flag, self.torch_device)


def make_trainer(recipe: Recipe, args) -> TorchTrainer:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return TorchTrainer(recipe, args.pipeline, args.data_dir, distributed.initialize(), args.checked_pair)


def main(argv=None) -> int:
    try:
        return train_cli.run("torch", data.PIPELINES, make_trainer, argv, recorded_flags=("threads",))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
