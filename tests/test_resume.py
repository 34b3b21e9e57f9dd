"""Fast proofs that a stopped run continues exactly (`pytest -m "not slow"` runs them): the optimiser's
state (momentum, Adam's moments) and dropout's random state survive a resume bitwise; SIGTERM keeps the
run, and `--resume --workdir W` alone continues it as it was started; a resume under other options
says so and records them; a recipe whose provenance alone changed (a corrected citation) still resumes."""

from __future__ import annotations

import json
import signal
import time

import pytest

from cnn_parity import checkpoints
from cnn_parity.recipes import config_path, load_recipe
from cnn_parity.workdir import run_differences

from .lifecycle import SHORT, assert_same_run, metrics, start, summary, train
from .test_cli import FRAMEWORKS

# fashion_cnn at batch 2,000: SGD with momentum 0.5 and dropout, 30 steps an epoch.
MOMENTUM_AND_DROPOUT = ("--model", "fashion_cnn", "--set", "batch_size=2000")
ADAM = (*SHORT, "--set", "optimizer.name=adam", "--set", "optimizer.lr=0.001")


@pytest.mark.parametrize("run", [MOMENTUM_AND_DROPOUT, ADAM], ids=["momentum-dropout", "adam"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_cut_run_resumes_its_optimiser_and_dropout_state(framework, run, data_dir, tmp_path):
    reference, workdir = tmp_path / "reference", tmp_path / "cut"
    assert train(framework, reference, *run, "--epochs", "2", "--max-steps", "45", data_dir=data_dir).returncode == 0
    # Cut mid-epoch (step 15 of 30) and resumed with the workdir alone, which keeps every recorded flag
    # but the new step limit.
    assert train(framework, workdir, *run, "--epochs", "2", "--max-steps", "15", data_dir=data_dir).returncode == 0
    result = train(framework, workdir, "--resume", "--max-steps", "45", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "step limit changes from 15 to 45" in result.stderr
    assert_same_run(workdir, reference)


def _last_line(stderr: str) -> str:
    return stderr.replace("\r", "\n").strip().splitlines()[-1]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sigterm_keeps_the_run_and_the_bare_resume_finishes_it(framework, data_dir, tmp_path):
    flags = (*MOMENTUM_AND_DROPOUT, "--epochs", "2")
    reference, workdir = tmp_path / "reference", tmp_path / "stopped"
    assert train(framework, reference, *flags, data_dir=data_dir).returncode == 0
    proc = start(framework, workdir, *flags, data_dir=data_dir)
    while not (workdir / "config.json").exists():  # written once the stop handler is in place
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    line = _last_line(stderr)
    assert "stopped by SIGTERM" in line and line.endswith(f"--resume --workdir {workdir}"), line
    stopped_at = checkpoints.latest(workdir)
    assert stopped_at is not None and (workdir / "model.safetensors").is_file()
    result = train(framework, workdir, "--resume", data_dir=data_dir)  # exactly what the line says
    assert result.returncode == 0, result.stderr
    assert f"resuming from {stopped_at}" in result.stderr
    assert_same_run(workdir, reference)


def test_a_resume_under_another_api_is_recorded_as_a_segment(data_dir, tmp_path):
    workdir = tmp_path / "run"
    assert train("flax", workdir, *SHORT, "--max-steps", "10", data_dir=data_dir).returncode == 0
    result = train("flax", workdir, "--resume", "--max-steps", "20", "--api", "nnx", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "from step 10 the run changes api linen -> nnx (results stay bitwise" in result.stderr
    segments = json.loads((workdir / "config.json").read_text())["segments"]
    assert [(s["from_step"], s["options"]["api"]) for s in segments] == [(0, "linen"), (10, "nnx")]
    assert summary(workdir)["segments"] == segments


def test_a_run_that_failed_before_its_first_record_leaves_its_workdir_usable(data_dir, tmp_path):
    workdir = tmp_path / "failed"
    result = train("torch", workdir, "--model", "lenet", "--lr", "1e10", "--max-steps", "5", data_dir=data_dir)
    assert result.returncode == 1 and "loss became" in result.stderr, result.stderr
    assert not (workdir / "metrics.jsonl").exists()
    result = train("torch", workdir, "--model", "lenet", "--max-steps", "5", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "stopped before its first record or checkpoint; starting anew" in result.stderr
    assert metrics(workdir) == [] and summary(workdir)["partial_epoch"]["steps"] == 5
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1


def _config(**recipe_changes) -> dict:
    recipe = load_recipe("mlp").to_dict()
    return {"framework": "torch", "pipeline": "tensor", "recipe": {**recipe, **recipe_changes}}


def test_a_runs_identity_is_what_changes_its_numbers_not_its_provenance():
    current, optimizer = _config(), load_recipe("mlp").to_dict()["optimizer"]
    assert run_differences(_config(source="a corrected citation", reported={"num_params": 1}), current) == []
    assert run_differences(_config(epochs=3), current) == []
    assert run_differences(_config(optimizer={**optimizer, "lr": 0.5}), current) == ["recipe optimizer"]


def test_a_recipe_file_whose_citation_changed_still_resumes_and_one_whose_lr_changed_does_not(data_dir, tmp_path):
    recipe, workdir = tmp_path / "mlp.toml", tmp_path / "run"
    recipe.write_text(config_path("mlp").read_text().replace("batch_size = 100", "batch_size = 2000"))
    assert train("torch", workdir, "--config", str(recipe), "--max-steps", "5", data_dir=data_dir).returncode == 0
    text = recipe.read_text()
    recipe.write_text(text.replace('source = "003: ', 'source = "003 (corrected): ').replace("num_params = ", "num_params = 1"))
    result = train("torch", workdir, "--config", str(recipe), "--resume", "--max-steps", "10", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert summary(workdir)["steps"] == 10
    recipe.write_text(text.replace("lr = 0.1", "lr = 0.2"))
    result = train("torch", workdir, "--config", str(recipe), "--resume", "--max-steps", "15", data_dir=data_dir)
    assert result.returncode == 2 and "differs in: recipe optimizer" in result.stderr, result.stderr


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_bare_resume_writes_exactly_what_the_uninterrupted_run_would(framework, data_dir, tmp_path):
    """Every option that changes what a run writes (step limit, checkpoint interval, step records,
    TensorBoard) is recorded and kept by `--resume --workdir W` alone."""
    flags = (*SHORT, "--epochs", "3", "--max-steps", "75", "--checkpoint-every", "10", "--log-every", "5",
             "--no-tensorboard")
    reference, workdir = tmp_path / "reference", tmp_path / "stopped"
    assert train(framework, reference, *flags, data_dir=data_dir).returncode == 0
    proc = start(framework, workdir, *flags, data_dir=data_dir)
    while not any((workdir / "checkpoints").glob("step_*")):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    result = train(framework, workdir, "--resume", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert_same_run(workdir, reference)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == \
        sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert not list(workdir.glob("*tfevents*")) and not list(reference.glob("*tfevents*"))
    untimed = [{k: v for k, v in summary(w)["partial_epoch"].items() if not k.endswith("_time_s")}
               for w in (workdir, reference)]
    assert untimed[0] == untimed[1]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resuming_a_finished_run_changes_nothing(framework, data_dir, tmp_path):
    workdir = tmp_path / "run"
    assert train(framework, workdir, *SHORT, "--max-steps", "12", "--checkpoint-every", "5", data_dir=data_dir).returncode == 0
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in workdir.rglob("*") if p.is_file()}
    result = train(framework, workdir, "--resume", data_dir=data_dir)
    assert result.returncode == 0 and "the run is finished at step 12; nothing to do" in result.stderr, result.stderr
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in workdir.rglob("*") if p.is_file()}
    assert after == before
