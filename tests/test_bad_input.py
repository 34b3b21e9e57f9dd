"""Bad input of every kind exits 2 with one line naming it, in every command; a checkpoint that
cannot be written (disk full, no inodes) stops the run with one line and exit 1, within seconds,
leaving the previous checkpoint intact and no temporary files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cnn_parity import checkpoints
from cnn_parity.errors import UsageError
from cnn_parity.frameworks import command_module
from cnn_parity.weights import canonical_shapes, load_safetensors, save_safetensors

from .lifecycle import SHORT, litter, module_command, train
from .test_cli import FRAMEWORKS, assert_one_line_error, run_cli

EVALUATE = {framework: command_module(framework, "evaluate") for framework in FRAMEWORKS}


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert_one_line_error(result, 2, *fragments)
    assert "internal error" not in result.stderr


@pytest.fixture
def weights_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "mlp.safetensors"
    save_safetensors(path, "mlp", {name: rng.standard_normal(shape).astype(np.float32)
                                   for name, shape in canonical_shapes("mlp").items()})
    return path


def _damaged(path: Path, kind: str) -> Path:
    content = path.read_bytes()
    damaged = path.with_name(f"{kind}.safetensors")
    damaged.write_bytes({"truncated": content[: len(content) // 2], "empty": b"",
                         "random": np.random.default_rng(1).bytes(len(content))}[kind])
    return damaged


@pytest.mark.parametrize("kind", ["truncated", "empty", "random"])
def test_damaged_safetensors_are_usage_errors(weights_file, kind):
    with pytest.raises(UsageError, match="is not a readable .safetensors file"):
        load_safetensors(_damaged(weights_file, kind))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_damaged_weights_to_evaluate_and_init_weights(framework, weights_file, tmp_path):
    truncated = _damaged(weights_file, "truncated")
    assert_usage_error(module_command(EVALUATE[framework], "--checkpoint", str(truncated), cwd=tmp_path),
                       "truncated.safetensors is not a readable .safetensors file")
    assert_usage_error(run_cli(framework, "--model", "mlp", "--init-weights", str(truncated), cwd=tmp_path),
                       "is not a readable .safetensors file")


@pytest.mark.parametrize("kind", ["truncated", "empty", "random"])
def test_damaged_weights_to_export(weights_file, tmp_path, kind):
    result = module_command("cnn_parity.export", "--checkpoint", str(_damaged(weights_file, kind)),
                            "--out", str(tmp_path / "out.safetensors"), cwd=tmp_path)
    assert_usage_error(result, "is not a readable .safetensors file")


def test_export_to_an_unwritable_place(weights_file, tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    for out, reason in ((tmp_path / "missing" / "x.safetensors", "No such file or directory"),
                        (tmp_path / "a_folder", "Is a directory"),
                        (tmp_path / "a_file" / "x.safetensors", "Not a directory")):
        result = module_command("cnn_parity.export", "--checkpoint", str(weights_file), "--out", str(out), cwd=tmp_path)
        assert_usage_error(result, f"cannot write {out}", reason)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder", "mlp.safetensors"]
    assert not any((tmp_path / "a_folder").iterdir())


def test_export_replaces_only_its_own_files_and_never_writes_into_a_run(weights_file, tmp_path):
    def export(out: Path, *flags: str) -> subprocess.CompletedProcess:
        return module_command("cnn_parity.export", "--checkpoint", str(weights_file), "--out", str(out), *flags,
                              cwd=tmp_path)

    run = tmp_path / "run"  # a run's workdir: its records and its model are that run's
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"framework": "torch", "recipe": {"model": "mlp"}}))
    for name, content in (("metrics.jsonl", b"{}\n"), ("model.safetensors", weights_file.read_bytes())):
        (run / name).write_bytes(content)
        assert_usage_error(export(run / name), "is inside the workdir of a run", str(run))
        assert_usage_error(export(run / name, "--force"), "is inside the workdir of a run")
        assert (run / name).read_bytes() == content
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert_usage_error(export(notes), "notes.txt exists and was not written by this command", "--force")
    assert notes.read_text() == "mine"
    assert export(notes, "--force").returncode == 0
    exported = tmp_path / "again.safetensors"
    assert export(exported).returncode == 0 and export(exported).returncode == 0  # its own export: replaced


def test_non_finite_weights_are_refused_where_they_enter(weights_file, tmp_path):
    _, arrays, _ = load_safetensors(weights_file)
    arrays["fc1.weight"][0, 0] = np.nan
    poisoned = tmp_path / "nan.safetensors"
    save_safetensors(poisoned, "mlp", arrays)
    said = "holds non-finite values (NaN or inf) in fc1.weight"
    for framework in FRAMEWORKS:
        assert_usage_error(module_command(EVALUATE[framework], "--checkpoint", str(poisoned), "--json", cwd=tmp_path),
                           said)
        assert_usage_error(run_cli(framework, "--model", "mlp", "--init-weights", str(poisoned), "--workdir",
                                   str(tmp_path / framework), cwd=tmp_path), said)
        assert not (tmp_path / framework).exists()
    assert_usage_error(module_command("cnn_parity.export", "--checkpoint", str(poisoned), "--out",
                                      str(tmp_path / "out.safetensors"), cwd=tmp_path), said)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_empty_workdir_is_refused(framework, tmp_path):
    assert_usage_error(run_cli(framework, "--model", "mlp", "--workdir", "", cwd=tmp_path), "--workdir is empty")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recipe_metadata_that_is_not_json(framework, weights_file, tmp_path):
    _, arrays, _ = load_safetensors(weights_file)
    bad = tmp_path / "bad-recipe.safetensors"
    save_safetensors(bad, "mlp", arrays, {"recipe": "{not json"})
    assert_usage_error(module_command(EVALUATE[framework], "--checkpoint", str(bad), cwd=tmp_path),
                       "recipe metadata is not a JSON recipe")


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_values_the_libraries_refuse(framework, data_dir, tmp_path):
    env = {"CNN_PARITY_DATA_DIR": str(data_dir)}
    assert_usage_error(run_cli(framework, "--model", "cnn_base", "--batch-size", "70000", cwd=tmp_path),
                       "batch_size 70000 is larger than the train split (60,000 examples)")
    assert_usage_error(run_cli(framework, "--model", "mlp", "--set", "eval_batch_size=10001", cwd=tmp_path),
                       "eval_batch_size 10001 is larger than the test split (10,000 examples)")
    assert_usage_error(run_cli(framework, "--model", "mlp", "--seed", str(2**32), cwd=tmp_path),
                       "recipe key seed: must be in 0 .. 2**32 - 1")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('model = "mlp"  # r\xe9sum\xe9\n'.encode("latin-1"))
    assert_usage_error(run_cli(framework, "--config", str(latin1), cwd=tmp_path), "is not UTF-8 text")
    assert_usage_error(run_cli(framework, "--model", "mlp", "--workdir", "w" * 300, cwd=tmp_path, env=env),
                       "is 300 bytes long", "pass a shorter --workdir")
    deep = tmp_path.joinpath(*["d" * 200] * 20)
    assert_usage_error(run_cli(framework, "--model", "mlp", "--workdir", str(deep), cwd=tmp_path, env=env),
                       "path limit", "pass a shorter --workdir")
    assert not list(tmp_path.glob("w*")) and not (tmp_path / ("d" * 200)).exists()


def test_process_id_outside_the_process_count(tmp_path):
    result = run_cli("flax", "--model", "mlp", "--coordinator", "localhost:12345", "--num-processes", "2",
                     "--process-id", "5", cwd=tmp_path)
    assert_usage_error(result, "--process-id must be in 0 .. 1")
    assert_usage_error(run_cli("flax", "--model", "mlp", "--coordinator", "localhost", cwd=tmp_path),
                       "expected HOST:PORT")


def _plot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return module_command("cnn_parity.plot", *args, cwd=cwd)


def test_plot_refuses_bad_runs_and_outputs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    record = {"epoch": 1, "steps": 30, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": 0.4, "test_accuracy": 0.9}
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "existing").mkdir()
    assert_usage_error(_plot(str(run), "--out", str(tmp_path / "x.xyz"), cwd=tmp_path), "unknown image format '.xyz'")
    assert_usage_error(_plot(str(run), "--out", str(tmp_path / "existing"), cwd=tmp_path), "is a folder")
    (run / "config.json").write_text("[1, 2")
    assert_usage_error(_plot(str(run), "--out", str(tmp_path / "c.png"), cwd=tmp_path), "is not a run's config")
    (run / "config.json").unlink()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.5}) + "\n")
    assert_usage_error(_plot(str(run), "--out", str(tmp_path / "c.png"), cwd=tmp_path),
                       "metrics.jsonl line 1 is not an epoch record")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "run"]


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs holding a run, shrunk to (almost) what it holds: `shrink(extra_bytes, extra_inodes)`."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=1000", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")

    def shrink(extra_bytes: int, extra_inodes: int) -> None:
        stats = os.statvfs(mount_point)
        used_bytes = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        used_inodes = stats.f_files - stats.f_ffree
        subprocess.run(["mount", "-o", f"remount,size={used_bytes + extra_bytes},nr_inodes={used_inodes + extra_inodes}",
                        str(mount_point)], check=True)

    yield mount_point, shrink
    subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("exhausted", ["space", "inodes"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_checkpoint_that_cannot_be_written(framework, exhausted, data_dir, tmp_path, small_filesystem):
    mount_point, shrink = small_filesystem
    flags = (*SHORT, "--max-steps", "30", "--checkpoint-every", "10")
    first = tmp_path / "first"
    assert train(framework, first, *SHORT, "--max-steps", "10", "--checkpoint-every", "10",
                 data_dir=data_dir).returncode == 0
    workdir = mount_point / "run"
    shutil.copytree(first, workdir)
    # Room for the run's lock, for rewriting the records and the config on resume and for its new
    # TensorBoard event file, none for the next checkpoint.
    shrink(*{"space": (8192, 100), "inodes": (1 << 20, 3)}[exhausted])
    previous = checkpoints.latest(workdir)
    kept = {p.name: p.read_bytes() for p in previous.iterdir()}
    started = time.monotonic()
    result = train(framework, workdir, *flags, "--resume", data_dir=data_dir)
    assert time.monotonic() - started < 60
    assert_one_line_error(result, 1, "cannot write checkpoint", "No space left on device")
    assert "internal error" not in result.stderr and result.stderr.count("Traceback") == 0
    assert checkpoints.latest(workdir) == previous
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == kept
    assert not litter(workdir)


@pytest.mark.parametrize("argv, message", [
    (["--models", "resnet"], "argument --models: invalid choice: 'resnet' (choose from 'mlp', 'cnn_base', "
                             "'cnn_2layer', 'lenet', 'fashion_cnn')"),
    (["--reps", "0"], "argument --reps: expected a positive integer, got 0"),
])
def test_profiler_flags_are_one_line_usage_errors(argv, message, capsys):
    from benchmarks import profile_ops
    with pytest.raises(SystemExit) as stopped:
        profile_ops.main(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"{profile_ops.PROG}: error: {message}"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("flags, fragment", [
    (("--lr", "1e39"), "recipe key optimizer.lr: 1e+39 is outside float32's range"),
    (("--lr", "1e-50"), "recipe key optimizer.lr: 1e-50 is too small for float32"),
    (("--set", "optimizer.eps=1e-60"), "recipe key optimizer.eps: 1e-60 is too small for float32"),
    (("--set", "normalize_mean=-1e40"), "recipe key normalize_mean: -1e+40 is outside float32's range"),
    (("--set", "model=lenet"), "recipe key model cannot be set"),
    (("--set", "source=mine"), "recipe key source cannot be set"),
    (("--set", "reported.num_params=5"), "recipe key reported.num_params cannot be set"),
    (("--set", 'optimizer={name="adam", foo=1}'), "unknown recipe key optimizer.foo"),
], ids=["lr-overflow", "lr-underflow", "eps-underflow", "mean-overflow", "model", "source", "reported", "inline-table"])
def test_recipe_settings_a_run_cannot_take_are_one_line(framework, flags, fragment, tmp_path):
    result = run_cli(framework, "--model", "mlp", "--max-steps", "2", *flags, cwd=tmp_path)
    assert_usage_error(result, fragment)
