"""The reproduction command in --quick mode (a smoke run: no thresholds on the figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from parity_studies.reproduction_report import _median_epoch_seconds, gaps, prediction_interval

from .test_cli import REPO


def _reproduce(out, *extra, data_dir=REPO.parent / "shared" / "data"):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "parity_studies.reproduce", "--quick", "--models", "mlp",
                           "--seeds", "0", "1", "--out", str(out), "--data-dir", str(data_dir), *extra], env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_quick_reproduction_writes_the_report_and_skips_finished_runs(data_dir, tmp_path):
    result = _reproduce(tmp_path / "r", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    entry = report["models"]["mlp"]
    for framework in ("flax", "torch"):
        for key in ("test_accuracy_mean", "test_accuracy_std", "test_loss_mean", "seeds", "epochs", "curves"):
            assert key in entry[framework], key
        assert entry[framework]["seeds"] == [0, 1]
    comparison = entry["comparison"]
    assert comparison["test"] == "Welch's t-test, two-sided"
    low, high = comparison["ci95_pp"]
    assert low < comparison["difference_pp"] < high
    assert isinstance(entry["gaps_over_0_5_pp"], list)
    assert all(s > 0 for f in ("flax", "torch") for s in entry[f]["seconds_per_epoch_per_seed"])
    assert (tmp_path / "r" / "mlp.png").read_bytes()[:4] == b"\x89PNG"
    assert "| mlp |" in (tmp_path / "r" / "report.md").read_text()
    summaries = sorted((tmp_path / "r" / "runs" / "mlp").glob("*/summary.json"))
    assert len(summaries) == 4
    stamps = [p.stat().st_mtime_ns for p in summaries]
    assert _reproduce(tmp_path / "r", data_dir=data_dir).returncode == 0  # resumed: every run is complete, none reruns
    assert [p.stat().st_mtime_ns for p in summaries] == stamps

    # --report-only trains nothing and reports the seeds complete in both frameworks
    (tmp_path / "r" / "runs" / "mlp" / "torch-seed1" / "summary.json").unlink()
    result = _reproduce(tmp_path / "r", "--report-only", "--seeds", "0", "1", "2", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r" / "report.json").read_text())["models"]["mlp"]["flax"]["seeds"] == [0]
    assert not (tmp_path / "r" / "runs" / "mlp" / "torch-seed1" / "summary.json").exists()


def test_report_only_without_complete_runs_is_a_one_line_error(tmp_path):
    result = _reproduce(tmp_path / "empty", "--report-only")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "no seed of mlp is complete in both frameworks" in result.stderr


def test_quick_and_full_reproductions_do_not_mix(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "mode.json").write_text('{"quick": false}')
    result = _reproduce(tmp_path / "r")
    assert result.returncode == 2 and "holds a full reproduction" in result.stderr


def test_seconds_per_epoch_ignore_a_paused_epoch():
    # the log holds running totals; epoch 3 was slowed (paused) by 100 s
    records = [{"train_time_s": t, "eval_time_s": 0.5 * e} for e, t in enumerate([10.0, 20.0, 130.0, 140.0], 1)]
    assert _median_epoch_seconds(records) == 10.5


def test_gaps_flag_only_differences_over_half_a_point():
    def entry(accuracy):
        return {"epochs": 2, "curves": {"test_accuracy_mean": [0.5, accuracy]}}

    reported = {"test_accuracy": {"2": 0.9}}
    assert gaps(reported, entry(0.904), entry(0.897), {"difference_pp": 0.7}) == [
        "Flax vs PyTorch final test accuracy: +0.70 pp"]
    assert gaps(reported, entry(0.91), entry(0.9), {"difference_pp": 0.4}) == [
        "test accuracy at epoch 2 vs source: Flax +1.00 pp, PyTorch +0.00 pp"]


def test_a_source_figure_is_judged_against_our_prediction_interval():
    entry = {"epochs": 1, "curves": {"test_accuracy_mean": [0.744], "test_accuracy_per_seed": [[0.738], [0.750], [0.745]]}}
    lo, hi = prediction_interval([0.738, 0.750, 0.745])
    assert lo < 0.744 < hi and hi - lo > 3 * (0.750 - 0.738)  # one new run scatters more than the mean
    assert "is inside the 95% prediction interval for one run from our 6 runs" in gaps({"test_accuracy": {"1": 0.7535}}, entry, entry,
                                                        {"difference_pp": 0.0})[0]
    assert "OUTSIDE" in gaps({"test_accuracy": {"1": 0.80}}, entry, entry, {"difference_pp": 0.0})[0]


COMMITTED = REPO / "reports" / "reproduction"


def test_the_committed_report_is_what_this_version_renders_from_its_json(tmp_path):
    """--from-json reads no runs and changes no figure: rendering the committed report.json again gives
    the committed report.md (but for the line naming the rendering command) and the same JSON."""
    from parity_studies import reproduce

    (tmp_path / "report.json").write_text((COMMITTED / "report.json").read_text())
    assert reproduce.main(["--from-json", str(tmp_path / "report.json"), "--out", str(tmp_path)]) == 0

    def without_rendering_line(text):
        return [line for line in text.splitlines() if not line.startswith("Rendered again from its report.json")]

    assert without_rendering_line((tmp_path / "report.md").read_text()) == without_rendering_line((COMMITTED / "report.md").read_text())
    rendered, committed = (json.loads(p.read_text()) for p in (tmp_path / "report.json", COMMITTED / "report.json"))
    assert rendered.pop("rendered_by") and committed.pop("rendered_by", True)
    assert rendered == committed
    assert all((tmp_path / f"{model}.png").read_bytes()[:4] == b"\x89PNG" for model in rendered["models"])


def test_from_json_trains_nothing_and_overwrites_no_other_report(tmp_path, capsys):
    from parity_studies import reproduce

    report_json = tmp_path / "a" / "report.json"
    report_json.parent.mkdir()
    report_json.write_text((COMMITTED / "report.json").read_text())
    other = tmp_path / "b"
    other.mkdir()
    (other / "report.md").write_text("another report")
    assert reproduce.main(["--from-json", str(report_json), "--out", str(other)]) == 2
    assert (other / "report.md").read_text() == "another report"
    with pytest.raises(SystemExit) as stopped:
        reproduce.main(["--from-json", str(report_json), "--out", str(tmp_path / "a"), "--seeds", "1", "--quick"])
    assert stopped.value.code == 2
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text('{"models": {"mlp": {}}}')
    assert reproduce.main(["--from-json", str(not_a_report), "--out", str(tmp_path / "c")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"python -m parity_studies.reproduce: error: {other} holds another report: render into {report_json.parent} "
                      "or a folder without one",
                      "python -m parity_studies.reproduce: error: --from-json renders a report written earlier and trains "
                      "nothing: leave out --seeds, --quick",
                      f"python -m parity_studies.reproduce: error: {not_a_report} is not a reproduction report written by "
                      "python -m parity_studies.reproduce (KeyError: 'flax')"]
    assert not (tmp_path / "c").exists()
