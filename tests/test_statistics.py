"""parity_studies.statistics against scipy, analytic values and simulation; each test its own generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from parity_studies import statistics


def test_welch_is_scipys_welch():
    rng = np.random.default_rng(11)
    a, b = rng.normal(0, 1, 7), rng.normal(0.5, 2, 9)
    ours, theirs = statistics.welch(a, b), stats.ttest_ind(a, b, equal_var=False)
    assert ours["p"] == pytest.approx(theirs.pvalue, rel=1e-9) and ours["df"] == pytest.approx(theirs.df, rel=1e-9)
    assert ours["ci95"] == pytest.approx(list(theirs.confidence_interval(0.95)), rel=1e-9)


def test_paired_tost_is_two_one_sided_one_sample_t_tests():
    rng = np.random.default_rng(12)
    flax, torch = rng.normal(0, 1, 12), rng.normal(0.1, 1, 12)
    result = statistics.difference_test(flax, torch, margin=0.8, paired=True)
    d = flax - torch
    expected = max(stats.ttest_1samp(d, -0.8, alternative="greater").pvalue,
                   stats.ttest_1samp(d, 0.8, alternative="less").pvalue)
    assert result["tost_p"] == pytest.approx(expected, rel=1e-9)
    assert result["ci90"] == pytest.approx(list(stats.ttest_1samp(d, 0).confidence_interval(0.90)), rel=1e-9)
    assert result["ci95"] == pytest.approx(list(stats.ttest_1samp(d, 0).confidence_interval(0.95)), rel=1e-9)


def test_independent_tost_is_two_one_sided_welch_tests():
    rng = np.random.default_rng(13)
    flax, torch = rng.normal(0, 1, 10), rng.normal(0.2, 2, 10)
    result = statistics.difference_test(flax, torch, margin=1.0, paired=False)
    expected = max(stats.ttest_ind(flax + 1.0, torch, equal_var=False, alternative="greater").pvalue,
                   stats.ttest_ind(flax - 1.0, torch, equal_var=False, alternative="less").pvalue)
    assert result["tost_p"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("p_target, equivalent", [(0.03, True), (0.07, False), (0.095, False)])
def test_tost_decides_at_alpha_0_05_not_0_10(p_target, equivalent):
    """Per-seed differences placed so that TOST's p is exactly `p_target`: p = 0.07 (inside the 95 %
    but not the 90 % interval's reach) must not be declared equivalent."""
    d = np.array([-1.0, 0.0, 1.0, -0.5, 0.5, 0.2, -0.2, 0.0])  # mean 0, sd fixed
    se, df = d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1
    shift = 0.3
    margin = shift + stats.t.isf(p_target, df) * se  # p_upper = P(T <= (shift - margin)/se) = p_target
    result = statistics.difference_test(d + shift, np.zeros_like(d), margin, paired=True)
    assert result["tost_p"] == pytest.approx(p_target, rel=1e-9)
    assert result["equivalent"] is equivalent
    assert bool(result["ci90"][1] < margin) == equivalent  # the decision is the 90 % interval's


def test_tost_power_is_the_simulated_power():
    """The exact power formula against 4,000 simulated TOSTs (Monte-Carlo SE ≈ 0.008)."""
    rng = np.random.default_rng(14)
    n, sd, margin, trials = 9, 1.0, 1.2, 4000
    for paired, true in ((False, 0.0), (True, 0.3)):
        hits = sum(statistics.difference_test(rng.normal(true, sd, n), np.zeros(n) if paired else rng.normal(0, sd, n),
                                              margin, paired)["equivalent"] for _ in range(trials))
        assert hits / trials == pytest.approx(statistics.tost_power(n, sd, margin, paired, true), abs=0.03)


