"""Runs killed (SIGKILL) at random moments — mid-epoch, while a checkpoint is written, while an epoch
is evaluated, at and just after epoch boundaries — and resumed until they finish, end bitwise where
an uninterrupted run ends: the same epoch records, final weights and final step. So do runs stopped
by SIGTERM at random moments, without --checkpoint-every, and resumed by `--resume --workdir W` alone."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnn_parity import checkpoints

from .lifecycle import assert_same_run, start, train
from .test_cli import FRAMEWORKS, REPO

pytestmark = pytest.mark.slow  # every test trains, kills and resumes runs many times

# Batch 500: 120-step epochs; evaluation in batches of 20 (500 of them) leaves time to be killed in.
MLP_RUN = ("--model", "mlp", "--epochs", "2", "--set", "batch_size=500", "--set", "eval_batch_size=20")
# fashion_cnn adds dropout, whose RNG state a resume must restore.
FASHION_RUN = ("--model", "fashion_cnn", "--epochs", "2", "--set", "batch_size=500", "--set", "eval_batch_size=20")
STEPS_PER_EPOCH = 120


def _checkpoint_steps(every: int, epochs: int) -> list[int]:
    last = epochs * STEPS_PER_EPOCH
    return sorted(set(range(every, last + 1, every)) | set(range(STEPS_PER_EPOCH, last + 1, STEPS_PER_EPOCH)))


def _kill_when(proc, workdir: Path, moment: tuple) -> bool:
    """Wait for `moment` and SIGKILL the run then; False if it finished first."""
    kind, value = moment
    folder = checkpoints.root(workdir)
    started = time.monotonic()
    while proc.poll() is None:
        if kind == "checkpoint":  # at step `value`: mid-epoch, or an epoch's end (before or after its evaluation)
            due = (folder / f"step_{value:09d}").exists()
        elif kind == "writing":  # while any checkpoint is being assembled
            due = folder.is_dir() and any(p.name.startswith(".tmp-") for p in folder.iterdir())
        else:  # "delay": `value` seconds after the run's first checkpoint
            due = checkpoints.latest(workdir) is not None and time.monotonic() - started > value
            started = started if checkpoints.latest(workdir) is not None else time.monotonic()
        if due:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            return True
        time.sleep(0.002)
    assert proc.returncode == 0, proc.communicate()[1]
    return False


def _kill_plan(rng: random.Random, every: int, epochs: int, kills: int) -> list[tuple]:
    """One kill at the first epoch's end, the others at random moments of random kinds."""
    plan = [("checkpoint", STEPS_PER_EPOCH)]
    for _ in range(kills - 1):
        kind = rng.choice(["checkpoint", "writing", "delay"])
        value = {"checkpoint": lambda: rng.choice(_checkpoint_steps(every, epochs)), "writing": lambda: None,
                 "delay": lambda: rng.uniform(0, 1.5)}[kind]()
        plan.insert(rng.randrange(len(plan) + 1), (kind, value))
    return plan


def _killed_and_resumed(framework, run, every, kills, seed, workdir, data_dir) -> list[tuple]:
    """Train `run` in `workdir`, killing it per a random plan and resuming until it finishes; returns
    the kills that happened."""
    epochs = int(run[run.index("--epochs") + 1])
    flags = (*run, "--checkpoint-every", str(every))
    happened, resume = [], ()
    for moment in _kill_plan(random.Random(seed), every, epochs, kills):
        if moment[0] == "checkpoint" and checkpoints.latest(workdir) is not None and \
                int(checkpoints.latest(workdir).name.removeprefix("step_")) >= moment[1]:
            continue  # already past that step
        proc = start(framework, workdir, *flags, *resume, data_dir=data_dir)
        resume = ("--resume",)
        if not _kill_when(proc, workdir, moment):
            return happened
        happened.append(moment)
    result = train(framework, workdir, *flags, *resume, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    return happened


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, data_dir):
    cache = {}

    def get(framework: str, run: tuple) -> Path:
        if (framework, run) not in cache:
            workdir = tmp_path_factory.mktemp("reference") / framework
            result = train(framework, workdir, *run, data_dir=data_dir)
            assert result.returncode == 0, result.stderr
            cache[framework, run] = workdir
        return cache[framework, run]

    return get


# 40 divides the 120-step epoch (its end checkpoint is written before the evaluation); 50 does not
# (the epoch's end is checkpointed after its evaluation).
@pytest.mark.parametrize("every", [40, 50])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_random_kills_resume_to_the_uninterrupted_run(framework, every, reference_runs, data_dir, tmp_path):
    workdir = tmp_path / "killed"
    happened = _killed_and_resumed(framework, MLP_RUN, every, 3, f"{framework}-{every}", workdir, data_dir)
    print(f"{framework} every {every}: kills {happened}")
    assert happened, "no kill landed"
    assert_same_run(workdir, reference_runs(framework, MLP_RUN))


@pytest.mark.parametrize("trial", range(2))
@pytest.mark.parametrize("every", [40, 50])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_many_random_kills_with_dropout(framework, every, trial, reference_runs, data_dir, tmp_path):
    workdir = tmp_path / "killed"
    happened = _killed_and_resumed(framework, FASHION_RUN, every, 6, f"{framework}-{every}-{trial}", workdir, data_dir)
    print(f"{framework} every {every} trial {trial}: kills {happened}")
    assert_same_run(workdir, reference_runs(framework, FASHION_RUN))


def _started(framework: str, workdir: Path, *flags: str, data_dir: Path) -> subprocess.Popen:
    """A run whose first line is printed: its stop handler is in place (it is installed before that line)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CNN_PARITY_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen([sys.executable, "-m", FRAMEWORKS[framework], *flags, "--workdir", str(workdir)],
                            cwd=workdir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline(), proc.communicate()[1]
    return proc


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sigterm_at_random_moments_resumes_to_the_uninterrupted_run(framework, reference_runs, data_dir, tmp_path):
    workdir, rng = tmp_path / "stopped", random.Random(f"sigterm-{framework}")
    proc, stops = _started(framework, workdir, *FASHION_RUN, data_dir=data_dir), 0
    while stops < 4:
        time.sleep(rng.uniform(0, 3.0))
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
        if proc.returncode == 0:  # it finished before the signal landed
            break
        assert proc.returncode == 128 + signal.SIGTERM, stderr
        assert stderr.replace("\r", "\n").strip().splitlines()[-1].endswith(f"--resume --workdir {workdir}")
        stops += 1
        proc = _started(framework, workdir, "--resume", data_dir=data_dir)
    assert proc.wait(timeout=600) == 0, proc.communicate()[1]
    print(f"{framework}: {stops} SIGTERMs")
    assert stops >= 2
    assert_same_run(workdir, reference_runs(framework, FASHION_RUN))
