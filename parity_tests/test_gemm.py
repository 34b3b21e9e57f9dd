"""conv_impl="gemm" against PyTorch: tests 2 (forward), 3 (gradients), 4b (one training step) and 5
(the float32 trajectory, cnn_base and cnn_2layer) of the Linen models convolving as im2col + GEMM, the
CPU path wherever the default's oneDNN extension cannot be built (flax_impl/models.py), at the bounds
the default convolutions meet (bounds.py; each test body is the default one's). Where oneDNN is
unavailable the default *is* gemm and these repeat it; the models without a convolution (mlp) compute
what the default does. The float64 trajectory of the default already runs gemm's convolutions (oneDNN
computes float32 only).
"""

from __future__ import annotations

import pytest

from cnn_parity.recipes import MODELS
from parity_tests import test_forward, test_gradients, test_training
from parity_tests.measurements import Measurements
from parity_tests.outputs import forward_cases

CONV_MODELS = [m for m in MODELS if m != "mlp"]
TRAJECTORY_MODELS = ["cnn_base", "cnn_2layer"]


@pytest.fixture(scope="module")
def gemm():
    return Measurements("linen", "gemm")


@pytest.mark.parametrize("direction,kind,n", forward_cases())
@pytest.mark.parametrize("model", CONV_MODELS)
def test_forward_parity(model, direction, kind, n, gemm):
    test_forward.test_forward_parity(model, direction, kind, n, gemm)


@pytest.mark.parametrize("model,kind,train", [case for case in test_gradients.CASES if case[0] in CONV_MODELS])
def test_gradient_parity(model, kind, train, gemm):
    test_gradients.test_gradient_parity(model, kind, train, gemm)


@pytest.mark.parametrize("model", TRAJECTORY_MODELS)
def test_one_training_step(model, gemm):
    test_training.test_one_training_step(model, gemm)


@pytest.mark.parametrize("model", TRAJECTORY_MODELS)
def test_trajectory_float32(model, gemm):
    test_training.test_trajectory_float32(model, gemm)
