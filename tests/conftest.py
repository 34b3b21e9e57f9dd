"""Fixtures for the project's own (single-framework and neutral) tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnn_parity import data


def real_data_dir() -> Path:
    """Real MNIST: $CNN_PARITY_DATA_DIR, else the per-user cache a first training run downloads into."""
    return Path(os.environ.get("CNN_PARITY_DATA_DIR") or data.cache_dir())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = real_data_dir()
    if not (path / "mnist").is_dir():
        pytest.fail(f"real MNIST not found in {path}; set CNN_PARITY_DATA_DIR (see docs/data.md)")
    return path


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No data set reachable except what a test puts there: empty cache, no env dir, no downloads."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNN_PARITY_DATA_DIR", raising=False)
    monkeypatch.delenv("CNN_PARITY_MIRROR", raising=False)
    monkeypatch.setenv("CNN_PARITY_OFFLINE", "1")
    return tmp_path
