"""The convolution tiers the default does not use on this backend, against PyTorch: tests 2 (forward),
3 (gradients), 4b (one training step) and 5 (the float32 trajectory, cnn_base and cnn_2layer) of the
Linen models, at the bounds the default meets (bounds.py; each test body is the default one's).

On a CPU the default is "jaxlib-onednn" (or, where its self-test fails, "canonical"), so this runs
the others: "gemm", "canonical" and the opt-in "onednn" (skipped, with the reason, where its
extension is not built: `python -m flax_impl.onednn_conv build`; CI builds it and requires it,
parity_tests/onednn.py); on an accelerator the default is "xla", so this runs "gemm" and
"canonical". The float64 trajectory convolves through XLA (canonical) or im2col (onednn) under
either oneDNN tier: oneDNN computes float32 only. mlp has no convolution: the default's tests cover it.
"""

from __future__ import annotations

import jax
import pytest

from cnn_parity.recipes import MODELS
from parity_tests import test_forward, test_gradients, test_training
from parity_tests.measurements import Measurements
from parity_tests.onednn import skip_unless_built
from parity_tests.outputs import forward_cases
from parity_tests.pairs import default_conv_impl

CONV_MODELS = [m for m in MODELS if m != "mlp"]
TRAJECTORY_MODELS = ["cnn_base", "cnn_2layer"]
TIERS_CHECKED = ("gemm", "canonical", "onednn") if jax.default_backend() == "cpu" else ("gemm", "canonical")
OTHER_CONV_IMPLS = [tier for tier in TIERS_CHECKED if tier != default_conv_impl("lenet")]


@pytest.fixture(scope="module", params=OTHER_CONV_IMPLS)
def other(request):
    if request.param == "onednn":
        skip_unless_built()
    return Measurements("linen", request.param)


@pytest.mark.parametrize("direction,kind,n", forward_cases())
@pytest.mark.parametrize("model", CONV_MODELS)
def test_forward_parity(model, direction, kind, n, other):
    test_forward.test_forward_parity(model, direction, kind, n, other)


@pytest.mark.parametrize("model,kind,train", [case for case in test_gradients.CASES if case[0] in CONV_MODELS])
def test_gradient_parity(model, kind, train, other):
    test_gradients.test_gradient_parity(model, kind, train, other)


@pytest.mark.parametrize("model", TRAJECTORY_MODELS)
def test_one_training_step(model, other):
    test_training.test_one_training_step(model, other)


@pytest.mark.parametrize("model", TRAJECTORY_MODELS)
def test_trajectory_float32(model, other):
    test_training.test_trajectory_float32(model, other)
