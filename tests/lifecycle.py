"""Helpers for tests that train briefly through the CLIs, stop, damage or resume runs, and compare
the results with uninterrupted runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from cnn_parity import checkpoints
from cnn_parity.frameworks import command_module
from cnn_parity.tensorboard_log import RECIPE_EVENT_TAG, SCALAR_TAGS, STEP_SCALAR_TAGS
from cnn_parity.weights import load_safetensors
from cnn_parity.workdir import read_metrics

from .test_cli import FRAMEWORKS, REPO, run_cli

# mlp at batch 2,000: a 30-step epoch, so runs of a few epochs take seconds.
SHORT = ("--model", "mlp", "--set", "batch_size=2000")
_TIMINGS = ("train_time_s", "eval_time_s")


def train(framework: str, workdir: Path, *flags: str, data_dir: Path) -> subprocess.CompletedProcess:
    return run_cli(framework, *flags, "--workdir", str(workdir), cwd=workdir.parent,
                   env={"CNN_PARITY_DATA_DIR": str(data_dir)})


def start(framework: str, workdir: Path, *flags: str, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CNN_PARITY_DATA_DIR": str(data_dir)}
    return subprocess.Popen([sys.executable, "-m", FRAMEWORKS[framework], *flags, "--workdir", str(workdir)],
                            cwd=workdir.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def module_command(module: str, *args: str, cwd: Path, data_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if data_dir is not None:
        env["CNN_PARITY_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def evaluate(framework: str, path: Path, data_dir: Path) -> dict:
    module = command_module(framework, "evaluate")
    result = module_command(module, "--checkpoint", str(path), "--json", cwd=path.parent, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def step_records(workdir: Path) -> list[dict]:
    path = workdir / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def metrics(workdir: Path) -> list[dict]:
    """The epoch records without their timings (which differ between any two runs)."""
    return [{k: v for k, v in r.items() if k not in _TIMINGS} for r in read_metrics(workdir)]


def summary(workdir: Path) -> dict:
    return json.loads((workdir / "summary.json").read_text())


def final_weights(workdir: Path) -> dict:
    _, arrays, _ = load_safetensors(workdir / "model.safetensors")
    return arrays


def assert_same_run(workdir: Path, reference: Path) -> None:
    """Bitwise the same epoch and step records, final weights and final checkpoint step as `reference`."""
    assert metrics(workdir) == metrics(reference)
    assert step_records(workdir) == step_records(reference)
    got, expected = final_weights(workdir), final_weights(reference)
    assert got.keys() == expected.keys()
    for name in got:
        assert got[name].tobytes() == expected[name].tobytes(), name
    assert checkpoints.latest(workdir).name == checkpoints.latest(reference).name
    assert summary(workdir)["steps"] == summary(reference)["steps"]
    if list(reference.glob("*tfevents*")):
        assert_events_mirror_metrics(workdir)


def tensorboard_events(workdir: Path) -> dict[str, list[tuple[int, object]]]:
    """tag → [(step, value)] as TensorBoard loads them from the workdir (the events a resumed run
    trains again purged, as TensorBoard purges them)."""
    accumulator = EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {tag: [(event.step, tensor_util.make_ndarray(event.tensor_proto).item())
                  for event in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


def assert_events_mirror_metrics(workdir: Path) -> None:
    """The workdir's TensorBoard events, as TensorBoard shows them, hold its recipe and exactly its
    epoch and step records, once each, all on the global-step axis."""
    records, steps, events = read_metrics(workdir), step_records(workdir), tensorboard_events(workdir)
    assert set(events) == {RECIPE_EVENT_TAG, *(SCALAR_TAGS if records else ()), *(STEP_SCALAR_TAGS if steps else ())}
    for tag, key in SCALAR_TAGS.items() if records else ():  # float32: what TensorBoard stores a scalar as
        assert events[tag] == [(r["steps"], float(np.float32(r[key]))) for r in records], tag
    for tag, key in STEP_SCALAR_TAGS.items() if steps else ():
        assert events[tag] == [(r["step"], float(np.float32(r[key]))) for r in steps], tag
    recipes = events[RECIPE_EVENT_TAG]  # at step 0, and again at each resume's first step
    assert recipes[0][0] == 0 and [step for step, _ in recipes] == sorted(step for step, _ in recipes)
    assert json.loads(recipes[-1][1].decode()) == json.loads((workdir / "config.json").read_text())["recipe"]


def litter(workdir: Path) -> list[Path]:
    """Temporary files or folders a write left behind (every one of ours starts with a dot)."""
    return [p for p in workdir.rglob(".*") if p.name != ".lock"]
