"""tensorflow-datasets on the real data, offline and without TensorFlow: the tfds pipeline prepares
MNIST from the verified IDX files on first use, trains on it, and the prepared data sets hold exactly
the verified examples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cnn_parity import data, tfds_data, tfds_prepare

from .helpers import LEARNING_STEPS, MIN_TEST_ACCURACY
from .test_cli import REPO

pytest.importorskip("tensorflow_datasets")

# Trains through the CLI, then says whether TensorFlow is loaded.
TRAIN_THEN_REPORT_TENSORFLOW = """
import json, sys
from flax_impl.train import main
exit_code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"exit_code": exit_code, "tensorflow_in_sys_modules": "tensorflow" in sys.modules}, f)
"""
# A stand-in `tensorflow` package first on the path: TFDS and etils see TensorFlow as installed, and
# any import of it leaves a mark (and fails).
TENSORFLOW_STAND_IN = """
import os

pytestmark = pytest.mark.slow  # prepares TFDS data sets from the IDX files and trains through the CLI
with open(os.environ["TENSORFLOW_IMPORT_MARK"], "a") as mark:
    mark.write("tensorflow was imported\\n")
raise ImportError("a test's stand-in for TensorFlow")
"""


@pytest.fixture(scope="module")
def tfds_run(tmp_path_factory, data_dir):
    """mlp trained through `--pipeline tfds` from an empty cache: its TFDS folder gets prepared."""
    root = tmp_path_factory.mktemp("tfds_run")
    stand_in = root / "stand_in" / "tensorflow" / "__init__.py"
    stand_in.parent.mkdir(parents=True)
    stand_in.write_text(TENSORFLOW_STAND_IN)
    mark = root / "tensorflow-imported"
    python_path = os.pathsep.join(filter(None, [str(stand_in.parent.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "XDG_CACHE_HOME": str(root / "cache"), "CNN_PARITY_DATA_DIR": str(data_dir),
           "CNN_PARITY_OFFLINE": "1", "PYTHONPATH": python_path, "TENSORFLOW_IMPORT_MARK": str(mark)}
    workdir, result_file = root / "run", root / "result.json"
    argv = ["--model", "mlp", "--pipeline", "tfds", "--max-steps", str(LEARNING_STEPS["mlp"]), "--workdir", str(workdir)]
    process = subprocess.run([sys.executable, "-c", TRAIN_THEN_REPORT_TENSORFLOW, str(result_file), *argv],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-2000:]
    return {"result": json.loads(result_file.read_text()), "stderr": process.stderr, "tensorflow_imported": mark.exists(),
            "summary": json.loads((workdir / "summary.json").read_text()),
            "tfds_dir": root / "cache" / "cnn_parity" / "tfds"}


def sorted_examples(split: data.Split) -> np.ndarray:
    """The split's (label, image) rows as one sorted array: compares data sets whatever their order."""
    rows = np.concatenate([split.labels[:, None], split.images.reshape(len(split.labels), -1)], axis=1)
    return np.sort(np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel())


def test_trains_on_prepared_real_data_without_tensorflow(tfds_run):
    assert tfds_run["result"] == {"exit_code": 0, "tensorflow_in_sys_modules": False}
    assert not tfds_run["tensorflow_imported"]
    summary = tfds_run["summary"]
    assert summary["pipeline"] == "tfds" and summary["steps"] == LEARNING_STEPS["mlp"]
    assert summary["test_accuracy"] >= MIN_TEST_ACCURACY["mlp"]
    preparing = [line for line in tfds_run["stderr"].splitlines() if line.startswith("preparing the TFDS data set")]
    assert preparing == [f"preparing the TFDS data set mnist in {tfds_run['tfds_dir']} from the verified IDX files (once)"]
    assert tfds_data.is_prepared("mnist", tfds_run["tfds_dir"])


