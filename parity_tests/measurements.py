"""Every per-model measurement, computed once and shared: by the tests (the session fixture
`measurements`, conftest.py) and by the report. Numbers only; the verdicts are bounds.py's."""

from __future__ import annotations

from typing import Any, Callable

from cnn_parity.recipes import load_recipe
from flax_impl import models as flax_models
from parity_tests.batches import batch_from_uint8, make_batch, train_batches
from parity_tests.gradients import GRAD_BATCH, GradResult, measure_grads
from parity_tests.kernel_control import torch_kernel_control
from parity_tests.outputs import forward_batch, measure_forward
from parity_tests.pairs import ModelPair, make_pair
from parity_tests.trajectory import FLOAT64_BATCH, TRAJECTORY_BATCH, TRAJECTORY_STEPS, Trajectory, UInt8Batches, run_training
from parity_tests.updates import OPTIMIZER_STEPS, first_update_excess, same_gradient_updates
from torch_ref import models as torch_models


class Measurements:
    """Per-model measurements of the five product model pairs, the Flax side in API `api` ("linen" or
    "nnx"), convolving per `conv_impl` (flax_impl/kernels.py; None: as the trainer's default), each computed on first
    request."""

    def __init__(self, api: str = "linen", conv_impl: str | None = None):
        self.api, self.conv_impl = api, conv_impl
        self._cache: dict[tuple, Any] = {}

    def _get(self, key: tuple, compute: Callable[[], Any]):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def pair(self, name: str, direction: str = "torch_to_flax") -> ModelPair:
        """The model pair, initialised by one side (seed 0), the other side converted."""
        return self._get(("pair", name, direction), lambda: make_pair(name, direction, api=self.api,
                                                                        conv_impl=self.conv_impl))

    def forward(self, name: str, direction: str, kind: str, n: int) -> float:
        """max |Δ| of the eval-mode outputs on `n` inputs of `kind` (outputs.forward_cases)."""
        return self._get(("forward", name, direction, kind, n), lambda: measure_forward(
            self.pair(name, direction), forward_batch(load_recipe(name), kind, n)))

    def grads(self, name: str, kind: str = "real", train: bool = False) -> GradResult:
        """Both sides' gradients on GRAD_BATCH inputs of `kind` (gradients.grad_cases)."""
        return self._get(("grads", name, kind, train), lambda: measure_grads(
            self.pair(name), make_batch(load_recipe(name), kind, GRAD_BATCH, seed=7, start=1000), train=train))

    def batches(self, name: str, batch_size: int = TRAJECTORY_BATCH) -> UInt8Batches:
        """The trajectory's batch order: TRAJECTORY_STEPS consecutive batches of real training data."""
        return self._get(("batches", name, batch_size),
                         lambda: train_batches(load_recipe(name), TRAJECTORY_STEPS, batch_size))

    def trajectory(self, name: str, dtype: str = "float32") -> Trajectory:
        """Both frameworks trained side by side (trajectory.run_training); float64 on FLOAT64_BATCH."""
        batch_size = FLOAT64_BATCH if dtype == "float64" else TRAJECTORY_BATCH
        return self._get(("trajectory", name, dtype),
                         lambda: run_training(self.pair(name), self.batches(name, batch_size), dtype=dtype))

    def same_gradient_updates(self, name: str) -> list[float]:
        """max |Δθ| after each of OPTIMIZER_STEPS optimiser updates fed the same gradients."""
        return self._get(("updates", name),
                         lambda: same_gradient_updates(self.pair(name), self.batches(name)[:OPTIMIZER_STEPS]))

    def first_update_excess(self, name: str) -> float:
        """The first training step's weight difference beyond what its gradients' rounding explains."""
        return self._get(("excess", name), lambda: first_update_excess(
            self.pair(name), self.trajectory(name), batch_from_uint8(load_recipe(name), *self.batches(name)[0])))

    def control(self, name: str) -> Trajectory:
        """Torch against itself with channels_last kernels, on the float32 trajectory's batches."""
        return self._get(("control", name), lambda: torch_kernel_control(self.pair(name), self.batches(name)))

    def num_params(self, name: str) -> tuple[int, int]:
        """(Flax, torch) parameter counts."""
        pair = self.pair(name)
        return flax_models.num_params(pair.flax_params), torch_models.num_params(pair.torch_model)