def test_tost_power_matches_the_normal_approximation_for_many_seeds():
    # Large n: s ≈ σ, so power → 2Φ(margin/se − z_0.95) − 1 (true difference 0).
    n, sd, margin = 2000, 1.0, 0.1
    se = sd * math.sqrt(2 / n)
    approx = 2 * stats.norm.cdf(margin / se - stats.norm.isf(0.05)) - 1
    assert statistics.tost_power(n, sd, margin, paired=False) == pytest.approx(approx, abs=0.005)


@pytest.mark.parametrize("paired", [True, False])
def test_seeds_for_power_is_the_first_n_reaching_the_power(paired):
    sd, margin = 1.0, 0.8
    n = statistics.seeds_for_power(sd, margin, paired)
    assert statistics.tost_power(n, sd, margin, paired) >= 0.8 > statistics.tost_power(n - 1, sd, margin, paired)
    # Normal-theory sample size 2(z_0.95 + z_0.90)²σ²/δ² per arm (paired: half), which the t-based exact
    # n exceeds by at most a few seeds.
    z = stats.norm.isf(0.05) + stats.norm.isf(0.10)
    normal_n = (1 if paired else 2) * (z * sd / margin) ** 2
    assert normal_n <= n <= normal_n + 3


def test_spread_tost_is_two_one_sided_f_tests():
    rng = np.random.default_rng(15)
    a, b = rng.normal(0, 1.0, 20), rng.normal(0, 1.3, 20)
    result = statistics.spread_test(a, b, ratio_margin=2.0)
    v = a.var(ddof=1) / b.var(ddof=1)
    expected = max(stats.f.cdf(v / 4, 19, 19), stats.f.sf(v * 4, 19, 19))
    assert result["tost_p"] == pytest.approx(expected, rel=1e-9)
    assert result["equivalent"] == (2.0 > result["ci90"][1] and result["ci90"][0] > 0.5)
    # Its 90 % CI: the SD ratios not rejected by one-sided F-tests at 5 %.
    low, high = result["ci90"]
    assert stats.f.sf(v / low**2, 19, 19) == pytest.approx(0.05, rel=1e-6)
    assert stats.f.cdf(v / high**2, 19, 19) == pytest.approx(0.05, rel=1e-6)


def test_spread_tost_size_at_the_margin_is_alpha():
    """Simulated at a true SD ratio of exactly 2: equivalence within [1/2, 2] is declared ≤ 5 % of the time."""
    rng = np.random.default_rng(16)
    hits = sum(statistics.spread_test(rng.normal(0, 2.0, 15), rng.normal(0, 1.0, 15), 2.0)["equivalent"]
               for _ in range(3000))
    assert hits / 3000 == pytest.approx(0.05, abs=0.015)


def test_plateau_escape_epochs_survival_and_ks():
    curves = [[0.1, 0.2, 0.9], [0.1, 0.6, 0.9], [0.1, 0.1, 0.1]]
    escapes = statistics.escape_epochs(curves, 0.5)
    assert escapes == [3, 2, None]
    assert statistics.survival(escapes, 3) == pytest.approx([1.0, 2 / 3, 1 / 3])
    late, early = [3, 3, 3, None, 3, 3], [1, 1, 1, 1, 1, 2]
    result = statistics.escape_test(early, late, 3)
    assert result["ks_statistic"] == pytest.approx(1.0) and result["ks_p"] < 0.01
    assert statistics.escape_test(early, early, 3)["ks_p"] == pytest.approx(1.0)


