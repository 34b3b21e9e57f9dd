"""TensorBoard event files: both CLIs write the same tags (lifecycle.TENSORBOARD_SCALARS and "recipe"),
holding exactly metrics.jsonl's values and the recipe, and a resumed run neither repeats nor loses a
point. Read back with TensorBoard's own reader (lifecycle.assert_events_mirror_metrics; the resumed and
randomly killed runs of test_run_lifecycle and test_random_kills check it too)."""

from __future__ import annotations

import shutil

import pytest

from cnn_parity import checkpoints
from cnn_parity.workdir import read_metrics

from .lifecycle import SHORT, assert_events_mirror_metrics, litter, tensorboard_events, train
from .test_cli import FRAMEWORKS


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_events_mirror_the_metrics_through_a_resume(framework, data_dir, tmp_path):
    workdir = tmp_path / "run"
    # 30-step epochs: epoch 2 is cut short at step 45 and logged; then the run loses its newest checkpoint
    # (as if killed after logging, before checkpointing) and resumes from step 30 to step 75.
    first = train(framework, workdir, *SHORT, "--max-steps", "45", "--checkpoint-every", "15", data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    assert [step for step, _ in tensorboard_events(workdir)["test/loss"]] == [1, 2]
    shutil.rmtree(checkpoints.latest(workdir))
    resumed = train(framework, workdir, *SHORT, "--max-steps", "75", "--resume", data_dir=data_dir)
    assert resumed.returncode == 0, resumed.stderr

    assert [(r["epoch"], r["steps"]) for r in read_metrics(workdir)] == [(1, 30), (2, 60), (3, 75)]
    assert_events_mirror_metrics(workdir)
    assert not litter(workdir)


def test_no_tensorboard_writes_no_events(data_dir, tmp_path):
    workdir = tmp_path / "run"
    result = train("torch", workdir, *SHORT, "--max-steps", "5", "--no-tensorboard", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "metrics.jsonl").is_file() and not list(workdir.glob("*tfevents*"))
