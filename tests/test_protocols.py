"""The protocols' numbers are the protocols': each number of parity_studies.protocols.FIRST is read back
from reports/equivalence/PROTOCOL.md's own statement of it, and each rule is tested on synthetic
records where it decides the verdict (a changed margin, tested epoch, seed range, spread scale,
"every epoch" rule or a verdict without its spread changes a verdict here). SECOND is the table registered in
reports/equivalence/second/PROTOCOL.md, whose prose must state the same numbers."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from cnn_parity.errors import UsageError
from cnn_parity.frameworks import FRAMEWORKS
from parity_studies import equivalence, protocols
from parity_studies.protocols import FIRST

from .test_cli import REPO
from .test_equivalence import fake_run


def prose(path) -> str:
    """A Markdown file's text with its line breaks and runs of spaces made single spaces."""
    return re.sub(r"\s+", " ", (REPO / path).read_text())


def stated(pattern: str, path=FIRST.document) -> re.Match:
    match = re.search(pattern, prose(path))
    assert match, f"{path} no longer states {pattern!r}"
    return match


# ---- the first protocol's numbers, as PROTOCOL.md states them -----------------------------------------

def test_first_protocol_seeds_are_the_stated_ones():
    first, last = map(int, stated(r"\*\*20 seeds per framework and model: (\d+)-(\d+)\*\*").groups())
    assert last - first + 1 == 20
    assert all(plan.seeds == tuple(range(first, last + 1)) for plan in FIRST.models.values())


def test_first_protocol_models_design_and_level_are_the_stated_ones():
    models = stated(r"every model \(([a-z_0-9, ]+)\) at its \*\*full recipe length\*\*").group(1).split(", ")
    assert sorted(FIRST.models) == sorted(models)
    assert stated(r"\*\*(Independent) design\*\*").group(1).lower() in FIRST.designs and len(FIRST.designs) == 1
    assert FIRST.alpha == float(stated(r"All tests are TOST \(two one-sided tests\), α = ([\d.]+) each side").group(1))


def test_first_protocol_margins_are_the_stated_ones():
    error = float(stated(r"1\. \*\*Primary, per model: test error rate at the last epoch\.\*\*.*?"
                         r"\*\*Margin: ×/÷ ([\d.]+)\*\*").group(1))
    loss = float(stated(r"2\. \*\*Secondary: the whole train-loss curve\.\*\*.*?margin \*\*×/÷ ([\d.]+)\*\*").group(1))
    low, high = stated(r"3\. \*\*Secondary: spread\.\*\* Ratio SD_Flax / SD_PyTorch of test accuracy at the last "
                       r"epoch, TOST by two one-sided F-tests on the variance ratio, margin \*\*\[1/(\d+), (\d+)\]\*\*").groups()
    assert low == high
    for plan in FIRST.models.values():
        assert (plan.test_error_margin, plan.train_loss_margin, plan.sd_ratio_margin) == (error, loss, float(high))


def test_first_protocol_tested_epochs_and_escape_are_the_stated_ones():
    model, first_untested, last_untested = stated(r"Tested epochs: all, except (\w+)'s (\d+)-(\d+), its initial "
                                                  r"plateau").groups()
    assert int(first_untested) == 1
    stated(r"the curve is equivalent only if \*\*every\*\* tested epoch is")
    for name, plan in FIRST.models.items():
        assert plan.train_loss_epochs == ((int(last_untested) + 1, None) if name == model else (1, None))
    escape = float(stated(r"Per run, the first epoch whose test accuracy exceeds (\d+) %").group(1)) / 100
    assert {m: p.escape_accuracy for m, p in FIRST.models.items() if p.escape_accuracy is not None} == {model: escape}


def test_the_command_defaults_to_the_first_protocols_seeds_and_design(tmp_path, monkeypatch, capsys):
    """No --seeds, --designs: the protocol's. Seeds 2000-2019 recorded, and one more that is not used."""
    monkeypatch.setitem(equivalence.PILOT_EPOCHS, "mlp", 2)
    for seed in [*FIRST.seeds("mlp"), 1999]:
        for framework in FRAMEWORKS:
            fake_run(tmp_path, "mlp", "independent", framework, seed, 2, 1.0 + 0.01 * (seed % 7), [0.9, 0.9 + seed / 1e5])
    assert equivalence.main(["--models", "mlp", "--report-only", "--budget", "pilot", "--out", str(tmp_path)]) == 0
    assert f"mlp: seeds {list(range(2000, 2020))} complete" in capsys.readouterr().out


