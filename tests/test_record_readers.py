"""Every reader of a file a run writes (config.json, metrics.jsonl, steps.jsonl, summary.json, a
checkpoint's meta.json, a study's records), fed damaged versions of a real one (truncations, torn
lines, wrong types, foreign records, bad bytes): each returns a valid reading or raises a UsageError
whose one line names the file (and the line, for JSON lines) — never another exception, never a
silent loss."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnn_parity import checkpoints
from cnn_parity.errors import UsageError
from cnn_parity.workdir import Workdir, read_records
from parity_studies import runs

from .lifecycle import SHORT, train
from .test_bad_input import assert_usage_error


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory) -> Path:
    """A real run with every record file: two epochs, step records, checkpoints."""
    workdir = tmp_path_factory.mktemp("readers") / "run"
    result = train("torch", workdir, *SHORT, "--epochs", "2", "--max-steps", "45", "--log-every", "3",
                   "--checkpoint-every", "20", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    return workdir


def _damages() -> st.SearchStrategy:
    """A way to damage a file's bytes: cut it, tear one line, swap a value's type, replace a line by a
    foreign record, or put in bytes that are not UTF-8."""
    return st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("tear"), st.integers(0, 1000), st.floats(0.05, 0.95)),
        st.tuples(st.just("retype"), st.integers(0, 1000), st.sampled_from(['"text"', "null", "true", "[]", "{}", "1e999"])),
        st.tuples(st.just("foreign"), st.integers(0, 1000), st.sampled_from(['{"foo": 1}', "5", '"x"', "[1, 2]", "null"])),
        st.tuples(st.just("bytes"), st.integers(0, 1000), st.binary(min_size=1, max_size=8).map(lambda b: b"\xff\xfe" + b)),
    )


def damage(data: bytes, how: tuple) -> bytes:
    kind, *args = how
    if kind == "truncate":
        return data[:int(len(data) * args[0])]
    lines = data.split(b"\n")
    i = args[0] % max(len(lines) - 1, 1)
    if kind == "tear":
        lines[i] = lines[i][:max(1, int(len(lines[i]) * args[1]))]
    elif kind == "retype":  # the line's first value becomes another type
        lines[i] = re.sub(rb'(": )([^,}\n]+)', b"\\g<1>" + args[1].encode(), lines[i], count=1)
    elif kind == "foreign":
        lines[i] = args[1].encode()
    else:
        lines[i] = lines[i][:3] + args[1]
    return b"\n".join(lines)


def _reads_or_names(read, path: Path, original: bytes, how: tuple, line_numbers: bool) -> None:
    path.write_bytes(damage(original, how))
    try:
        read()
    except UsageError as e:
        message = str(e)
        assert "\n" not in message and path.name in message, message
        if line_numbers and "line" not in message and "cannot read" not in message:
            assert "is not" in message, message
    finally:
        path.write_bytes(original)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(how=_damages())
def test_metrics_jsonl(run, how):
    path = run / "metrics.jsonl"
    _reads_or_names(lambda: read_records(path, "epoch"), path, path.read_bytes(), how, line_numbers=True)


@SETTINGS
@given(how=_damages())
def test_steps_jsonl(run, how):
    path = run / "steps.jsonl"
    _reads_or_names(lambda: read_records(path, "step", torn_last_line_ok=True), path, path.read_bytes(), how,
                    line_numbers=True)


@SETTINGS
@given(how=_damages())
def test_config_json(run, how):
    path = run / "config.json"
    _reads_or_names(lambda: Workdir(run).read_config(), path, path.read_bytes(), how, line_numbers=False)


@SETTINGS
@given(how=_damages())
def test_checkpoint_meta(run, how):
    checkpoint = checkpoints.latest(run)
    path = checkpoint / "meta.json"
    _reads_or_names(lambda: checkpoints.read_meta(checkpoint), path, path.read_bytes(), how, line_numbers=False)


@SETTINGS
@given(how=_damages())
def test_summary_and_study_records(run, how):
    """A study reads a record's summary (is the run finished?) and its epochs: a damaged summary is named
    and the run counts as not finished (so it is redone); damaged epochs are named."""
    path = run / "summary.json"
    original = path.read_bytes()
    path.write_bytes(damage(original, how))
    try:
        complete = runs.run_complete(run, steps=45)
        if complete:
            runs.epoch_records(run)
    except UsageError as e:
        assert "\n" not in str(e) and "summary.json" in str(e)
    finally:
        path.write_bytes(original)


def test_a_torn_line_in_the_middle_of_steps_jsonl_stops_a_resume_naming_it(run, data_dir, tmp_path):
    path = run / "steps.jsonl"
    original = path.read_bytes()
    lines = original.split(b"\n")
    lines[4] = lines[4][:10]
    path.write_bytes(b"\n".join(lines))
    try:
        result = train("torch", run, "--resume", "--max-steps", "50", data_dir=data_dir)
        assert_usage_error(result, f"{path} line 5 is not a step record")
    finally:
        path.write_bytes(original)


def test_a_torn_last_line_of_steps_jsonl_is_what_a_killed_run_leaves_and_is_dropped(run):
    path = run / "steps.jsonl"
    original = path.read_bytes()
    path.write_bytes(original + b'{"step": 99, "epo')
    try:
        assert read_records(path, "step", torn_last_line_ok=True) == read_records(run / "steps.jsonl", "step",
                                                                                    torn_last_line_ok=True)
        assert len(read_records(path, "step", torn_last_line_ok=True)) == original.count(b"\n")
    finally:
        path.write_bytes(original)


def test_a_reader_of_a_live_run_retries_on_the_newest_checkpoint(run, monkeypatch):
    """A run checkpointing every step prunes old checkpoints: one found, then removed before it is read,
    is looked up again instead of failing."""
    newest = checkpoints.latest(run)
    ghost = run / "checkpoints" / "step_999999999"
    calls = []

    def latest_then_real(workdir):
        calls.append(workdir)
        return ghost if len(calls) == 1 else newest

    ghost.mkdir()
    (ghost / "meta.json").write_text("{}")
    monkeypatch.setattr(checkpoints, "latest", latest_then_real)
    try:
        model, _, info = checkpoints.load_weights(run)
    finally:
        (ghost / "meta.json").unlink()
        os.rmdir(ghost)
    assert model == "mlp" and info["path"] == str(newest) and len(calls) == 2
    assert json.loads((newest / "meta.json").read_text())["steps"] == int(info["step"])
