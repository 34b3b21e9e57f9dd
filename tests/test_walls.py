"""The import walls: the neutral package imports neither framework nor the studies (nor their libraries); the two
sides never import each other."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import importlib, pkgutil, sys
for package in {packages}:
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__, package + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
leaked = sorted(name for name in {forbidden} if name in sys.modules)
assert not leaked, f"{packages} imported {{leaked}}"
"""


@pytest.mark.parametrize("packages, forbidden", [
    (["cnn_parity"], ["jax", "flax", "optax", "torch", "torchvision", "parity_studies", "scipy", "matplotlib"]),
    (["cnn_parity", "flax_impl"], ["torch", "torchvision", "torch_ref"]),
    (["cnn_parity", "torch_ref"], ["jax", "flax", "optax", "flax_impl"]),
])
def test_import_walls(packages, forbidden):
    code = CHECK.format(packages=packages, forbidden=forbidden)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]