# ---- each rule where it decides the verdict ------------------------------------------------------------

def deviations(n: int) -> np.ndarray:
    """n values with mean 0 and sample SD 1 (normal quantiles)."""
    values = stats.norm.ppf((np.arange(n) + 0.5) / n)
    return values / values.std(ddof=1)


def shift_for_upper_bound(upper: float, sd: float, n: int, alpha: float = FIRST.alpha) -> float:
    """The difference of means (equal SDs `sd`, n per arm) whose 1 − 2·alpha Welch bound is `upper`."""
    return upper - stats.t.isf(alpha, 2 * n - 2) * sd * math.sqrt(2 / n)


def write(out, model, losses, accuracies):
    """Records of the seeds 0 .. n − 1 of both frameworks, analysed: losses[framework] a seeds × epochs
    array of train losses, accuracies[framework] the last epoch's test accuracy (fraction) per seed;
    every earlier epoch's accuracy 0.9."""
    seeds, epochs = np.shape(losses["flax"])
    for framework in FRAMEWORKS:
        for seed in range(seeds):
            curve = [0.9] * (epochs - 1) + [accuracies[framework][seed]]
            fake_run(out, model, "independent", framework, seed, epochs, list(losses[framework][seed]), curve)
    return equivalence.analyse(out, model, "independent", list(range(seeds)))


def flat_losses(seeds, epochs):
    loss = np.exp(0.05 * deviations(seeds))[:, None] * np.ones(epochs)
    return {"flax": loss, "torch": loss.copy()}


@pytest.mark.parametrize("decided, equivalent", [(1.18, True), (1.22, False)])
def test_primary_margin_decides_between_1_18_and_1_22(tmp_path, decided, equivalent):
    """Flax's error rate above PyTorch's so that the 90 % interval's far bound is ×`decided`: inside
    ×/÷ 1.2 is equivalent, outside is not (so a margin of 1.15 or 1.25 changes a verdict here)."""
    seeds, sd = 20, 0.1
    log_error = {"torch": sd * deviations(seeds)}  # around 1 % error
    log_error["flax"] = log_error["torch"] + shift_for_upper_bound(math.log(decided), sd, seeds)
    accuracies = {f: (100 - np.exp(v)) / 100 for f, v in log_error.items()}
    result = write(tmp_path, "mlp", flat_losses(seeds, 2), accuracies)
    test = result["test_error_log_ratio_test"]
    assert math.exp(test["ci90"][1]) == pytest.approx(decided, rel=1e-6)
    assert test["equivalent"] is equivalent and result["all_endpoints_equivalent"] is equivalent


@pytest.mark.parametrize("decided, equivalent", [(1.18, True), (1.22, False)])
def test_train_loss_margin_decides_between_1_18_and_1_22(tmp_path, decided, equivalent):
    """Flax's train loss above PyTorch's at both epochs so that each epoch's 90 % interval reaches ×`decided`."""
    seeds, sd = 20, 0.1
    torch = np.exp(sd * deviations(seeds))[:, None] * np.array([1.0, 0.5])
    flax = torch * math.exp(shift_for_upper_bound(math.log(decided), sd, seeds))
    accuracies = {f: 0.98 + 0.001 * deviations(seeds) for f in FRAMEWORKS}
    result = write(tmp_path, "mlp", {"flax": flax, "torch": torch}, accuracies)
    assert [math.exp(t["ci90"][1]) for t in result["train_loss_log_ratio_tests"]] == pytest.approx([decided] * 2)
    assert result["train_loss_equivalent_every_epoch"] is equivalent and result["all_endpoints_equivalent"] is equivalent


