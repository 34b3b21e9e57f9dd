"""The equivalence study: its report built from run records, its command line, and its launcher's
hold on its training children (a killed study leaves no process behind)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cnn_parity.frameworks import FRAMEWORKS
from parity_studies import equivalence

from .test_cli import REPO


def fake_run(out, model, design, framework, seed, epochs, loss, accuracies, workdir=None, summary=None):
    """A finished run's files in its record below `out` (or in `workdir`): its train loss per epoch is
    `loss` (a list) or falls from `loss` (a number) by 10 % of it per epoch; `summary` adds to its
    summary.json."""
    workdir = workdir or equivalence.record_dir(out, model, design, framework, seed)
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"framework": framework}))
    losses = loss if isinstance(loss, (list, tuple)) else [loss * (1 - 0.1 * e) for e in range(epochs)]
    records = [{"epoch": e + 1, "steps": 10 * (e + 1), "train_loss": losses[e], "train_accuracy": 0.5,
                "test_loss": 1.0, "test_accuracy": accuracies[e], "train_time_s": 1.0, "eval_time_s": 1.0}
               for e in range(epochs)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "summary.json").write_text(json.dumps({"epochs": epochs, "steps": 10 * epochs, **(summary or {})}))


def test_report_from_run_records(tmp_path, monkeypatch):
    monkeypatch.setitem(equivalence.PILOT_EPOCHS, "lenet", 3)
    for seed in range(4):
        for design in ("independent", "paired"):
            for framework in FRAMEWORKS:
                # paired: identical; independent: Flax's loss 30 % higher, its error 2 points lower,
                # and Flax's runs leave the plateau at epoch 2, PyTorch's at epoch 3.
                worse = design == "independent" and framework == "flax"
                final = 0.90 + 0.002 * seed + (0.02 if worse else 0)
                curve = [0.11, 0.6 if worse else 0.2, final]
                fake_run(tmp_path, "lenet", design, framework, seed, 3, (1.3 if worse else 1.0) + 0.01 * seed, curve)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- equivalence-report:begin -->\nold\n<!-- equivalence-report:end -->\nrest\n")
    assert equivalence.main(["--models", "lenet", "--seeds", "0", "1", "2", "3", "--designs", "independent", "paired",
                             "--budget", "pilot", "--report-only", "--out", str(tmp_path), "--update-readme",
                             str(readme)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())["models"]["lenet"]
    paired, independent = report["paired"], report["independent"]
    assert paired["paired"] and not independent["paired"]
    assert paired["test_error_log_ratio_test"]["equivalent"] and paired["train_loss_equivalent_every_epoch"]
    assert not independent["test_error_log_ratio_test"]["equivalent"]
    assert not independent["train_loss_equivalent_every_epoch"]
    assert independent["test_accuracy_difference_pp"]["difference"] == pytest.approx(2.0)
    escape = independent["plateau_escape"]
    assert escape["escape_epochs"] == {"flax": [2] * 4, "torch": [3] * 4} and escape["survival"]["flax"] == [1, 0, 0]
    assert report["budget"] == "epoch 3 of 21" and "spread_test" in independent and "spread_test" not in paired
    assert paired["all_endpoints_equivalent"] and not independent["all_endpoints_equivalent"]
    assert not report["all_endpoints_equivalent"]
    assert (tmp_path / "lenet.png").stat().st_size > 10_000
    text = readme.read_text()
    assert "old" not in text and "| lenet | epoch 3 of 21 | paired (paired) | 4 |" in text and text.endswith("rest\n")
    assert "90% CI" in text
    # An endpoint not shown equivalent is reported with the margin its 90 % CI does decide (the protocol's rule).
    assert "epochs 3-3: equivalence not shown at epoch 3 (the 90 % CI decides ×/÷" in text
    spread = independent["spread_test"]  # equal SDs, but 4 seeds decide no margin near [1/2, 2]
    decided = max(spread["ci90"][1], 1 / spread["ci90"][0])
    assert not spread["equivalent"] and decided > 2
    assert f"equivalence not shown (the 90 % CI decides [1/{decided:.3g}, {decided:.3g}])" in text


def test_help_describes_every_design_and_refers_to_no_missing_text():
    help_text = subprocess.run([sys.executable, "-m", "parity_studies.equivalence", "--help"], capture_output=True,
                               text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert "below" not in help_text and "PROTOCOL.md" in help_text
    text = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(help_text.split()))  # argparse wraps at hyphens
    assert all(f'"{design}"' in text for design in equivalence.DESIGNS)


def test_bad_arguments_are_one_line_usage_errors(tmp_path, capsys):
    assert equivalence.main(["--models", "resnet", "--out", str(tmp_path)]) == 2
    assert equivalence.main(["--seeds", "3", "--out", str(tmp_path)]) == 2
    assert equivalence.main(["--seeds", "1", "1", "--out", str(tmp_path)]) == 2
    assert equivalence.main(["--report-only", "--seeds", "0", "1", "--out", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("python -m parity_studies.equivalence: error: ") for line in err)


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains `text` (zombies, already dead, excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or text not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_killed_study_leaves_no_training_process(tmp_path, signum):
    """Kill the study as soon as its two training children start (full lenet runs: minutes each, were
    they left running): SIGTERM and SIGINT are passed on and waited for; on SIGKILL the kernel stops
    the orphans (PR_SET_PDEATHSIG). None survives."""
    scratch = tmp_path / "scratch"
    parent = subprocess.Popen(
        [sys.executable, "-m", "parity_studies.equivalence", "--models", "lenet", "--seeds", "0", "1", "--jobs", "2",
         "--scratch", str(scratch), "--out", str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while len(_processes_naming(str(scratch / "runs"))) < 2:
        assert parent.poll() is None and time.monotonic() < deadline, "the study never started two runs"
        time.sleep(0.1)
    parent.send_signal(signum)
    parent.wait(timeout=60)
    if signum != signal.SIGKILL:
        assert parent.returncode == 128 + signum
        assert parent.stderr.read().decode().strip().endswith("terminated" if signum == signal.SIGTERM else "interrupted")
        assert _processes_naming(str(scratch / "runs")) == []  # waited for before the parent exited
    deadline = time.monotonic() + 30
    while _processes_naming(str(scratch / "runs")):
        assert time.monotonic() < deadline, "a training child outlived the study"
        time.sleep(0.1)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="sends the signal to one thread")
@pytest.mark.parametrize("waiting_for", ["child", "future"])
def test_a_stop_signal_another_thread_received_stops_the_waiting_main_thread(waiting_for):
    """The kernel may hand a process's SIGTERM to any of its threads, and Python runs the handler in the
    main thread only when that thread runs again: a main thread waiting for a training child (reproduce)
    or for a run's future (equivalence) must still stop within moments, not when the run ends."""
    from concurrent.futures import ThreadPoolExecutor

    from parity_studies import runs

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    run_ends = threading.Event()
    try:
        with runs.supervised_children(), ThreadPoolExecutor(1) as pool:
            future = pool.submit(run_ends.wait, 10)  # without slices, a wait ends only with the run
            signal_thread = threading.Thread(
                target=lambda: (time.sleep(0.3), signal.pthread_kill(threading.get_ident(), signal.SIGTERM)))
            started = time.monotonic()
            signal_thread.start()
            try:
                with pytest.raises(runs.Stopped):
                    runs.wait_for_child(child) if waiting_for == "child" else runs.wait_for_future(future)
                assert time.monotonic() - started < 5
            finally:
                run_ends.set()
                signal_thread.join()
    finally:
        child.kill()
        child.wait()


