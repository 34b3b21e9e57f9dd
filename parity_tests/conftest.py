"""Parity-suite configuration: full float32 in both frameworks, real data, shared measurements.

`pytest_configure` pins the precision (jax_default_matmul_precision="highest", no TF32 in torch),
single-threaded torch and the XLA compilation cache (precision.configure, see docs/parity.md) before any
test module is imported, and points the suite at the real data sets.
"""

from __future__ import annotations

import pytest

from cnn_parity.errors import CnnParityError
from cnn_parity.recipes import load_recipe
from parity_tests import batches, precision
from parity_tests.measurements import Measurements
from parity_tests.pairs import APIS


def pytest_configure(config):
    precision.configure()
    batches.set_data_dir(batches.default_data_dir())


@pytest.fixture(scope="session", autouse=True)
def _real_data():
    """Every parity test uses real MNIST / Fashion-MNIST; say clearly where they were looked for."""
    for dataset, model in (("mnist", "mlp"), ("fashion_mnist", "fashion_cnn")):
        try:
            batches.real_images(load_recipe(model), 1)
        except CnnParityError as e:  # DataError, with every place looked in its message
            pytest.fail(f"parity tests need real {dataset}: {e}")


@pytest.fixture(scope="session", params=APIS)
def measurements(request):
    """Per-model measurements computed once per session and shared by several tests; every test that
    takes them runs for each Flax API (Linen and NNX models) against PyTorch."""
    return Measurements(request.param)
