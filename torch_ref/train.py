"""Train one recipe with PyTorch: `python -m torch_ref.train --model lenet` (flags: --help).

Plain PyTorch, as the sources wrote it: nn.Module, torch.optim, an iterable of batches. Uses CUDA
when available. Seeding: `torch.manual_seed(seed)` before building the model (its initial weights),
and a generator seeded from the same seed for the shuffling order.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from cnn_parity import cli
from cnn_parity.recipes import Optimizer, Recipe
from cnn_parity.training import EpochLog, EvalResult
from torch_ref import data
from torch_ref.models import create_model, num_params


def make_optimizer(params, cfg: Optimizer) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps)


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
        shuffle_generator = torch.Generator().manual_seed(recipe.seed)
        self.train_loader, self.test_loader = data.make_loaders(recipe, pipeline, data_dir, self.torch_device,
                                                                shuffle_generator)
        self.steps_per_epoch = len(self.train_loader)

    def train_epoch(self, epoch: int, num_steps: int, log: EpochLog) -> None:
        self.model.train()
        for _, (images, labels) in zip(range(num_steps), self.train_loader):
            images = images.to(self.torch_device, non_blocking=True)
            labels = labels.to(self.torch_device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(images)
            loss = F.cross_entropy(outputs, labels)  # fashion_cnn: on log-probabilities, i.e. NLL
            loss.backward()
            self.optimizer.step()
            log.record(loss.detach(), (outputs.argmax(1) == labels).sum(), len(labels))

    @torch.inference_mode()
    def evaluate(self) -> EvalResult:
        self.model.eval()
        loss = correct = examples = 0
        for images, labels in self.test_loader:
            images, labels = images.to(self.torch_device), labels.to(self.torch_device)
            outputs = self.model(images)
            loss += F.cross_entropy(outputs, labels, reduction="sum").item()
            correct += (outputs.argmax(1) == labels).sum().item()
            examples += len(labels)
        return EvalResult(loss=loss / examples, accuracy=correct / examples, examples=examples)


def main(argv=None) -> int:
    return cli.run("torch", data.PIPELINES, TorchTrainer, argv)


if __name__ == "__main__":
    sys.exit(main())