@pytest.mark.parametrize("sd_ratio, equivalent", [(1.3, True), (1.75, False)])
def test_spread_margin_is_2_on_the_sd_of_test_accuracy(tmp_path, sd_ratio, equivalent):
    """60 seeds, Flax's accuracy SD `sd_ratio` times PyTorch's, at a different mean error: ratio 1.3
    (90 % CI about [0.96, 1.76]) is within [1/2, 2] and not within [1/1.5, 1.5], nor is its variance
    ratio within [1/2, 2]; 1.75 (CI about [1.3, 2.4]) is not within [1/2, 2]. The SD is of test
    accuracy in points, the same as of test error in points and not of log error."""
    seeds = 60
    accuracies = {"torch": 0.99 + 0.001 * deviations(seeds), "flax": 0.96 + 0.001 * sd_ratio * deviations(seeds)}
    spread = write(tmp_path, "mlp", flat_losses(seeds, 2), accuracies)["spread_test"]
    assert spread["sd_flax"] == pytest.approx(100 * accuracies["flax"].std(ddof=1), rel=1e-6)
    assert spread["sd_torch"] == pytest.approx(100 * accuracies["torch"].std(ddof=1), rel=1e-6)
    assert spread["sd_ratio"] == pytest.approx(sd_ratio, rel=1e-6) and spread["margin"] == 2.0
    assert spread["equivalent"] is equivalent


def test_a_models_verdict_needs_its_spread_too(tmp_path):
    """Equal mean error and equal losses, but Flax's accuracy SD 1.75 times PyTorch's over 60 seeds: the
    test error and the curve are equivalent, the spread is not, so the model is not shown equivalent."""
    seeds = 60
    accuracies = {"torch": 0.99 + 0.001 * deviations(seeds), "flax": 0.99 + 0.00175 * deviations(seeds)}
    result = write(tmp_path, "mlp", flat_losses(seeds, 2), accuracies)
    assert result["test_error_log_ratio_test"]["equivalent"] and result["train_loss_equivalent_every_epoch"]
    assert not result["spread_test"]["equivalent"]
    assert result["all_endpoints_equivalent"] is False


def curve_losses(failing: set[int], epochs: int, seeds: int = 20):
    """Train losses with Flax's epochs in `failing` 1.5 times PyTorch's, every other epoch equal."""
    torch = np.exp(0.05 * deviations(seeds))[:, None] * np.linspace(2.3, 0.5, epochs)
    flax = torch * np.array([1.5 if e + 1 in failing else 1.0 for e in range(epochs)])
    return {"flax": flax, "torch": torch}


@pytest.mark.parametrize("failing, equivalent", [({5}, False), ({6}, False), ({1, 2, 3, 4}, True)])
def test_lenets_curve_is_tested_from_epoch_5_at_every_epoch(tmp_path, failing, equivalent):
    """lenet's curve: one tested epoch not equivalent (5, its first tested, or 6) makes the curve not
    shown, whatever the others; epochs 1-4 (the plateau) are not tested."""
    accuracies = {f: 0.98 + 0.001 * deviations(20) for f in FRAMEWORKS}
    result = write(tmp_path, "lenet", curve_losses(failing, 6), accuracies)
    verdicts = [t["equivalent"] for t in result["train_loss_log_ratio_tests"]]
    assert verdicts == [e + 1 not in failing for e in range(6)]
    assert result["curve_first_epoch"] == 5
    assert result["train_loss_equivalent_every_epoch"] is equivalent
    assert result["all_endpoints_equivalent"] is equivalent


def test_every_other_models_curve_is_tested_from_epoch_1(tmp_path):
    accuracies = {f: 0.98 + 0.001 * deviations(20) for f in FRAMEWORKS}
    result = write(tmp_path, "cnn_2layer", curve_losses({1}, 3), accuracies)
    assert result["curve_first_epoch"] == 1 and not result["train_loss_equivalent_every_epoch"]


# ---- the second protocol: its table is the one in its PROTOCOL.md, and its prose says the same ---------

def test_second_protocol_is_read_from_its_registered_file():
    second = protocols.SECOND
    assert second.document == protocols.SECOND_DOCUMENT and second.name == "second"
    assert second == protocols.load(REPO / protocols.SECOND_DOCUMENT)
    assert sorted(second.models) == ["fashion_cnn", "lenet"] and second.designs == ("independent",)