def test_alpha_sets_the_deciding_interval_and_the_verdict():
    """At alpha = 0.025 a TOST decides by the 95 % interval: a 90 % CI inside the margin whose 95 % CI
    is not is equivalent at 0.05 and not at 0.025, and the F-based spread test alike."""
    assert statistics.interval_key(0.05) == "ci90" and statistics.interval_key(0.025) == "ci95"
    d = np.array([-1.0, 0.0, 1.0, -0.5, 0.5, 0.2, -0.2, 0.0])
    se, df = d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1
    margin = 0.3 + se * (stats.t.isf(0.05, df) + stats.t.isf(0.025, df)) / 2  # between the two bounds
    loose, strict = (statistics.difference_test(d + 0.3, np.zeros_like(d), margin, True, alpha) for alpha in (0.05, 0.025))
    assert loose["equivalent"] and not strict["equivalent"] and loose["tost_p"] == strict["tost_p"]
    assert strict["ci95"][1] > margin > strict["ci90"][1] and "ci98" in statistics.mean_difference(d, d * 0, True, 0.01)
    rng = np.random.default_rng(17)
    a, b = rng.normal(0, 1.0, 30), rng.normal(0, 1.0, 30)
    s = statistics.spread_test(a, b, 1.0, alpha=0.025)
    ratio = max(s["ci90"][1], 1 / s["ci90"][0]) / 2 + max(s["ci95"][1], 1 / s["ci95"][0]) / 2
    assert statistics.spread_test(a, b, ratio)["equivalent"] and not statistics.spread_test(a, b, ratio, 0.025)["equivalent"]


@pytest.mark.parametrize("sd_ratio, alpha", [(1.0, 0.05), (0.7, 0.025)])
def test_spread_tost_power_is_the_simulated_power(sd_ratio, alpha):
    """The exact F-based power against 3,000 simulated spread TOSTs (Monte-Carlo SE ≤ 0.009)."""
    rng = np.random.default_rng(18)
    n, trials = 25, 3000
    hits = sum(statistics.spread_test(rng.normal(0, sd_ratio, n), rng.normal(0, 1, n), 2.0, alpha)["equivalent"]
               for _ in range(trials))
    assert hits / trials == pytest.approx(statistics.spread_tost_power(n, sd_ratio, 2.0, alpha), abs=0.03)
    # At the margin the power is the test's size, alpha.
    assert statistics.spread_tost_power(200, 2.0, 2.0, alpha) == pytest.approx(alpha, abs=1e-3)


def test_adjusted_difference_test_is_students_t_without_a_factor_and_ignores_level_shifts():
    rng = np.random.default_rng(31)
    flax, torch = rng.normal(0.1, 1, 12), rng.normal(0, 1, 15)
    one = statistics.adjusted_difference_test(flax, torch, ["a"] * 12, ["a"] * 15, 0.8, alpha=0.025)
    student = stats.ttest_ind(flax, torch)  # equal variances: the least-squares fit's t
    assert one["difference"] == pytest.approx(flax.mean() - torch.mean()) and one["df"] == 25
    assert one["ci95"] == pytest.approx(list(student.confidence_interval(0.95)), rel=1e-9)
    expected = max(stats.ttest_ind(flax + 0.8, torch, alternative="greater").pvalue,
                   stats.ttest_ind(flax - 0.8, torch, alternative="less").pvalue)
    assert one["tost_p"] == pytest.approx(expected, rel=1e-9) and one["equivalent"] == (expected < 0.025)
    # A level's own shift is absorbed by its indicator: the framework effect does not move.
    levels_f, levels_t = rng.choice(["1-2", "3", "4+"], 12), rng.choice(["1-2", "3", "4+"], 15)
    base = statistics.adjusted_difference_test(flax, torch, levels_f, levels_t, 0.8)
    shifted = statistics.adjusted_difference_test(flax + 5 * (levels_f == "3"), torch + 5 * (levels_t == "3"),
                                                  levels_f, levels_t, 0.8)
    assert shifted["difference"] == pytest.approx(base["difference"]) and shifted["se"] == pytest.approx(base["se"])
    assert sum(map(sum, base["levels"].values())) == 27
    with pytest.raises(ValueError):  # each framework in a level of its own: no framework effect to estimate
        statistics.adjusted_difference_test(flax, torch, ["a"] * 12, ["b"] * 15, 0.8)


