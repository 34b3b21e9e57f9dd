"""parity_studies.planning: its vectorised tests decide as parity_studies.statistics does, its powers
match simulation and exact formulas, and its printout runs on the committed first study."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from cnn_parity.frameworks import FRAMEWORKS
from parity_studies import planning, statistics
from parity_studies.protocols import ModelPlan


def test_programme_error_of_a_second_chance():
    assert planning.programme_error(0.05, 0.05) == pytest.approx(0.0975)
    assert planning.programme_error(0.05, 0.025) == pytest.approx(0.07375)


@pytest.mark.parametrize("alpha", [0.05, 0.025])
def test_vectorised_tosts_decide_as_the_statistics_module(alpha):
    rng = np.random.default_rng(21)
    x, y = rng.normal(0.1, 1.0, (300, 15)), rng.normal(0.0, 1.3, (300, 15))
    welch = planning.welch_tost(x, y, 0.9, alpha)
    spread = planning.f_tost(x, y, 2.0, alpha)
    assert 0 < welch.sum() < 300 and 0 < spread.sum() < 300
    assert welch.tolist() == [statistics.difference_test(a, b, 0.9, False, alpha)["equivalent"] for a, b in zip(x, y)]
    assert spread.tolist() == [statistics.spread_test(a, b, 2.0, alpha)["equivalent"] for a, b in zip(x, y)]


@pytest.mark.parametrize("paired", [False, True])
def test_difference_power_is_the_simulated_power(paired):
    rng = np.random.default_rng(22)
    n, sd, difference, trials = 10, 1.0, 0.9, 4000
    if paired:
        p = stats.ttest_1samp(rng.normal(difference, sd, (trials, n)), 0, axis=1).pvalue
    else:
        p = stats.ttest_ind(rng.normal(difference, sd, (trials, n)), rng.normal(0, sd, (trials, n)), axis=1).pvalue
    assert (p < 0.05).mean() == pytest.approx(planning.difference_power(n, sd, difference, 0.05, paired), abs=0.025)
    found = planning.detectable_difference(n, sd, 0.05, paired=paired)
    assert planning.difference_power(n, sd, found, 0.05, paired) == pytest.approx(0.8, abs=1e-6)
    # far out in the tail the power is 1, not NaN
    assert planning.difference_power(60, 0.01, 1.0, 0.05) == pytest.approx(1.0)


def test_first_protocol_pass_rates_are_the_exact_powers_for_normal_runs():
    """Normal runs, one loss epoch: the simulated rates of the primary and the spread are the exact TOST
    powers at the runs' pooled SD (the spread's at an SD ratio of 1 whatever the runs)."""
    rng = np.random.default_rng(23)
    values = {f: {"test_accuracy_pp": 99 - np.exp(rng.normal(0, 0.15, 20)),
                  "train_loss": np.exp(rng.normal(0, 0.05, (20, 1)))} for f in FRAMEWORKS}
    plan = ModelPlan((), test_error_margin=1.2, train_loss_margin=1.2, sd_ratio_margin=2.0)
    rates = planning.first_protocol_pass_rates(values, plan, 20, 0.05, 6000, rng)
    log_error = [np.log(100 - values[f]["test_accuracy_pp"]) for f in FRAMEWORKS]
    sd = planning.pooled_sd(*[v - v.mean() for v in log_error])
    assert rates["primary"] == pytest.approx(statistics.tost_power(20, sd, math.log(1.2), False), abs=0.02)
    assert rates["spread"] == pytest.approx(statistics.spread_tost_power(20, 1.0, 2.0), abs=0.02)
    assert rates["all"] <= min(rates["primary"], rates["curve"], rates["spread"])


def test_the_printout_runs_on_the_first_study(capsys):
    assert planning.main(["--replicates", "200"]) == 0
    text = capsys.readouterr().out
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    for heading in ("Programme-level error", "lenet: epoch-5 train loss", "fashion_cnn: SD ratio",
                    "The first protocol's intersection rule", "The second study's combined claim", "Direction",
                    "Paired follow-up", "Budget"):
        assert sum(h.startswith(f"## {heading}") for h in headings) == 1
    values = planning.first_study()
    assert set(values) == {"mlp", "cnn_base", "cnn_2layer", "lenet", "fashion_cnn"}
    assert values["lenet"]["flax"]["train_loss"].shape == (20, 21)


COMMITTED = planning.FIRST_STUDY.parent / "second" / "planning.md"
PROTOCOL = planning.FIRST_STUDY.parent / "second" / "PROTOCOL.md"
# Planning numbers the second protocol quotes: as the command prints each, and as the protocol rounds it.
QUOTED = {"0.0738": "0.0738", "0.0975": "0.0975", "0.2414": "0.241", "0.2693": "0.269", "0.0610": "0.061",
          "0.1104": "0.110", "0.0306": "0.031", "0.0403": "0.0403", "0.0096": "0.0096", "0.0146": "0.0146",
          **{n: n for n in ["0.968", "0.928", "0.766", "0.914", "0.859", "0.671", "0.970", "0.935", "0.785", "0.965",
                            "0.836", "0.925", "0.986", "0.947", "0.844", "0.734", "0.985", "0.949", "0.843", "0.822",
                            "0.973", "0.727", "0.177", "0.130", "0.954", "0.879", "0.725", "0.562", "2.90", "2.10",
                            "6.74", "6.04", "12.78", "5.0", "17.0", "22.0", "11.0", "1.7", "4.3"]}}


def test_the_committed_planning_is_the_commands_output_and_holds_the_protocols_numbers(tmp_path):
    out = tmp_path / "planning.md"
    assert planning.main(["--out", str(out)]) == 0
    generated = out.read_text().split("\n", 3)[3]  # past the title and the line naming the output file
    assert generated == COMMITTED.read_text().split("\n", 3)[3]
    protocol = " ".join(PROTOCOL.read_text().split())
    def holds(text, number):
        return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", text)

    for printed, quoted in QUOTED.items():
        assert holds(generated, printed), printed
        assert holds(protocol, quoted), quoted
