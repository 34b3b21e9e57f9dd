"""Train one recipe with PyTorch: `python -m torch_ref.train --model lenet` (flags: --help).

Plain PyTorch, as the sources wrote it: nn.Module, torch.optim, an iterable of batches. Uses CUDA
when available. Seeding: `torch.manual_seed(seed)` before building the model (its initial weights),
and a generator seeded from the same seed for the shuffling order.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnn_parity import cli
from cnn_parity.recipes import Optimizer, Recipe
from cnn_parity.training import EpochLog, EvalResult
from torch_ref import data
from torch_ref.convert import load_canonical, state_dict_to_canonical
from torch_ref.models import create_model, num_params


def make_optimizer(params, cfg: Optimizer) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps)


@torch.inference_mode()
def evaluate_model(model: torch.nn.Module, loader, device: torch.device) -> EvalResult:
    """Summed loss and accuracy of `model` over every batch of `loader`, in evaluation mode."""
    model.eval()
    loss = correct = examples = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        outputs = model(images)
        loss += F.cross_entropy(outputs, labels, reduction="sum").item()
        correct += (outputs.argmax(1) == labels).sum().item()
        examples += len(labels)
    return EvalResult(loss=loss / examples, accuracy=correct / examples, examples=examples)


class TorchTrainer:
    framework = "torch"

    def __init__(self, recipe: Recipe, pipeline: str = "tensor", data_dir: str | None = None):
        self.recipe, self.pipeline = recipe, pipeline
        self.torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.cuda.get_device_name() if self.torch_device.type == "cuda" else "cpu"
        torch.manual_seed(recipe.seed)
        self.model = create_model(recipe.model, recipe.init).to(self.torch_device)
        self.num_params = num_params(self.model)
        self.optimizer = make_optimizer(self.model.parameters(), recipe.optimizer)
        self.shuffle_generator = torch.Generator().manual_seed(recipe.seed)
        self.train_loader, self.test_loader = data.make_loaders(recipe, pipeline, data_dir, self.torch_device,
                                                                self.shuffle_generator)
        self.steps_per_epoch = len(self.train_loader)
        self._epoch_start_shuffle_state: torch.Tensor | None = None  # set while an epoch is running

    def train_epoch(self, epoch: int, start: int, num_steps: int, log: EpochLog) -> None:
        self.model.train()
        # The shuffle generator is drawn from only when an epoch's iterator starts; keeping its state
        # from before that draw lets a checkpoint taken mid-epoch replay the same order on resume.
        self._epoch_start_shuffle_state = self.shuffle_generator.get_state()
        for images, labels in itertools.islice(self.train_loader, start, start + num_steps):
            images = images.to(self.torch_device, non_blocking=True)
            labels = labels.to(self.torch_device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(images)
            loss = F.cross_entropy(outputs, labels)  # fashion_cnn: on log-probabilities, i.e. NLL
            loss.backward()
            self.optimizer.step()
            log.record(loss.detach(), (outputs.argmax(1) == labels).sum(), len(labels))
        self._epoch_start_shuffle_state = None

    def evaluate(self) -> EvalResult:
        return evaluate_model(self.model, self.test_loader, self.torch_device)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return state_dict_to_canonical(self.recipe.model, self.model)

    def load_canonical(self, arrays: dict[str, np.ndarray]) -> None:
        load_canonical(self.recipe.model, self.model, arrays)

    def save_state(self, folder: Path) -> None:
        mid_epoch = self._epoch_start_shuffle_state is not None
        torch.save({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),  # dropout draws from the global generator
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle": self._epoch_start_shuffle_state if mid_epoch else self.shuffle_generator.get_state(),
        }, Path(folder) / "state.pt")

    def restore_state(self, folder: Path) -> None:
        state = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.shuffle_generator.set_state(state["shuffle"])


def main(argv=None) -> int:
    return cli.run("torch", data.PIPELINES, TorchTrainer, argv)


if __name__ == "__main__":
    sys.exit(main())