def test_rank_tost_is_two_one_sided_mann_whitney_tests_with_the_hodges_lehmann_interval():
    rng = np.random.default_rng(32)
    flax, torch = rng.normal(0.3, 1, 25), rng.normal(0, 1, 30)
    result = statistics.rank_tost(flax, torch, 1.0, alpha=0.025)
    assert result["hodges_lehmann"] == pytest.approx(np.median(flax[:, None] - torch[None, :]))
    assert result["tost_p"] == pytest.approx(max(stats.mannwhitneyu(flax + 1.0, torch, alternative="greater").pvalue,
                                                 stats.mannwhitneyu(flax - 1.0, torch, alternative="less").pvalue))
    low, high = result["ci95"]
    assert low < result["hodges_lehmann"] < high and result["ci90"][0] > low and result["ci90"][1] < high
    # the bounds are where the one-sided tests stop rejecting at 2.5 %
    assert stats.mannwhitneyu(flax - (low + 1e-6), torch, alternative="greater").pvalue >= 0.025
    assert stats.mannwhitneyu(flax - (low - 1e-3), torch, alternative="greater").pvalue < 0.025
    assert result["equivalent"] == (-1.0 < low and high < 1.0)


def test_brown_forsythe_spread_inverts_its_welch_tests_and_reports_scipys_levene():
    rng = np.random.default_rng(33)
    flax, torch = rng.normal(0, 0.7, 40), rng.normal(0, 1.0, 40)
    result = statistics.brown_forsythe_spread(flax, torch, 2.0, alpha=0.025)
    dx, dy = np.abs(flax - np.median(flax)), np.abs(torch - np.median(torch))
    assert result["ratio"] == pytest.approx(dx.mean() / dy.mean())
    assert result["levene_p"] == pytest.approx(stats.levene(flax, torch, center="median").pvalue)
    low, high = result["ci95"]
    assert stats.ttest_ind(dx, low * dy, equal_var=False, alternative="greater").pvalue == pytest.approx(0.025)
    assert stats.ttest_ind(dx, high * dy, equal_var=False, alternative="less").pvalue == pytest.approx(0.025)
    assert result["equivalent"] == (0.5 < low and high < 2.0)


def test_bootstrap_spread_is_scipys_bca_interval_and_repeats():
    rng = np.random.default_rng(34)
    flax, torch = rng.normal(0, 0.8, 30), rng.normal(0, 1.0, 30)
    result = statistics.bootstrap_spread(flax, torch, 2.0, alpha=0.025, resamples=2000, seed=5)
    assert result == statistics.bootstrap_spread(flax, torch, 2.0, alpha=0.025, resamples=2000, seed=5)
    theirs = stats.bootstrap((flax, torch), lambda a, b, axis: np.std(a, ddof=1, axis=axis) / np.std(b, ddof=1, axis=axis),
                             method="BCa", confidence_level=0.95, n_resamples=2000, rng=np.random.default_rng(5))
    assert result["ci95"] == pytest.approx(list(theirs.confidence_interval), rel=1e-12)
    assert result["ci95"][0] < result["sd_ratio"] < result["ci95"][1]
    assert result["equivalent"] == (0.5 < result["ci95"][0] and result["ci95"][1] < 2.0)


@pytest.mark.parametrize("paired", [False, True])
def test_two_sided_test_is_scipys(paired):
    rng = np.random.default_rng(35)
    flax, torch = rng.normal(0.4, 1, 14), rng.normal(0, 1.5, 14)
    result = statistics.two_sided_test(flax, torch, paired, 0.05)
    theirs = stats.ttest_1samp(flax - torch, 0) if paired else stats.ttest_ind(flax, torch, equal_var=False)
    assert result["p"] == pytest.approx(theirs.pvalue) and result["df"] == pytest.approx(theirs.df)
    assert result["ci"] == pytest.approx(list(theirs.confidence_interval(0.95)))
    assert result["difference"] / result["se"] == pytest.approx(theirs.statistic)
    assert result["rejects"] == (theirs.pvalue < 0.05)
