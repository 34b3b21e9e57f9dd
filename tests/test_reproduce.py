"""The reproduction command in --quick mode (a smoke run: no thresholds on the figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .test_cli import REPO


def _reproduce(out, *extra, data_dir=REPO.parent / "shared" / "data"):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cnn_parity.reproduce", "--quick", "--models", "mlp",
                           "--seeds", "0", "1", "--out", str(out), "--data-dir", str(data_dir), *extra], env=env, capture_output=True,
                          text=True, timeout=900)


def test_quick_reproduction_writes_the_report_and_skips_finished_runs(data_dir, tmp_path):
    result = _reproduce(tmp_path / "r", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    entry = report["models"]["mlp"]
    for framework in ("flax", "torch"):
        for key in ("test_accuracy_mean", "test_accuracy_std", "test_loss_mean", "seeds", "epochs", "curves"):
            assert key in entry[framework], key
        assert entry[framework]["seeds"] == [0, 1]
    assert entry["comparison"]["test"] == "Welch's t-test, two-sided"
    assert (tmp_path / "r" / "mlp.png").read_bytes()[:4] == b"\x89PNG"
    assert "| mlp |" in (tmp_path / "r" / "report.md").read_text()
    summaries = sorted((tmp_path / "r" / "runs" / "mlp").glob("*/summary.json"))
    assert len(summaries) == 4
    stamps = [p.stat().st_mtime_ns for p in summaries]
    assert _reproduce(tmp_path / "r", data_dir=data_dir).returncode == 0  # resumed: every run is complete, none reruns
    assert [p.stat().st_mtime_ns for p in summaries] == stamps


def test_quick_and_full_reproductions_do_not_mix(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "mode.json").write_text('{"quick": false}')
    result = _reproduce(tmp_path / "r")
    assert result.returncode == 2 and "holds a full reproduction" in result.stderr