def test_second_protocols_prose_states_its_tables_numbers():
    second, doc = protocols.SECOND, protocols.SECOND_DOCUMENT
    lenet, fashion = second.models["lenet"], second.models["fashion_cnn"]
    seeds = stated(r"\*\*lenet: seeds (\d+)-(\d+) \((\d+) per framework\); fashion_cnn: seeds (\d+)-(\d+) \((\d+) per "
                   r"framework\)\*\*", doc).groups()
    assert lenet.seeds == tuple(range(int(seeds[0]), int(seeds[1]) + 1)) and len(lenet.seeds) == int(seeds[2])
    assert fashion.seeds == tuple(range(int(seeds[3]), int(seeds[4]) + 1)) and len(fashion.seeds) == int(seeds[5])
    first, last = stated(r"Follow-up \(below, only if triggered\): \*\*(\d+)-(\d+)\*\*", doc).groups()
    assert second.follow_up.seeds == tuple(range(int(first), int(last) + 1)) and second.follow_up.design == "paired"
    assert second.alpha == float(stated(r"\*\*α = ([\d.]+) each side\*\* for E1 and E2", doc).group(1))
    assert stated(r"\*\*95 % confidence interval\*\* lies inside", doc) and second.alpha == 0.025
    epoch, ratio = stated(r"\*\*E1, equivalence \(lenet\):\*\* the mean train loss of epoch (\d+), Flax / PyTorch, "
                          r"lies within ×/÷ (\d+(?:\.\d+)?)", doc).groups()
    assert lenet.train_loss_epochs == (int(epoch), int(epoch)) and lenet.train_loss_margin == float(ratio)
    assert lenet.test_error_margin is None and lenet.sd_ratio_margin is None
    low, high = stated(r"\*\*E2, equivalence \(fashion_cnn\):\*\* SD_Flax / SD_PyTorch of test accuracy \(percentage "
                       r"points\) at the last epoch \(40\) lies within \[1/(\d+), (\d+)\]", doc).groups()
    assert low == high and fashion.sd_ratio_margin == float(high)
    assert fashion.test_error_margin is None and fashion.train_loss_margin is None
    a, b, c, d = map(int, stated(r"\(lenet epochs (\d+)-(\d+), fashion_cnn epochs (\d+)-(\d+), the first protocol's", doc).groups())
    assert (lenet.direction_epochs, fashion.direction_epochs) == ((a, b), (c, d))
    first_model, alpha, second_model = stated(r"\*\*fixed sequence\*\*: (\w+) at α = ([\d.]+); (\w+) at α = [\d.]+ only "
                                              r"if", doc).groups()
    assert second.direction.order == (first_model, second_model) and second.direction.alpha == float(alpha)
    assert lenet.escape_accuracy == float(stated(r"the first epoch whose test accuracy exceeds (\d+) %", doc).group(1)) / 100
    stated(r'levels "1-2", "3", "4 or later"', doc)
    assert lenet.escape_levels == (2, 3, 4)
    flax, torch = stated(r"Flax `([^`]+)` \(today's CPU defaults\), PyTorch `([^`]+)`", doc).groups()
    assert second.flags == {"flax": tuple(flax.split()), "torch": tuple(torch.split())}
    resamples, seed = stated(r"([\d,]+) resamples, generator seed (\d+)", doc).groups()
    assert (second.bootstrap_resamples, second.bootstrap_seed) == (int(resamples.replace(",", "")), int(seed))


def test_a_protocol_table_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('name = "x"\nalpha = 0.05\n[models.lenet]\nseeds = [1, 2]\ntrain_loss_margn = 1.2\n')
    with pytest.raises(UsageError, match="unknown key 'train_loss_margn'"):
        protocols.load(path)
    (tmp_path / "two.md").write_text("```toml\na = 1\n```\n```toml\nb = 2\n```\n")
    with pytest.raises(UsageError, match="2 ```toml blocks"):
        protocols.load(tmp_path / "two.md")