@pytest.mark.parametrize("split", data.SPLITS)
def test_prepared_mnist_holds_exactly_the_verified_examples(tfds_run, data_dir, split, capsys):
    from_tfds = tfds_data.load_or_prepare_split("mnist", split, tfds_run["tfds_dir"])
    assert "preparing" not in capsys.readouterr().err  # prepared once, then reused
    verified = data.load_split("mnist", split, data_dir)
    assert from_tfds.images.dtype == np.uint8 and from_tfds.images.shape == verified.images.shape
    assert not np.array_equal(from_tfds.labels, verified.labels)  # TFDS's record order, not the IDX files'
    np.testing.assert_array_equal(sorted_examples(from_tfds), sorted_examples(verified))


def test_prepare_command_writes_fashion_mnist(tmp_path, isolated_env, capsys):
    out = tmp_path / "tfds"
    assert tfds_prepare.main(["--out", str(out), "--datasets", "fashion_mnist"]) == 0
    assert tfds_prepare.main(["--out", str(out), "--datasets", "fashion_mnist"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"fashion_mnist: prepared in {out}", f"fashion_mnist: already prepared in {out}"]
    for split in data.SPLITS:  # from the Debian package's files (isolated_env: nothing else is reachable)
        np.testing.assert_array_equal(sorted_examples(tfds_data.load_split("fashion_mnist", split, out)),
                                      sorted_examples(data.load_split("fashion_mnist", split)))


def test_prepare_into_an_unusable_folder(tmp_path, data_dir, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert tfds_prepare.main(["--out", str(blocker / "tfds"), "--datasets", "mnist", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot prepare the TFDS data set mnist" in err


def test_prepare_without_the_idx_files(tmp_path, isolated_env, capsys):
    assert tfds_prepare.main(["--out", str(tmp_path / "tfds"), "--datasets", "mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mnist not found" in err
    assert not tfds_data.is_prepared("mnist", tmp_path / "tfds")


def test_damaged_prepared_data_is_one_line_and_exit_2(tfds_run, tmp_path, capsys):
    from flax_impl.train import main

    damaged = tmp_path / "tfds"
    shutil.copytree(tfds_run["tfds_dir"], damaged)
    records = next((damaged / "mnist" / "3.0.1").glob("mnist-train.array_record-*"))
    records.write_bytes(records.read_bytes()[: records.stat().st_size // 2])
    argv = ["--model", "mlp", "--pipeline", "tfds", "--data-dir", str(damaged), "--max-steps", "1",
            "--workdir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"delete {damaged / 'mnist'}" in err


def test_two_first_uses_at_once_both_train(tmp_path, data_dir):
    """Two runs that both find the TFDS data set missing: one prepares it, the other waits and reads it."""
    tfds_dir = tmp_path / "tfds"
    (tfds_dir / "mnist" / "incomplete.KILLED_3.0.1").mkdir(parents=True)  # a killed preparation's leftovers
    env = {**os.environ, "CNN_PARITY_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen([sys.executable, "-m", "flax_impl.train", "--model", "mlp", "--pipeline", "tfds",
                              "--data-dir", str(tfds_dir), "--max-steps", "1", "--workdir", str(tmp_path / f"run{i}")],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
    outputs = [run.communicate(timeout=900) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-1500:] for _, err in outputs]
    assert sum("preparing the TFDS data set mnist" in err for _, err in outputs) == 1
    assert [p.name for p in (tfds_dir / "mnist").iterdir()] == ["3.0.1"]


def test_a_version_folder_without_its_info_is_named(tfds_run, tmp_path, capsys):
    from flax_impl.train import main

    damaged = tmp_path / "tfds"
    shutil.copytree(tfds_run["tfds_dir"], damaged)
    (damaged / "mnist" / "3.0.1" / "dataset_info.json").unlink()
    argv = ["--model", "mlp", "--pipeline", "tfds", "--data-dir", str(damaged), "--max-steps", "1",
            "--workdir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no dataset_info.json" in err and "delete it" in err