def test_a_failed_run_is_reported_from_its_own_log(tmp_path):
    scratch = tmp_path / "scratch"
    blocked = equivalence.run_dir(scratch, "mlp", "independent", "flax", 0)
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the run's workdir should be")  # the training CLI refuses it (exit 2)
    result = subprocess.run(
        [sys.executable, "-m", "parity_studies.equivalence", "--models", "mlp", "--seeds", "0", "1", "--quick",
         "--scratch", str(scratch), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    log = blocked.parent / "flax-seed0.log"
    child_error = [line for line in log.read_text().splitlines() if "error:" in line][-1].strip()
    assert "not writable" in child_error
    assert "mlp flax seed 0 failed (exit 2)" in error and child_error in error and str(log) in error


def test_finished_runs_are_skipped_and_only_records_are_kept(tmp_path, monkeypatch):
    """Across sessions: a run whose record is complete never trains again, even with its scratch gone;
    one finished in scratch but not yet recorded is recorded without training; a record holds
    runs.RECORD_FILES and nothing else (no weights, no checkpoints)."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    trained = []

    def train(workdir, *args):
        trained.append(workdir)
        fake_run(out, "mlp", "independent", "flax", 1, 17, 1.0, [0.9] * 17, workdir=workdir)

    monkeypatch.setattr(equivalence.runs, "train", train)
    fake_run(out, "mlp", "independent", "flax", 0, 17, 1.0, [0.9] * 17)  # recorded in an earlier session
    equivalence.train(out, scratch, "mlp", "independent", "flax", 0, "full", False, None)
    assert trained == []
    workdir = equivalence.run_dir(scratch, "mlp", "independent", "torch", 0)
    fake_run(out, "mlp", "independent", "torch", 0, 17, 1.0, [0.9] * 17, workdir=workdir)  # finished, not recorded
    (workdir / "model.safetensors").write_bytes(b"weights")
    (workdir / "checkpoints").mkdir()
    equivalence.train(out, scratch, "mlp", "independent", "torch", 0, "full", False, None)
    record = equivalence.record_dir(out, "mlp", "independent", "torch", 0)
    assert trained == [] and sorted(p.name for p in record.iterdir()) == sorted(equivalence.runs.RECORD_FILES)
    equivalence.train(out, scratch, "mlp", "independent", "flax", 1, "full", False, None)
    assert trained == [equivalence.run_dir(scratch, "mlp", "independent", "flax", 1)]
    assert equivalence.runs.run_complete(equivalence.record_dir(out, "mlp", "independent", "flax", 1), 17)


def test_a_resumed_study_counts_its_recorded_runs_from_the_start(tmp_path, monkeypatch, capsys):
    """The progress bar of a study resumed in a new session starts at the runs already recorded, and
    only the others train."""
    out = tmp_path / "out"
    for seed, framework in [(0, "flax"), (0, "torch"), (1, "flax")]:
        fake_run(out, "mlp", "independent", framework, seed, 17, 1.0, [0.9] * 17)
    trained = []

    def train(workdir, *args):
        trained.append(workdir)
        fake_run(out, "mlp", "independent", "torch", 1, 17, 1.0, [0.9] * 17, workdir=workdir)

    monkeypatch.setattr(equivalence.runs, "train", train)
    monkeypatch.setattr(equivalence, "build_report", lambda *args: None)
    assert equivalence.main(["--models", "mlp", "--seeds", "0", "1", "--out", str(out),
                             "--scratch", str(tmp_path / "scratch")]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert trained == [equivalence.run_dir(tmp_path / "scratch", "mlp", "independent", "torch", 1)]
    assert "3/4" in bar.split("4/4")[0] and "0/4" not in bar


def test_readme_equivalence_table_is_what_the_committed_study_report_renders():
    """The README's figures are generated: its block is summary_table of the study's committed report."""
    report = json.loads((REPO / "reports" / "equivalence" / "study" / "report.json").read_text())
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- equivalence-report:begin -->\n")[1].split("<!-- equivalence-report:end -->")[0]
    assert block == "\n".join(equivalence.summary_table(report)) + "\n"
    assert "equivalent (the 90 % CI decides ×/÷ 1.02)" in block  # a passing endpoint states its decided margin too


def test_an_endpoint_that_cannot_be_computed_is_reported_so(tmp_path, monkeypatch):
    """Every Flax run on lenet's plateau ends at the same accuracy: no SD, so no SD ratio. The spread is
    reported as not computable (and not equivalent), and the report covers every model still."""
    monkeypatch.setitem(equivalence.PILOT_EPOCHS, "lenet", 3)
    monkeypatch.setitem(equivalence.PILOT_EPOCHS, "mlp", 3)
    for seed in range(3):
        for framework in FRAMEWORKS:
            plateau = framework == "flax"
            fake_run(tmp_path, "lenet", "independent", framework, seed, 3, 2.3,
                     [0.0958] * 3 if plateau else [0.11, 0.5, 0.9 + 0.01 * seed])
            fake_run(tmp_path, "mlp", "independent", framework, seed, 3, 1.0, [0.8, 0.85, 0.9 + 0.01 * seed])
    assert equivalence.main(["--models", "lenet", "mlp", "--seeds", "0", "1", "2", "--budget", "pilot",
                             "--report-only", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())["models"]
    spread = report["lenet"]["independent"]["spread_test"]
    assert spread["computable"] is False and "no spread in Flax's runs: all 3 at 9.58" in spread["reason"]
    assert not report["lenet"]["all_endpoints_equivalent"] and "spread_test" in report["mlp"]["independent"]
    assert "not computable: no spread in Flax's runs" in (tmp_path / "report.md").read_text()


def test_a_record_cut_short_by_a_kill_is_named_and_recorded_again(tmp_path, monkeypatch, capsys):
    """A record whose summary.json a kill truncated is named, counts as not finished, and is copied again
    from its finished run (whose resume trains nothing); records are written atomically, summary last."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    monkeypatch.setattr(equivalence.runs, "train", lambda workdir, *args: None)  # the run is finished: a no-op
    workdir = equivalence.run_dir(scratch, "mlp", "independent", "flax", 0)
    fake_run(out, "mlp", "independent", "flax", 0, 17, 1.0, [0.9] * 17, workdir=workdir)
    equivalence.train(out, scratch, "mlp", "independent", "flax", 0, "full", False, None)
    summary = equivalence.record_dir(out, "mlp", "independent", "flax", 0) / "summary.json"
    intact = summary.read_bytes()
    summary.write_bytes(intact[:len(intact) // 2])
    equivalence.train(out, scratch, "mlp", "independent", "flax", 0, "full", False, None)
    assert f"{summary} is damaged" in capsys.readouterr().err and summary.read_bytes() == intact
    assert not [p for p in summary.parent.iterdir() if p.name.startswith(".")]
