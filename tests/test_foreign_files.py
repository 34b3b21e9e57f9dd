"""No command touches a file the project did not write, and every path a command writes to or loads
from is judged by its real path (links resolved): a folder is taken over only when what is in it is
provably a run's own, and an output through a link into a run is refused like one inside it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnn_parity.weights import canonical_shapes, save_safetensors
from cnn_parity.workdir import check_new_output, run_holding

from .lifecycle import SHORT, module_command, train
from .test_bad_input import assert_usage_error
from .test_cli import FRAMEWORKS


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_folder_with_files_the_project_did_not_write_is_refused_and_left_as_it_was(framework, data_dir, tmp_path):
    workdir = tmp_path / "P"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"my_app": 1}')
    (workdir / "events.out.tfevents.1.host").write_text("theirs")
    before = {p.name: p.read_bytes() for p in workdir.iterdir()}
    result = train(framework, workdir, *SHORT, "--max-steps", "2", data_dir=data_dir)
    assert_usage_error(result, "holds files this project did not write", "config.json: it has keys no run writes",
                       "events.out.tfevents.1.host: not an event file of this project's runs")
    assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before


def test_a_run_that_stopped_before_its_first_record_is_taken_over(data_dir, tmp_path):
    """Its config (by schema), step records and event files are all the project's: they are replaced."""
    workdir = tmp_path / "run"
    result = train("torch", workdir, "--model", "lenet", "--lr", "1e10", "--max-steps", "5", "--log-every", "1",
                   data_dir=data_dir)
    assert result.returncode == 1 and "loss became" in result.stderr, result.stderr
    result = train("torch", workdir, *SHORT, "--max-steps", "2", data_dir=data_dir)
    assert result.returncode == 0 and "starting anew" in result.stderr, result.stderr


def test_a_steps_file_that_is_not_the_projects_blocks_the_take_over(data_dir, tmp_path):
    workdir = tmp_path / "run"
    assert train("torch", workdir, "--model", "lenet", "--lr", "1e10", "--max-steps", "5", data_dir=data_dir).returncode == 1
    (workdir / "steps.jsonl").write_text("my own notes\n")
    result = train("torch", workdir, *SHORT, "--max-steps", "2", data_dir=data_dir)
    assert_usage_error(result, "steps.jsonl line 1 is not a step record")
    assert (workdir / "steps.jsonl").read_text() == "my own notes\n"


@pytest.fixture
def finished_run(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "run"
    result = train("torch", workdir, *SHORT, "--max-steps", "4", "--checkpoint-every", "2", "--no-tensorboard",
                   data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    return workdir


def _weights(model: str, value: float) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, np.float32) for name, shape in canonical_shapes(model).items()}


def test_an_export_through_a_link_into_a_run_is_refused(finished_run, tmp_path):
    other = tmp_path / "other.safetensors"
    save_safetensors(other, "mlp", _weights("mlp", 0.5))
    link = tmp_path / "L"
    link.symlink_to(finished_run / "checkpoints")
    (checkpoint,) = [p for p in (finished_run / "checkpoints").iterdir() if p.name.endswith("04")]
    target = checkpoint / "model.safetensors"
    before = target.read_bytes()
    result = module_command("cnn_parity.export", "--checkpoint", str(other), "--out",
                            str(link / checkpoint.name / "model.safetensors"), cwd=tmp_path)
    assert_usage_error(result, "is inside the workdir of a run", f"really {target}")
    assert target.read_bytes() == before


def test_a_plot_through_a_link_into_a_run_is_refused(finished_run, tmp_path):
    link = tmp_path / "L"
    link.symlink_to(finished_run)
    result = module_command("cnn_parity.plot", str(finished_run), "--out", str(link / "curves.png"), cwd=tmp_path)
    assert_usage_error(result, "is inside the workdir of a run")
    assert not (finished_run / "curves.png").exists()


def test_an_output_path_is_resolved_before_it_is_judged_and_written(finished_run, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    assert check_new_output(link / "x.png", lambda path: False) == tmp_path / "elsewhere" / "x.png"
    assert run_holding(tmp_path / "link-to-run" / "x") is None
    (tmp_path / "link-to-run").symlink_to(finished_run)
    assert run_holding(tmp_path / "link-to-run" / "x") == finished_run


def test_a_config_of_another_framework_value_is_not_a_runs(finished_run, tmp_path):
    config = json.loads((finished_run / "config.json").read_text())
    config["framework"] = None
    (finished_run / "config.json").write_text(json.dumps(config))
    result = train("torch", finished_run, "--resume", data_dir=tmp_path)
    assert_usage_error(result, "config.json is not a run's config: its framework is None")
