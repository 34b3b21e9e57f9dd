"""Both training CLIs as a user runs them (subprocesses): every model, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn_parity import frameworks
from cnn_parity.recipes import MODELS

from .helpers import source_num_params


FRAMEWORKS = {framework: frameworks.command_module(framework, "train") for framework in frameworks.FRAMEWORKS}
REPO = Path(__file__).resolve().parents[1]


def run_cli(framework: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", FRAMEWORKS[framework], *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, exit_code: int, *fragments: str) -> None:
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    # Progress bars redraw with \r; the error itself is the last line, on its own.
    last = result.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("python -m ") and ": error: " in last, last
    for fragment in fragments:
        assert fragment in last, last


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_runs_from_the_cli(framework, model, data_dir, tmp_path):
    result = run_cli(framework, "--model", model, "--max-steps", "20", cwd=tmp_path,
                     env={"CNN_PARITY_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    (workdir,) = (tmp_path / "runs").iterdir()
    assert workdir.name.startswith(f"{framework}-{model}-")
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["num_params"] == source_num_params(model)
    assert (summary["model"], summary["framework"], summary["steps"]) == (model, framework, 20)
    for key in ("dataset", "epochs", "batch_size", "seed", "test_accuracy", "test_loss", "train_time_s",
                "train_samples_per_s", "device", "versions"):
        assert summary[key] is not None, key
    assert summary["machine"]["cpu_count"] == os.cpu_count() and "platform" in summary["machine"]
    # 20 steps end inside the first epoch: no epoch record, the part trained and its evaluation in the summary
    assert not (workdir / "metrics.jsonl").exists() and summary["epochs"] == 0
    partial = summary["partial_epoch"]
    assert (partial["epoch"], partial["steps_in_epoch"], partial["test_accuracy"]) == (1, 20, summary["test_accuracy"])
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in result.stdout


def test_flax_runs_share_a_persistent_compilation_cache(data_dir, tmp_path):
    """The second identical run loads its programs from the cache the first wrote (no timing asserted:
    what is checked is that the cache is written, reused unchanged, and turned off on request)."""
    cache = tmp_path / "xla"
    env = {"CNN_PARITY_DATA_DIR": str(data_dir), "CNN_PARITY_JAX_CACHE": str(cache)}
    flags = ("--model", "mlp", "--max-steps", "5", "--set", "eval_batch_size=10000")
    first = run_cli("flax", *flags, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    entries = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert any(name.startswith("jit_train_chunk") for name in entries), sorted(entries)
    second = run_cli("flax", *flags, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == entries
    off = run_cli("flax", *flags, "--no-compile-cache", cwd=tmp_path, env={**env, "CNN_PARITY_JAX_CACHE": str(tmp_path / "unused")})
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "unused").exists()


@pytest.fixture
def no_data_env(tmp_path):
    return {"CNN_PARITY_DATA_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "cache"), "CNN_PARITY_OFFLINE": "1"}


def _corrupted_data_dir(data_dir: Path, dest: Path, stem: str, corrupt) -> Path:
    folder = dest / "mnist"
    folder.mkdir(parents=True)
    for gz in (data_dir / "mnist").glob("*.gz"):
        content = gzip.decompress(gz.read_bytes())
        (folder / gz.stem).write_bytes(corrupt(content) if gz.stem == stem else content)
    return dest


@pytest.mark.parametrize("framework", FRAMEWORKS)
class TestBadInput:
    def test_unknown_model(self, framework, tmp_path):
        result = run_cli(framework, "--model", "resnet", cwd=tmp_path)
        assert_one_line_error(result, 2, "unknown model 'resnet'")
        assert result.stderr.count("\n") == 1

    def test_negative_learning_rate(self, framework, tmp_path):
        assert_one_line_error(run_cli(framework, "--model", "lenet", "--lr", "-1", cwd=tmp_path),
                              2, "recipe key optimizer.lr: input should be greater than 0, got -1.0")

    def test_bad_flag_values(self, framework, tmp_path):
        assert_one_line_error(run_cli(framework, "--model", "lenet", "--batch-size", "0", cwd=tmp_path),
                              2, "recipe key batch_size: input should be greater than 0, got 0")
        assert_one_line_error(run_cli(framework, "--model", "lenet", "--max-steps", "-3", cwd=tmp_path),
                              2, "--max-steps")
        assert_one_line_error(run_cli(framework, "--model", "lenet", "--set", "lr=0.1", cwd=tmp_path),
                              2, "unknown recipe key lr")
        assert_one_line_error(run_cli(framework, cwd=tmp_path), 2, "--model is required")

    def test_missing_data(self, framework, tmp_path, no_data_env):
        result = run_cli(framework, "--model", "lenet", cwd=tmp_path, env=no_data_env)
        assert_one_line_error(result, 2, "mnist not found", "CNN_PARITY_DATA_DIR")
        assert not (tmp_path / "runs").exists()  # nothing half-made is left behind

    def test_truncated_idx_file(self, framework, data_dir, tmp_path, no_data_env):
        folder = _corrupted_data_dir(data_dir, tmp_path / "d", "train-images-idx3-ubyte", lambda c: c[: len(c) // 2])
        result = run_cli(framework, "--model", "lenet", "--data-dir", str(folder), cwd=tmp_path, env=no_data_env)
        assert_one_line_error(result, 2, "train-images-idx3-ubyte", "truncated")

    def test_wrong_magic_number(self, framework, data_dir, tmp_path, no_data_env):
        folder = _corrupted_data_dir(data_dir, tmp_path / "d", "train-labels-idx1-ubyte",
                                     lambda c: b"\x00\x00\x08\x03" + c[4:])
        result = run_cli(framework, "--model", "lenet", "--data-dir", str(folder), cwd=tmp_path, env=no_data_env)
        assert_one_line_error(result, 2, "train-labels-idx1-ubyte", "expected 1 dimension")

    def test_unwritable_and_occupied_workdir(self, framework, data_dir, tmp_path):
        env = {"CNN_PARITY_DATA_DIR": str(data_dir)}
        (tmp_path / "a_file").write_text("")
        result = run_cli(framework, "--model", "mlp", "--workdir", str(tmp_path / "a_file" / "run"), cwd=tmp_path, env=env)
        assert_one_line_error(result, 2, "is not writable")
        occupied = tmp_path / "done"
        occupied.mkdir()
        (occupied / "metrics.jsonl").write_text('{"epoch": 1}\n')
        result = run_cli(framework, "--model", "mlp", "--workdir", str(occupied), cwd=tmp_path, env=env)
        assert_one_line_error(result, 2, "already holds a run")
        assert (occupied / "metrics.jsonl").read_text() == '{"epoch": 1}\n'

    def test_non_finite_loss_stops_with_the_step(self, framework, data_dir, tmp_path):
        result = run_cli(framework, "--model", "lenet", "--lr", "1e30", "--max-steps", "200",
                         "--workdir", str(tmp_path / "w"), cwd=tmp_path, env={"CNN_PARITY_DATA_DIR": str(data_dir)})
        assert_one_line_error(result, 1, "loss became nan at step")
        assert not (tmp_path / "w" / "summary.json").exists()


@pytest.mark.slow
def test_flax_nnx_api_trains_resumes_and_evaluates(data_dir, tmp_path):
    """`--api nnx`: the NNX models through the same trainer, checkpoints, resume and evaluation, the
    API recorded with the run."""
    env = {"CNN_PARITY_DATA_DIR": str(data_dir)}
    workdir = tmp_path / "nnx"
    common = ["--model", "lenet", "--api", "nnx", "--checkpoint-every", "10", "--workdir", str(workdir)]
    assert run_cli("flax", *common, "--max-steps", "10", cwd=tmp_path, env=env).returncode == 0
    resumed = run_cli("flax", *common, "--max-steps", "20", "--resume", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    from flax_impl.train import resolve_conv_impl

    chosen = resolve_conv_impl("auto", "lenet")  # recorded as resolved: "auto" is not the same on every backend
    assert f"flax (api nnx) (conv_impl {chosen}) lenet: 44,426 parameters" in resumed.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert (summary["steps"], summary["options"]) == (20, {"api": "nnx", "conv_impl": chosen, "threads": None, "devices": 1})
    assert json.loads((workdir / "config.json").read_text())["options"] == {"api": "nnx", "conv_impl": chosen, "threads": None, "devices": 1}
    evaluate = [sys.executable, "-m", "flax_impl.evaluate", "--checkpoint", str(workdir), "--json"]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    evaluated = subprocess.run([*evaluate, "--api", "nnx"], cwd=tmp_path, env=full_env, capture_output=True, text=True)
    report = json.loads(evaluated.stdout)
    assert (report["options"], report["test_loss"]) == ({"api": "nnx"}, summary["test_loss"])


def test_flax_unknown_api_is_one_line(tmp_path):
    assert_one_line_error(run_cli("flax", "--model", "lenet", "--api", "haiku", cwd=tmp_path), 2, "--api", "'haiku'")
    refused = subprocess.run([sys.executable, "-m", "flax_impl.evaluate", "--checkpoint", str(tmp_path), "--api", "haiku"],
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert_one_line_error(refused, 2, "--api", "'haiku'")


def test_flax_conv_impl_onednn_not_built_is_one_line(tmp_path):
    """The opt-in without its build (an empty cache, no compiler on PATH): refused at once, in one line
    naming the command that builds it; nothing is compiled."""
    result = run_cli("flax", "--model", "lenet", "--conv-impl", "onednn", cwd=tmp_path,
                     env={"PATH": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert_one_line_error(result, 2, "conv_impl onednn", "python -m flax_impl.onednn_conv build")


@pytest.mark.parametrize("model,conv_impl", [("lenet", "jaxlib-onednn"), ("mlp", "none")])
def test_flax_default_conv_impl_is_recorded_and_shown(model, conv_impl, data_dir, tmp_path):
    """With no compiler and no oneDNN build, the default trains on a CPU with jaxlib's own oneDNN
    convolution; the first line and the run's records say so, and a model without convolutions
    claims none."""
    result = run_cli("flax", "--model", model, "--max-steps", "2", "--workdir", str(tmp_path / "w"), cwd=tmp_path,
                     env={"PATH": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
                          "CNN_PARITY_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert f"(conv_impl {conv_impl}) {model}" in result.stdout.splitlines()[0]
    assert json.loads((tmp_path / "w" / "config.json").read_text())["options"]["conv_impl"] == conv_impl


@pytest.mark.slow
def test_linen_and_nnx_runs_from_shared_weights_are_identical(data_dir, tmp_path):
    """From the same initial weights (init_rng=shared), the Linen and NNX runs of a recipe with
    dropout see the same batches and draw the same masks: every logged figure and the final weights
    are bitwise equal."""
    from cnn_parity.weights import load_safetensors

    runs = {}
    for api in ("linen", "nnx"):
        workdir = tmp_path / api
        result = run_cli("flax", "--model", "fashion_cnn", "--api", api, "--max-steps", "60", "--set", "init_rng=shared",
                         "--workdir", str(workdir), cwd=tmp_path, env={"CNN_PARITY_DATA_DIR": str(data_dir)})
        assert result.returncode == 0, result.stderr
        figures = json.loads((workdir / "summary.json").read_text())["partial_epoch"]
        runs[api] = ({k: figures[k] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")},
                     load_safetensors(workdir / "model.safetensors")[1])
    assert runs["linen"][0] == runs["nnx"][0]
    for name, array in runs["linen"][1].items():
        np.testing.assert_array_equal(runs["nnx"][1][name], array, err_msg=name)


def test_threads_and_the_machines_load_are_recorded_beside_the_speed(data_dir, tmp_path):
    for framework in FRAMEWORKS:
        workdir = tmp_path / framework
        result = run_cli(framework, "--model", "mlp", "--max-steps", "5", "--threads", "1", "--workdir", str(workdir),
                         cwd=tmp_path, env={"CNN_PARITY_DATA_DIR": str(data_dir)})
        assert result.returncode == 0, result.stderr
        summary = json.loads((workdir / "summary.json").read_text())
        conditions = summary["speed_conditions"]
        assert conditions["threads"] == 1 and summary["options"]["threads"] == 1
        assert set(conditions["load_average"]) == {"start", "end"} and isinstance(conditions["busy"], bool)
        assert ("measured on a busy machine" in result.stderr) == conditions["busy"]


def test_devices_on_a_cpu_need_no_xla_flags(data_dir, tmp_path):
    env = {"CNN_PARITY_DATA_DIR": str(data_dir), "XLA_FLAGS": ""}
    result = run_cli("flax", "--model", "mlp", "--max-steps", "3", "--devices", "2", "--workdir", str(tmp_path / "w"),
                     cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["options"]["devices"] == 2


def test_a_runs_config_json_is_a_recipe_for_either_framework(data_dir, tmp_path):
    env = {"CNN_PARITY_DATA_DIR": str(data_dir)}
    first = run_cli("torch", "--model", "mlp", "--max-steps", "3", "--set", "optimizer=adam", "--set",
                    "optimizer.lr=0.002", "--workdir", str(tmp_path / "a"), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    again = run_cli("flax", "--config", str(tmp_path / "a" / "config.json"), "--max-steps", "3", "--workdir",
                    str(tmp_path / "b"), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    recipes = [json.loads((tmp_path / w / "config.json").read_text())["recipe"] for w in "ab"]
    assert recipes[0] == recipes[1] and recipes[0]["optimizer"]["name"] == "adam"
    assert "(changed: optimizer.lr=0.002, optimizer.name=adam)" in recipes[0]["source"]


def test_the_project_says_how_it_may_be_used_and_cited():
    assert "Apache License" in (REPO / "LICENSE").read_text()
    citation = (REPO / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in citation and "license: Apache-2.0" in citation
