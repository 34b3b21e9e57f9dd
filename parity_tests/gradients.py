"""Gradients of the recipe's loss w.r.t. every parameter, from both frameworks' product code (test 3)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from cnn_parity.differences import Canonical, max_abs_diff
from parity_tests.batches import Batch
from parity_tests.dropout_masks import flax_dropout_mask, has_dropout, inject_torch_dropout_mask
from parity_tests.pairs import ModelPair
from parity_tests.product_steps import flax_loss_and_gradients
from torch_ref import train as torch_train

GRAD_BATCH = 128


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


def grad_cases(name: str) -> list[tuple[str, bool]]:
    """(input kind, train mode) of the gradient comparisons: real and Gaussian inputs in eval mode;
    fashion_cnn, the model with dropout, also in train mode."""
    return [("real", False), ("gaussian", False)] + ([("real", True)] if name == "fashion_cnn" else [])


def measure_grads(pair: ModelPair, batch: Batch, train: bool = False, dropout_rng: jax.Array | None = None,
                  torch_dropout_scale: float | None = None) -> GradResult:
    """Both sides' loss and gradients on `batch`, each from its product's `loss_and_gradients`, the
    gradients in canonical layout (Flax's through the pair's mapping).

    train=True: both in training mode; with dropout, Flax draws its mask from `dropout_rng`
    (default key(0)) and torch gets the same mask injected. `torch_dropout_scale` plants a bug
    (torch's survivors scaled by it instead of 1/(1-p)).
    """
    rng = jax.random.key(0) if dropout_rng is None else dropout_rng
    mask = flax_dropout_mask(pair.flax_model, pair.flax_params, batch.flax_x, rng) if train and has_dropout(pair) else None
    (loss, _), grads = flax_loss_and_gradients(pair.flax_model.apply, pair.flax_params, batch.flax_batch, rng, train=train)

    module = pair.torch_model
    module.train(train)
    try:
        with inject_torch_dropout_mask(module, mask, torch_dropout_scale):
            torch_loss, _ = torch_train.loss_and_gradients(module, batch.torch_x, batch.torch_y)
    finally:
        module.eval()
    torch_grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    return GradResult(float(loss), torch_loss.item(), pair.mapping.flax_to_canonical(grads), torch_grads)
