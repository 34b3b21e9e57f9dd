"""TensorBoard event files and step records: both CLIs write the same tags (tensorboard_log.SCALAR_TAGS,
STEP_SCALAR_TAGS and RECIPE_TAG), every scalar on the global-step axis, holding exactly metrics.jsonl's
and steps.jsonl's values and the recipe, and a resumed run neither repeats nor loses a point as
TensorBoard's own reader shows them (lifecycle.assert_events_mirror_metrics; the resumed and randomly
killed runs of test_run_lifecycle and test_random_kills check it too)."""

from __future__ import annotations

import shutil

import pytest

from cnn_parity import checkpoints
from cnn_parity.tensorboard_log import RECIPE_EVENT_TAG, RECIPE_TAG, SCALAR_TAGS, STEP_SCALAR_TAGS
from cnn_parity.workdir import read_metrics

from .lifecycle import SHORT, assert_events_mirror_metrics, litter, step_records, tensorboard_events, train
from .test_cli import FRAMEWORKS, REPO


def trained(framework: str, tmp_path, *flags: str, data_dir):
    """The workdir of a short run with `flags`, which must succeed."""
    workdir = tmp_path / "run"
    result = train(framework, workdir, *SHORT, *flags, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_events_mirror_the_metrics_through_a_resume(framework, data_dir, tmp_path):
    workdir = tmp_path / "run"
    # 30-step epochs: the run stops at step 45, inside epoch 2 (no record for it), then loses its newest
    # checkpoints (as if killed after logging, before checkpointing) and resumes from step 30 to step 90.
    first = train(framework, workdir, *SHORT, "--epochs", "3", "--max-steps", "45", "--checkpoint-every", "15",
                  "--log-every", "10", data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    assert [step for step, _ in tensorboard_events(workdir)["test/loss"]] == [30]
    shutil.rmtree(checkpoints.latest(workdir))
    resumed = train(framework, workdir, "--max-steps", "90", "--resume", data_dir=data_dir)
    assert resumed.returncode == 0, resumed.stderr

    assert [(r["epoch"], r["steps"]) for r in read_metrics(workdir)] == [(1, 30), (2, 60), (3, 90)]
    # --log-every 10 was recorded and kept; the records past step 30 were dropped and logged again.
    assert [(r["step"], r["epoch"]) for r in step_records(workdir)] == [
        (10, 1), (20, 1), (30, 1), (40, 2), (50, 2), (60, 2), (70, 3), (80, 3), (90, 3)]
    assert_events_mirror_metrics(workdir)
    assert not litter(workdir)


def test_no_tensorboard_writes_no_events(data_dir, tmp_path):
    workdir = trained("torch", tmp_path, "--max-steps", "5", "--no-tensorboard", data_dir=data_dir)
    assert (workdir / "summary.json").is_file() and not list(workdir.glob("*tfevents*"))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_step_records_hold_every_nth_steps_loss_and_the_learning_rate(framework, data_dir, tmp_path):
    workdir = trained(framework, tmp_path, "--max-steps", "35", "--log-every", "5", "--set", "optimizer.lr=0.05",
                      data_dir=data_dir)
    steps = step_records(workdir)
    assert [(r["step"], r["epoch"], r["learning_rate"]) for r in steps] == [
        (step, 1 if step <= 30 else 2, 0.05) for step in range(5, 36, 5)]
    assert all(0 < r["loss"] < 10 for r in steps)
    assert_events_mirror_metrics(workdir)


def test_log_every_zero_writes_no_step_records(data_dir, tmp_path):
    workdir = trained("flax", tmp_path, "--max-steps", "5", "--log-every", "0", data_dir=data_dir)
    assert not (workdir / "steps.jsonl").exists()
    assert "train/step_loss" not in tensorboard_events(workdir)


def test_the_classic_reader_lists_every_scalar(data_dir, tmp_path):
    """`EventAccumulator(...).Tags()["scalars"]` (the reader most scripts use) sees the scalars: they are
    written as classic simple_value summaries, not as tensors only the plugin reader lists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir = trained("torch", tmp_path, "--max-steps", "30", "--log-every", "5", data_dir=data_dir)
    accumulator = EventAccumulator(str(workdir))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == sorted(
        ["train/loss", "train/accuracy", "test/loss", "test/accuracy", "train/step_loss", "train/learning_rate"])
    assert [(e.step, e.value) for e in accumulator.Scalars("test/accuracy")] == [
        (30, pytest.approx(read_metrics(workdir)[0]["test_accuracy"], rel=1e-7))]


def test_the_logging_page_names_every_tag_written():
    page = (REPO / "docs" / "logging.md").read_text()
    for tag in (*SCALAR_TAGS, *STEP_SCALAR_TAGS, RECIPE_TAG, RECIPE_EVENT_TAG):
        assert f"`{tag}`" in page, tag
