"""The code on the documentation pages runs: docs/checkpoints.md's two snippets that load an export
with nothing but PyTorch or Flax (each fenced block follows a `<!-- snippet: NAME -->` line) are run,
as a user would run them, beside a fresh export, and print the test accuracy the training run did."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "checkpoints.md"
pytestmark = pytest.mark.slow  # trains a run through the CLI, then exports it

SNIPPETS = {"load-export-pytorch": "PyTorch", "load-export-flax": "Flax"}


def snippet(page: Path, name: str) -> str:
    """The fenced code block right after the line `<!-- snippet: name -->`."""
    match = re.search(rf"^<!-- snippet: {re.escape(name)} -->\n```[a-z]*\n(.*?)^```$", page.read_text(),
                      re.MULTILINE | re.DOTALL)
    assert match, f"{page.relative_to(REPO)} has no block marked <!-- snippet: {name} -->"
    return match.group(1)


def run(argv: list[str], cwd: Path, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CNN_PARITY_DATA_DIR": str(data_dir)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def export(data_dir, tmp_path_factory):
    """A 5-step Flax mlp run and its export, as `model.safetensors` in the folder the snippets run in;
    returns that folder and the run's summary."""
    folder = tmp_path_factory.mktemp("export")
    workdir = folder / "run"
    trained = run([sys.executable, "-m", "flax_impl.train", "--model", "mlp", "--max-steps", "5",
                   "--workdir", str(workdir)], folder, data_dir)
    assert trained.returncode == 0, trained.stderr
    exported = run([sys.executable, "-m", "cnn_parity.export", "--checkpoint", str(workdir),
                    "--out", "model.safetensors"], folder, data_dir)
    assert exported.returncode == 0, exported.stderr
    return folder, json.loads((workdir / "summary.json").read_text())


@pytest.mark.parametrize("name", SNIPPETS)
def test_loading_an_export_in_a_plain_framework_runs_and_scores_as_training_did(name, export, data_dir):
    folder, summary = export
    result = run([sys.executable, "-c", snippet(PAGE, name)], folder, data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"{SNIPPETS[name]}: mlp trained with flax for 5 steps, "
                                     f"test accuracy {summary['test_accuracy']:.2%}")
