"""Checkpoints, exact resume after SIGKILL and Ctrl-C, determinism, cross-framework evaluation, and
the hard edges (non-finite loss, write errors), through the CLIs as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cnn_parity import checkpoints
from cnn_parity.errors import RunError
from cnn_parity.frameworks import command_module
from cnn_parity.weights import load_safetensors
from cnn_parity.workdir import Workdir, read_metrics

from .test_cli import FRAMEWORKS, REPO, assert_one_line_error, run_cli

# fashion_cnn exercises dropout RNG and momentum; batch 500 makes a 120-step epoch, so a 2-epoch run
# resumes mid-epoch and then crosses an epoch boundary (with its epoch-end checkpoint and reshuffle).
RESUME_RUN = ["--model", "fashion_cnn", "--epochs", "2", "--set", "batch_size=500", "--checkpoint-every", "50"]
_TIMINGS = ("train_time_s", "eval_time_s")


def _without_timings(records):
    return [{k: v for k, v in r.items() if k not in _TIMINGS} for r in records]


@pytest.fixture(scope="module")
def baselines(tmp_path_factory, data_dir):
    """Per framework, an uninterrupted run of RESUME_RUN (computed on first use)."""
    cache = {}

    def get(framework):
        if framework not in cache:
            workdir = tmp_path_factory.mktemp("baseline") / framework
            result = run_cli(framework, *RESUME_RUN, "--workdir", str(workdir), cwd=workdir.parent,
                             env={"CNN_PARITY_DATA_DIR": str(data_dir)})
            assert result.returncode == 0, result.stderr
            cache[framework] = workdir
        return cache[framework]

    return get


def _start_and_stop_after_first_checkpoint(framework, workdir, data_dir, sig) -> subprocess.Popen:
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO), "CNN_PARITY_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen([sys.executable, "-m", FRAMEWORKS[framework], *RESUME_RUN, "--workdir", str(workdir)],
                            cwd=workdir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while checkpoints.latest(workdir) is None:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.communicate(timeout=300)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sigkill_then_resume_equals_an_uninterrupted_run(framework, baselines, data_dir, tmp_path):
    workdir = tmp_path / "killed"
    proc = _start_and_stop_after_first_checkpoint(framework, workdir, data_dir, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (workdir / "summary.json").exists()
    result = run_cli(framework, *RESUME_RUN, "--workdir", str(workdir), "--resume", cwd=tmp_path,
                     env={"CNN_PARITY_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    # Bitwise on CPU: every per-epoch metric (losses are float64 means of float32 step losses) equal.
    assert _without_timings(read_metrics(workdir)) == _without_timings(read_metrics(baselines(framework)))
    resumed, reference = (json.loads((d / "summary.json").read_text()) for d in (workdir, baselines(framework)))
    assert (resumed["test_accuracy"], resumed["test_loss"], resumed["steps"]) == \
        (reference["test_accuracy"], reference["test_loss"], reference["steps"])
    _, final, _ = load_safetensors(checkpoints.latest(workdir) / "model.safetensors")
    _, final_reference, _ = load_safetensors(checkpoints.latest(baselines(framework)) / "model.safetensors")
    for name in final:
        np.testing.assert_array_equal(final[name], final_reference[name])


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_ctrl_c_leaves_a_resumable_checkpoint(framework, baselines, data_dir, tmp_path):
    workdir = tmp_path / "interrupted"
    proc = _start_and_stop_after_first_checkpoint(framework, workdir, data_dir, signal.SIGINT)
    assert proc.returncode == 130
    _, stopped_at, _ = load_safetensors(workdir / "model.safetensors")  # the weights it stopped with
    _, newest, _ = load_safetensors(checkpoints.latest(workdir) / "model.safetensors")
    assert all(stopped_at[name].tobytes() == newest[name].tobytes() for name in newest)
    result = run_cli(framework, *RESUME_RUN, "--workdir", str(workdir), "--resume", cwd=tmp_path,
                     env={"CNN_PARITY_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert _without_timings(read_metrics(workdir)) == _without_timings(read_metrics(baselines(framework)))


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_same_seed_gives_identical_metrics(framework, data_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        result = run_cli(framework, "--model", "fashion_cnn", "--max-steps", "60", "--workdir", str(tmp_path / name),
                         cwd=tmp_path, env={"CNN_PARITY_DATA_DIR": str(data_dir)})
        assert result.returncode == 0, result.stderr
        runs.append(_without_timings(read_metrics(tmp_path / name)))
    assert runs[0] == runs[1]


@pytest.mark.slow
@pytest.mark.parametrize("trained_with", FRAMEWORKS)
def test_a_model_evaluates_the_same_in_both_frameworks(trained_with, data_dir, tmp_path):
    env = {"CNN_PARITY_DATA_DIR": str(data_dir)}
    workdir = tmp_path / "run"
    result = run_cli(trained_with, "--model", "lenet", "--lr", "0.05", "--max-steps", "100", "--checkpoint-every",
                     "100", "--workdir", str(workdir), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    reports = {}
    for framework in FRAMEWORKS:
        module = command_module(framework, "evaluate")
        out = subprocess.run([sys.executable, "-m", module, "--checkpoint", str(workdir), "--json"], cwd=tmp_path,
                             env={**__import__("os").environ, "PYTHONPATH": str(REPO), **env},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        reports[framework] = json.loads(out.stdout)
        assert reports[framework]["trained_with"] == trained_with
        assert reports[framework]["model"] == "lenet" and reports[framework]["dataset"] == "mnist"
    assert summary["test_accuracy"] > 0.5  # a trained model, so agreement is not trivial
    # Same weights, same 10,000 images: the same correct count. The losses agree to float32 summation
    # order (measured ≤ 2e-7 relative); 1e-5 leaves room for other BLAS builds.
    assert reports["flax"]["test_accuracy"] == reports["torch"]["test_accuracy"] == summary["test_accuracy"]
    assert reports["flax"]["test_loss"] == pytest.approx(reports["torch"]["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_export_then_import_into_the_other_framework(data_dir, tmp_path):
    env = {"CNN_PARITY_DATA_DIR": str(data_dir)}
    result = run_cli("torch", "--model", "mlp", "--max-steps", "50", "--checkpoint-every", "50",
                     "--workdir", str(tmp_path / "torch"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    exported = tmp_path / "mlp.safetensors"
    out = subprocess.run([sys.executable, "-m", "cnn_parity.export", "--checkpoint", str(tmp_path / "torch"),
                          "--out", str(exported)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    model, arrays, metadata = load_safetensors(exported)
    assert model == "mlp" and metadata["framework"] == "torch"
    assert {k: v.shape for k, v in arrays.items()} == {"fc1.weight": (20, 784), "fc1.bias": (20,),
                                                       "fc2.weight": (10, 20), "fc2.bias": (10,)}
    # Flax continues from the PyTorch-trained weights: its first test accuracy starts where torch ended.
    result = run_cli("flax", "--model", "mlp", "--max-steps", "1", "--set", "optimizer.lr=1e-9",
                     "--init-weights", str(exported), "--workdir", str(tmp_path / "flax"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    torch_summary, flax_summary = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("torch", "flax"))
    assert flax_summary["test_accuracy"] == pytest.approx(torch_summary["test_accuracy"], abs=2e-4)
    result = run_cli("flax", "--model", "lenet", "--init-weights", str(exported), cwd=tmp_path, env=env)
    assert_one_line_error(result, 2, "holds a mlp, not a lenet")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_non_finite_loss_keeps_the_last_good_checkpoint_usable(framework, data_dir, tmp_path):
    env = {"CNN_PARITY_DATA_DIR": str(data_dir)}
    result = run_cli(framework, "--model", "lenet", "--lr", "1e30", "--checkpoint-every", "1",
                     "--workdir", str(tmp_path / "w"), cwd=tmp_path, env=env)
    assert_one_line_error(result, 1, "at step 2")
    (good,) = [checkpoints.latest(tmp_path / "w")]
    assert good is not None and good.name == "step_000000001"
    module = command_module(framework, "evaluate")
    out = subprocess.run([sys.executable, "-m", module, "--checkpoint", str(good), "--json"], cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO), **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["step"] == "1"


def test_a_torch_checkpoint_of_one_process_generator_state_still_restores_it(data_dir, tmp_path):
    """state.pt as written before it held one generator state per rank (a single state) still resumes:
    the state dropout draws from is the one saved."""
    import torch

    from cnn_parity.recipes import load_recipe
    from torch_ref.train import TorchTrainer

    trainer = TorchTrainer(load_recipe("fashion_cnn"), data_dir=str(data_dir))
    trainer.collect_state()
    trainer.save_state(tmp_path)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["rng"].shape[0] == 1  # one row per rank
    saved = state["rng"][0].clone()
    torch.save({**state, "rng": saved, "cuda_rng": []}, tmp_path / "state.pt")
    torch.manual_seed(12345)
    trainer.restore_state(tmp_path)
    assert torch.equal(torch.get_rng_state(), saved)


def test_half_written_checkpoints_are_never_picked_up(tmp_path):
    folder = checkpoints.root(tmp_path)
    (folder / "step_000000100").mkdir(parents=True)
    (folder / "step_000000100" / "meta.json").write_text("{}")
    (folder / ".tmp-step_000000200-123").mkdir()  # a writer killed mid-way
    (folder / ".tmp-step_000000200-123" / "meta.json").write_text("{}")
    (folder / "step_000000300").mkdir()  # no meta.json: incomplete
    assert checkpoints.latest(tmp_path) == folder / "step_000000100"


def test_non_finite_parameters_are_never_checkpointed(tmp_path):
    weights = {"fc1.weight": np.full((20, 784), np.inf, np.float32)}
    with pytest.raises(RunError, match="non-finite by step 7"):
        checkpoints.write(tmp_path, 7, {}, weights, lambda folder: None)
    assert checkpoints.latest(tmp_path) is None


def test_disk_full_while_logging_is_a_clear_error(tmp_path):
    workdir = Workdir(tmp_path / "run")
    workdir.create()
    workdir.metrics_path.symlink_to("/dev/full")  # every write fails with ENOSPC
    with pytest.raises(RunError, match="cannot write to workdir .*No space left on device"):
        workdir.log_epoch({"epoch": 1})


def test_plot_overlays_runs(tmp_path):
    for name, losses in (("a", [0.5, 0.3]), ("b", [0.6, 0.35])):
        (tmp_path / name).mkdir()
        lines = [json.dumps({"epoch": i + 1, "steps": 10 * (i + 1), "train_loss": loss, "train_accuracy": 0.8,
                             "test_loss": 0.4, "test_accuracy": 0.9}) for i, loss in enumerate(losses)]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, "-m", "cnn_parity.plot", str(tmp_path / "a"), str(tmp_path / "b"),
                          "--out", str(tmp_path / "curves.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = subprocess.run([sys.executable, "-m", "cnn_parity.plot", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
