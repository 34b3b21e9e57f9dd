"""The equivalence study's statistics (TOST, confidence intervals, power) against scipy and simulation,
and its report built from run folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from cnn_parity import equivalence
from cnn_parity.runs import FRAMEWORKS

RNG = np.random.default_rng(0)


def test_paired_tost_is_two_one_sided_one_sample_t_tests():
    flax, torch = RNG.normal(0, 1, 12), RNG.normal(0.1, 1, 12)
    result = equivalence.difference_test(flax, torch, margin=0.8, paired=True)
    d = flax - torch
    expected = max(stats.ttest_1samp(d, -0.8, alternative="greater").pvalue,
                   stats.ttest_1samp(d, 0.8, alternative="less").pvalue)
    assert result["tost_p"] == pytest.approx(expected, rel=1e-9)
    assert result["ci95"] == pytest.approx(list(stats.ttest_1samp(d, 0).confidence_interval(0.95)), rel=1e-9)


def test_independent_tost_is_two_one_sided_welch_tests():
    flax, torch = RNG.normal(0, 1, 10), RNG.normal(0.2, 2, 10)
    result = equivalence.difference_test(flax, torch, margin=1.0, paired=False)
    expected = max(stats.ttest_ind(flax + 1.0, torch, equal_var=False, alternative="greater").pvalue,
                   stats.ttest_ind(flax - 1.0, torch, equal_var=False, alternative="less").pvalue)
    assert result["tost_p"] == pytest.approx(expected, rel=1e-9)
    welch = stats.ttest_ind(flax, torch, equal_var=False)
    assert result["ci95"] == pytest.approx(list(welch.confidence_interval(0.95)), rel=1e-9)
    assert result["df"] == pytest.approx(welch.df, rel=1e-9)


def test_equivalence_needs_the_90_percent_interval_inside_the_margin():
    same = np.array([1.0, 1.1, 0.9, 1.05, 0.95])
    assert equivalence.difference_test(same, same + 0.01, margin=0.1, paired=True)["equivalent"]
    assert not equivalence.difference_test(same, same + 0.2, margin=0.1, paired=True)["equivalent"]
    identical = equivalence.difference_test(same, same, margin=0.1, paired=True)
    assert identical["equivalent"] and identical["tost_p"] == 0.0


@pytest.mark.parametrize("paired", [True, False])
def test_seeds_for_power_reaches_the_target_power_in_simulation(paired):
    sd, margin = 1.0, 1.0
    n = equivalence.seeds_for_power(sd, margin, paired)
    trials = 1000

    def power(seeds):
        hits = 0
        for _ in range(trials):
            a = RNG.normal(0, sd / math.sqrt(2) if paired else sd, seeds)
            b = RNG.normal(0, sd / math.sqrt(2) if paired else sd, seeds)
            hits += equivalence.difference_test(a, b, margin, paired)["equivalent"]
        return hits / trials

    # The formula is an approximation: within 5 points of the target, and one seed fewer falls short.
    assert power(n) >= equivalence.TARGET_POWER - 0.05
    assert power(n - 1) < power(n) + 0.02


def _fake_run(out, model, design, framework, seed, epochs, loss, accuracy):
    workdir = equivalence.run_dir(out, model, design, framework, seed)
    workdir.mkdir(parents=True)
    records = [{"epoch": e + 1, "steps": 10 * (e + 1), "train_loss": loss * (1 - 0.1 * e), "train_accuracy": 0.5,
                "test_loss": 1.0, "test_accuracy": accuracy, "train_time_s": 1.0, "eval_time_s": 1.0}
               for e in range(epochs)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "summary.json").write_text(json.dumps({"epochs": epochs, "steps": 10 * epochs}))


def test_report_from_run_folders(tmp_path, monkeypatch):
    monkeypatch.setitem(equivalence.BUDGET_EPOCHS, "mlp", 2)
    for seed in range(4):
        for design in equivalence.DEFAULT_DESIGNS:
            for framework in FRAMEWORKS:
                # paired: identical; independent: Flax's loss 20 % higher, accuracies a point apart
                worse = design == "independent" and framework == "flax"
                _fake_run(tmp_path, "mlp", design, framework, seed, 2, (1.2 if worse else 1.0) + 0.01 * seed,
                          0.90 + 0.001 * seed + (0.01 if worse else 0))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- equivalence-report:begin -->\nold\n<!-- equivalence-report:end -->\nrest\n")
    assert equivalence.main(["--models", "mlp", "--seeds", "0", "1", "2", "3", "--report-only", "--out", str(tmp_path),
                             "--update-readme", str(readme)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())["models"]["mlp"]
    assert report["paired"]["test_accuracy_test"]["equivalent"]
    assert report["paired"]["train_loss_equivalent_every_epoch"]
    assert not report["independent"]["test_accuracy_test"]["equivalent"]
    assert not report["independent"]["train_loss_equivalent_every_epoch"]
    assert report["independent"]["test_accuracy_test"]["difference"] == pytest.approx(1.0)
    assert (tmp_path / "mlp.png").stat().st_size > 10_000
    text = readme.read_text()
    assert "old" not in text and "| mlp | 2 of 17 epochs | paired | 4 |" in text and text.endswith("rest\n")


def test_bad_arguments_are_one_line_usage_errors(tmp_path, capsys):
    assert equivalence.main(["--models", "resnet", "--out", str(tmp_path)]) == 2
    assert equivalence.main(["--seeds", "3", "--out", str(tmp_path)]) == 2
    assert equivalence.main(["--seeds", "1", "1", "--out", str(tmp_path)]) == 2
    assert equivalence.main(["--report-only", "--seeds", "0", "1", "--out", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("python -m cnn_parity.equivalence: error: ") for line in err)
