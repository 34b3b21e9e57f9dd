"""A run's life through the CLIs: the model it keeps, resuming a finished or cut-short run, a run
killed while evaluating, who may write a workdir, damaged checkpoints and records."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cnn_parity import checkpoints
from cnn_parity.weights import load_safetensors
from cnn_parity.workdir import Workdir

from .lifecycle import SHORT, assert_same_run, evaluate, litter, metrics, module_command, start, summary, train
from .test_cli import FRAMEWORKS, REPO, assert_one_line_error

pytestmark = pytest.mark.slow  # every test trains and resumes runs through the CLIs

OTHER = {"flax": "torch", "torch": "flax"}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_plain_run_keeps_its_model_for_either_framework(framework, data_dir, tmp_path):
    workdir = tmp_path / "plain"
    result = train(framework, workdir, "--model", "lenet", "--lr", "0.05", "--max-steps", "100", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert checkpoints.latest(workdir).name == "step_000000100"
    trained = summary(workdir)
    other = OTHER[framework]
    report = evaluate(other, workdir, data_dir)
    assert (report["trained_with"], report["step"]) == (framework, "100")
    assert report["test_accuracy"] == trained["test_accuracy"] > 0.5  # trained, so agreement is not trivial
    exported = tmp_path / "lenet.safetensors"
    result = module_command("cnn_parity.export", "--checkpoint", str(workdir), "--out", str(exported), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (_, exported_arrays, exported_meta), (_, final_arrays, final_meta) = \
        (load_safetensors(path) for path in (exported, workdir / "model.safetensors"))
    assert exported_meta == final_meta
    assert all(exported_arrays[name].tobytes() == final_arrays[name].tobytes() for name in final_arrays)
    # The other framework starts from those weights: an (almost) zero step later, the same accuracy.
    result = train(other, tmp_path / "continued", "--model", "lenet", "--max-steps", "1", "--set",
                   "optimizer.lr=1e-9", "--init-weights", str(workdir), data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert summary(tmp_path / "continued")["test_accuracy"] == pytest.approx(trained["test_accuracy"], abs=2e-4)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_finished_run_resumes_and_continues_exactly(framework, data_dir, tmp_path):
    reference, workdir = tmp_path / "reference", tmp_path / "run"
    assert train(framework, reference, *SHORT, "--epochs", "2", data_dir=data_dir).returncode == 0
    cut = (*SHORT, "--epochs", "2", "--max-steps", "20", "--checkpoint-every", "10")
    assert train(framework, workdir, *cut, data_dir=data_dir).returncode == 0
    records, finished = metrics(workdir), summary(workdir)

    result = train(framework, workdir, *cut, "--resume", data_dir=data_dir)  # nothing left to do
    assert result.returncode == 0, result.stderr
    assert metrics(workdir) == records
    assert {k: summary(workdir)[k] for k in ("steps", "test_accuracy", "test_loss")} == \
        {k: finished[k] for k in ("steps", "test_accuracy", "test_loss")}

    result = train(framework, workdir, *SHORT, "--epochs", "2", "--max-steps", "10", "--resume", data_dir=data_dir)
    assert_one_line_error(result, 2, "already at step 20", "--max-steps")
    assert metrics(workdir) == records

    # Killed after its final checkpoint, before its model and summary were written.
    (workdir / "summary.json").unlink()
    (workdir / "model.safetensors").unlink()
    assert train(framework, workdir, *cut, "--resume", data_dir=data_dir).returncode == 0
    assert summary(workdir)["test_accuracy"] == finished["test_accuracy"]

    # Continued: to the end of epoch 1 (the cut epoch goes on), then one more epoch.
    assert train(framework, workdir, *SHORT, "--epochs", "1", "--resume", data_dir=data_dir).returncode == 0
    result = train(framework, workdir, *SHORT, "--epochs", "2", "--resume", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert_same_run(workdir, reference)
    assert json.loads((workdir / "config.json").read_text())["recipe"]["epochs"] == 2


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_kill_during_evaluation_keeps_that_epochs_record(framework, data_dir, tmp_path):
    flags = (*SHORT, "--epochs", "2", "--checkpoint-every", "30", "--set", "eval_batch_size=1")
    reference, workdir = tmp_path / "reference", tmp_path / "killed"
    assert train(framework, reference, *flags, data_dir=data_dir).returncode == 0
    proc = start(framework, workdir, *flags, data_dir=data_dir)
    epoch_end = checkpoints.root(workdir) / "step_000000030"
    while not epoch_end.exists():  # written before the epoch's evaluation (10,000 batches of one)
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (workdir / "metrics.jsonl").exists(), "the kill came after the evaluation"
    result = train(framework, workdir, *flags, "--resume", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert [r["epoch"] for r in metrics(workdir)] == [1, 2]
    assert_same_run(workdir, reference)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_workdir_belongs_to_one_run(framework, data_dir, tmp_path):
    busy = Workdir(tmp_path / "busy")
    busy.create()  # this test process holds its lock, as a running training process would
    result = train(framework, busy.path, *SHORT, "--max-steps", "1", data_dir=data_dir)
    assert_one_line_error(result, 2, "is in use by a running training process", f"pid {__import__('os').getpid()}")
    result = train(framework, busy.path, *SHORT, "--max-steps", "1", "--resume", data_dir=data_dir)
    assert_one_line_error(result, 2, "is in use")

    killed = tmp_path / "killed"  # a killed run's workdir: its config and checkpoints stay its own
    assert train(OTHER[framework], killed, *SHORT, "--max-steps", "10", data_dir=data_dir).returncode == 0
    (killed / "summary.json").unlink()
    config = (killed / "config.json").read_text()
    result = train(framework, killed, "--model", "lenet", "--max-steps", "1", data_dir=data_dir)
    assert_one_line_error(result, 2, "already holds a run", "--resume", "another --workdir")
    assert (killed / "config.json").read_text() == config
    assert checkpoints.latest(killed).name == "step_000000010"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resume_where_nothing_was_checkpointed(framework, data_dir, tmp_path):
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        result = train(framework, folder, *SHORT, "--max-steps", "5", "--resume", data_dir=data_dir)
        assert result.returncode == 0, result.stderr
        config = json.loads((folder / "config.json").read_text())
        assert (config["framework"], config["recipe"]) == (framework, summary(folder)["recipe"])
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(tmp_path / "missing" / "config.json", config_only / "config.json")
    result = train(framework, config_only, "--model", "lenet", "--max-steps", "5", "--resume", data_dir=data_dir)
    assert_one_line_error(result, 2, "holds a mlp run, not a lenet one")
    assert (config_only / "config.json").read_bytes() == (tmp_path / "missing" / "config.json").read_bytes()
    assert not (config_only / "summary.json").exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resume_falls_back_past_damage(framework, data_dir, tmp_path):
    flags = (*SHORT, "--epochs", "2", "--max-steps", "40", "--checkpoint-every", "10")
    intact = tmp_path / "intact"
    assert train(framework, intact, *flags, data_dir=data_dir).returncode == 0
    state_file = {"flax": "state.msgpack", "torch": "state.pt"}[framework]
    damages = {
        "state file missing": lambda w: (checkpoints.latest(w) / state_file).unlink(),
        "state file truncated": lambda w: (checkpoints.latest(w) / state_file).write_bytes(b"\x93"),
    }
    if framework == "torch":  # the rest is framework-neutral code: once is enough
        damages["meta.json corrupt"] = lambda w: (checkpoints.latest(w) / "meta.json").write_text('{"epoch": 1, "st')
    for damage, apply in damages.items():
        workdir = tmp_path / damage.replace(" ", "-")
        shutil.copytree(intact, workdir)
        apply(workdir)
        result = train(framework, workdir, *flags, "--resume", data_dir=data_dir)
        assert result.returncode == 0, (damage, result.stderr)
        assert "skipping damaged checkpoint" in result.stderr and "resuming from" in result.stderr, damage
        assert "step_000000030" in result.stderr.split("resuming from")[1], damage
        assert_same_run(workdir, intact)

    if framework != "torch":
        return
    workdir = tmp_path / "truncated-record"
    shutil.copytree(intact, workdir)
    text = (workdir / "metrics.jsonl").read_text()
    (workdir / "metrics.jsonl").write_text(text[: len(text) // 2])  # killed mid-append
    assert train(framework, workdir, *flags, "--resume", data_dir=data_dir).returncode == 0
    assert_same_run(workdir, intact)

    workdir = tmp_path / "all-damaged"
    shutil.copytree(intact, workdir)
    for checkpoint in checkpoints.complete(workdir):
        (checkpoint / "meta.json").write_text("not json")
    result = train(framework, workdir, *flags, "--resume", data_dir=data_dir)
    assert_one_line_error(result, 2, "holds no usable checkpoint", "meta.json is unreadable")
    assert not litter(workdir)


# The training CLI with an evaluation that takes 3 s longer, so that signals can be timed to land in it.
SLOW_EVALUATION = """
import sys, time
from {package} import train
evaluate = train.{trainer}.evaluate
train.{trainer}.evaluate = lambda self: (time.sleep(3), evaluate(self))[1]
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_second_sigterm_during_evaluation_stops_at_once_with_its_own_exit_code(framework, data_dir, tmp_path):
    """The first SIGTERM asks for a checkpoint after the current steps; a second one, 1.2 s later while
    the epoch's evaluation still runs, stops at once: exit 128 + SIGTERM, and the last line names only
    what exists (no checkpoint was due, no epoch was recorded)."""
    workdir = tmp_path / "run"
    package, trainer = {"flax": ("flax_impl", "FlaxTrainer"), "torch": ("torch_ref", "TorchTrainer")}[framework]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CNN_PARITY_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EVALUATION.format(package=package, trainer=trainer), *SHORT,
                             "--epochs", "2", "--log-every", "30", "--workdir", str(workdir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (workdir / "steps.jsonl").exists():  # step 30's record: the epoch's evaluation starts now
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    last = stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert last.endswith("stopped at once by a second SIGTERM; no checkpoint was written"), last
    assert "Traceback" not in stderr and not (workdir / "metrics.jsonl").exists()
