"""Training runs launched through the training CLIs themselves (`python -m flax_impl.train`,
`python -m torch_ref.train`, as subprocesses: the same code a user runs), for the commands that
train many runs (reproduce, equivalence). Each run writes its own workdir, and its output goes to
`<workdir>.log`; an interrupted run resumes from its checkpoints when launched again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from cnn_parity.errors import RunError, UsageError
from cnn_parity.recipes import MODELS

FRAMEWORKS = {"flax": "flax_impl.train", "torch": "torch_ref.train"}
CHECKPOINT_EVERY = 2000


def check_models_and_seeds(models: Sequence[str], seeds: Sequence[int]) -> None:
    """A command's --models and --seeds: known models, distinct non-negative seeds."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r}; choose from: {', '.join(MODELS)}")
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError("seeds must be distinct and non-negative")


def run_complete(workdir: Path, epochs: int | None = None, steps: int | None = None) -> bool:
    """Whether the run in `workdir` finished: its summary shows `epochs` epochs, or `steps` steps."""
    summary = workdir / "summary.json"
    if not summary.is_file():
        return False
    done = json.loads(summary.read_text())
    return done["steps"] == steps if steps is not None else done["epochs"] == epochs


def train(workdir: Path, framework: str, model: str, seed: int, flags: Sequence[str] = (),
          data_dir: str | None = None, env: dict[str, str] | None = None) -> None:
    """Train `model` with `framework` and `seed` into `workdir` (resuming it if it exists), passing
    the extra CLI `flags`; raise RunError, naming the log, if the run fails."""
    command = [sys.executable, "-m", FRAMEWORKS[framework], "--model", model, "--seed", str(seed),
               "--workdir", str(workdir), "--checkpoint-every", str(CHECKPOINT_EVERY), *flags]
    if data_dir:
        command += ["--data-dir", data_dir]
    if workdir.exists():
        command.append("--resume")
    workdir.parent.mkdir(parents=True, exist_ok=True)
    log_path = workdir.parent / f"{workdir.name}.log"
    with open(log_path, "a") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        last = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RunError(f"{model} {framework} seed {seed} failed (exit {result.returncode}): {last[0]} [log: {log_path}]")
