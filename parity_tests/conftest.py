"""Parity-suite configuration: full float32 in both frameworks, real data, shared measurements.

Importing `harness` pins the precision (jax_default_matmul_precision="highest", no TF32 in torch),
single-threaded torch and the XLA compilation cache; see harness.configure and README.md.
"""

from __future__ import annotations

import pytest

from cnn_parity.errors import CnnParityError
from parity_tests import harness


def pytest_configure(config):
    harness.configure()  # again, in case something imported before us changed a setting
    harness.set_data_dir(harness.default_data_dir())


@pytest.fixture(scope="session", autouse=True)
def _real_data():
    """Every parity test uses real MNIST / Fashion-MNIST; say clearly where they were looked for."""
    for dataset in ("mnist", "fashion_mnist"):
        try:
            harness.real_images(harness.load_recipe("mlp" if dataset == "mnist" else "fashion_cnn"), 1)
        except CnnParityError as e:  # DataError, with every place looked in its message
            pytest.fail(f"parity tests need real {dataset}: {e}")


@pytest.fixture(scope="session")
def measurements():
    """Per-model measurements computed once per session and shared by several tests."""
    return harness.Measurements()
