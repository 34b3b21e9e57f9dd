"""conv_impl="onednn" against PyTorch: tests 2 (forward), 3 (gradients), 4b (one training step) and 5
(the float32 trajectory, cnn_base and cnn_2layer) of the Linen models convolving through oneDNN, at
the bounds the default convolutions meet (bounds.py; each test body is the default one's). oneDNN
computes float32 only, so the float64 trajectory does not apply; the models without a convolution
(mlp) compute what the default does. Skipped, with the reason, where the extension cannot be built;
CI installs libdnnl-dev and checks that it builds, so they run there.
"""

from __future__ import annotations

import pytest

from cnn_parity.recipes import MODELS
from flax_impl import onednn_conv
from parity_tests import test_forward, test_gradients, test_training
from parity_tests.measurements import Measurements
from parity_tests.outputs import forward_cases

_AVAILABLE, _REASON = onednn_conv.available()
pytestmark = pytest.mark.skipif(not _AVAILABLE, reason=f"conv_impl onednn: {_REASON}")

CONV_MODELS = [m for m in MODELS if m != "mlp"]
TRAJECTORY_MODELS = ["cnn_base", "cnn_2layer"]


@pytest.fixture(scope="module")
def onednn():
    return Measurements("linen", "onednn")


@pytest.mark.parametrize("direction,kind,n", forward_cases())
@pytest.mark.parametrize("model", CONV_MODELS)
def test_forward_parity(model, direction, kind, n, onednn):
    test_forward.test_forward_parity(model, direction, kind, n, onednn)


@pytest.mark.parametrize("model,kind,train", [case for case in test_gradients.CASES if case[0] in CONV_MODELS])
def test_gradient_parity(model, kind, train, onednn):
    test_gradients.test_gradient_parity(model, kind, train, onednn)


@pytest.mark.parametrize("model", TRAJECTORY_MODELS)
def test_one_training_step(model, onednn):
    test_training.test_one_training_step(model, onednn)


@pytest.mark.parametrize("model", TRAJECTORY_MODELS)
def test_trajectory_float32(model, onednn):
    test_training.test_trajectory_float32(model, onednn)
