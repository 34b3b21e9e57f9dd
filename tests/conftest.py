"""Fixtures for the project's own (single-framework and neutral) tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real MNIST: $CNN_PARITY_DATA_DIR, else ../shared/data beside the checkout."""
    return Path(os.environ.get("CNN_PARITY_DATA_DIR") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "mnist").is_dir():
        pytest.fail(f"real MNIST not found in {path}; set CNN_PARITY_DATA_DIR (see README: Data)")
    return path


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No data set reachable except what a test puts there: empty cache, no env dir, no downloads."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNN_PARITY_DATA_DIR", raising=False)
    monkeypatch.delenv("CNN_PARITY_MIRROR", raising=False)
    monkeypatch.setenv("CNN_PARITY_OFFLINE", "1")
    return tmp_path
