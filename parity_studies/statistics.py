"""The statistics the reports use, each implemented once (scipy underneath).

- `welch`: Welch's two-sided t-test of a mean difference, with its confidence interval.
- `mean_difference` / `difference_test`: a Flax − PyTorch mean difference, paired (one-sample t on
  per-seed differences) or independent (Welch), with 90 % (the one TOST decides by) and 95 % intervals;
  TOST equivalence against ±margin.
- `tost_power` / `seeds_for_power`: TOST's exact power under normality, and the seeds per arm it needs.
- `spread_test` / `spread_tost_power`: TOST equivalence of two standard deviations (their ratio within
  [1/r, r]) by two one-sided F-tests, and its exact power under normality.

Every test takes `alpha`, the level of each one-sided test (default ALPHA): equivalence is decided by
the 1 − 2·alpha interval, returned under `interval_key(alpha)` ("ci90" at 0.05, "ci95" at 0.025) beside
the 90 % and 95 % intervals.
- `escape_epochs` / `survival` / `escape_test`: when each run leaves an initial plateau, as a
  distribution (empirical survival curves, two-sample Kolmogorov-Smirnov test).
- Robustness checks of a TOST: `adjusted_difference_test` (the framework coefficient of a least-squares
  fit with a factor), `rank_tost` (Mann-Whitney / Hodges-Lehmann), and of a spread TOST:
  `brown_forsythe_spread` (absolute deviations from the medians), `bootstrap_spread` (BCa interval).
- `two_sided_test`: a difference test (Welch, or paired t) with its 1 − alpha interval, SciPy's.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

ALPHA = 0.05  # each one-sided test of a TOST; equivalent <=> the 90 % CI lies inside the margin


def interval_key(alpha: float) -> str:
    """The key of the 1 − 2·alpha interval, the one a TOST at `alpha` decides by: "ci90" at 0.05."""
    return f"ci{100 * (1 - 2 * alpha):.10g}"


def _levels(alpha: float) -> dict[str, float]:
    """The intervals a test reports: 90 %, 95 % and the one its TOST decides by."""
    return {"ci90": 0.90, "ci95": 0.95, interval_key(alpha): 1 - 2 * alpha}


def _t_interval(mean: float, se: float, df: float, level: float) -> list[float]:
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, df) * se
    return [mean - half, mean + half]


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's t-test (unequal variances, two-sided) of mean(a) − mean(b), with its 95 % CI."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    # Welch-Satterthwaite; with no spread at all the pooled df (the difference is then known exactly).
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
    difference = float(a.mean() - b.mean())
    if se == 0:
        t, p = (0.0, 1.0) if difference == 0 else (math.copysign(math.inf, difference), 0.0)
    else:
        from scipy import stats

        t = difference / se
        p = float(2 * stats.t.sf(abs(t), df))
    return {"difference": difference, "se": se, "df": float(df), "t": t, "p": p,
            "ci95": _t_interval(difference, se, df, 0.95)}


def mean_difference(flax: Sequence[float], torch: Sequence[float], paired: bool,
                    alpha: float = ALPHA) -> dict[str, Any]:
    """Flax − PyTorch mean difference with its standard error, df and 90 % / 95 % CIs (and the
    1 − 2·alpha one, if neither). Paired: the
    mean of per-seed differences (one-sample t); independent: Welch. `sd`: the spread power depends
    on (of per-seed differences if paired, else the two arms' pooled seed-to-seed SD)."""
    flax, torch = np.asarray(flax, np.float64), np.asarray(torch, np.float64)
    if paired:
        d = flax - torch
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        se, df = sd / math.sqrt(len(d)), float(len(d) - 1)
    else:
        w = welch(flax, torch)
        mean, se, df = w["difference"], w["se"], w["df"]
        sd = math.sqrt((flax.var(ddof=1) + torch.var(ddof=1)) / 2)
    # identical values: the difference is known exactly
    intervals = {key: [mean, mean] if se == 0 else _t_interval(mean, se, df, level)
                 for key, level in _levels(alpha).items()}
    return {"n": len(flax), "paired": paired, "difference": mean, "se": se, "df": df, "sd": sd, **intervals}


def difference_test(flax: Sequence[float], torch: Sequence[float], margin: float, paired: bool,
                    alpha: float = ALPHA) -> dict[str, Any]:
    """`mean_difference` and TOST against ±`margin`: "|difference| >= margin" is rejected when both
    one-sided t-tests reject at level `alpha`; p = the larger of their p-values, and equivalent <=>
    p < alpha <=> the 1 − 2·alpha CI (the 90 % one at 0.05) lies strictly inside ±margin."""
    from scipy import stats

    result = mean_difference(flax, torch, paired, alpha)
    mean, se, df = result["difference"], result["se"], result["df"]
    if se == 0:
        p_tost = 0.0 if abs(mean) < margin else 1.0
    else:
        p_lower = stats.t.sf((mean + margin) / se, df)  # H0: difference <= -margin
        p_upper = stats.t.cdf((mean - margin) / se, df)  # H0: difference >= +margin
        p_tost = float(max(p_lower, p_upper))
    return {**result, "margin": margin, "tost_p": p_tost, "equivalent": bool(p_tost < alpha)}


def tost_power(n: int, sd: float, margin: float, paired: bool, true_difference: float = 0.0,
               alpha: float = ALPHA) -> float:
    """Probability that TOST at level `alpha` shows equivalence within ±`margin` with `n` seeds per arm,
    when the true difference is `true_difference` and the spread is `sd` (of per-seed differences if
    paired; else each arm's, equal in both, analysed with the pooled df 2n − 2, which Welch's df equals
    when the sample variances agree). Exact under normality: the estimate is N(true, σ_se²) and
    independent of its estimated standard error s, with (df)(s/σ_se)² ~ χ²(df); equivalence is
    |estimate| + t_(1−α, df)·s < margin, integrated over s."""
    from scipy import integrate, stats

    se, df = (sd / math.sqrt(n), n - 1) if paired else (sd * math.sqrt(2 / n), 2 * n - 2)
    t_crit = stats.t.ppf(1 - alpha, df)

    def given(chi2: float) -> float:
        half = margin - t_crit * se * math.sqrt(chi2 / df)  # the estimate must lie within ±half
        if half <= 0:
            return 0.0
        return stats.norm.cdf((half - true_difference) / se) - stats.norm.cdf((-half - true_difference) / se)

    # Beyond `upper` the interval is wider than the margin; the χ² tails past 1e-12 add nothing.
    upper = min(df * (margin / (t_crit * se)) ** 2, stats.chi2.isf(1e-12, df))
    lower = stats.chi2.ppf(1e-12, df)
    if upper <= lower:
        return 0.0
    value, _ = integrate.quad(lambda c: given(c) * stats.chi2.pdf(c, df), lower, upper, limit=200)
    return float(value)


def seeds_for_power(sd: float, margin: float, paired: bool, power: float = 0.8,
                    true_difference: float = 0.0, most: int = 10_000, alpha: float = ALPHA) -> int | None:
    """The fewest seeds per arm (at least 2) for which `tost_power` reaches `power`; None above `most`."""
    if sd == 0:
        return 2 if abs(true_difference) < margin else None

    def reaches(n: int) -> bool:
        return tost_power(n, sd, margin, paired, true_difference, alpha) >= power

    if not reaches(most):
        return None
    low, high = 2, most  # power grows with n: bisect for the first n that reaches `power`
    if reaches(low):
        return low
    while high - low > 1:
        mid = (low + high) // 2
        if reaches(mid):
            high = mid
        else:
            low = mid
    return high


class NotComputable(ValueError):
    """An endpoint these data cannot decide, e.g. an SD ratio where one arm's runs all ended alike; the
    report says so, with the reason, instead of a verdict."""


def not_computable(kind: str, margin: float, reason: str) -> dict[str, Any]:
    """What a report records for an endpoint it could not compute."""
    return {"kind": kind, "margin": margin, "computable": False, "reason": reason, "equivalent": False}


def spread_test(flax: Sequence[float], torch: Sequence[float], ratio_margin: float,
                alpha: float = ALPHA) -> dict[str, Any]:
    """TOST equivalence of the two arms' standard deviations: H0 "SD_flax / SD_torch >= r or <= 1/r",
    r = `ratio_margin`, by two one-sided F-tests on the variance ratio (exact under normality; an
    F-test is sensitive to heavy tails, which is why spread is a secondary endpoint). Returns the SD
    ratio, its 90 % and 95 % CIs (and the 1 − 2·alpha one), the TOST p and the verdict at `alpha`,
    and the two-sided F-test p of
    "equal SDs" for reference."""
    from scipy import stats

    flax, torch = np.asarray(flax, np.float64), np.asarray(torch, np.float64)
    d1, d2 = len(flax) - 1, len(torch) - 1
    sd_flax, sd_torch = float(flax.std(ddof=1)), float(torch.std(ddof=1))
    for name, arm, sd in (("Flax", flax, sd_flax), ("PyTorch", torch, sd_torch)):
        if sd == 0:
            raise NotComputable(f"no spread in {name}'s runs: all {len(arm)} at {arm[0]:g}, so no SD ratio")
    variance_ratio = (sd_flax / sd_torch) ** 2
    r2 = ratio_margin**2
    p_upper = stats.f.cdf(variance_ratio / r2, d1, d2)  # H0: true variance ratio >= r²
    p_lower = stats.f.sf(variance_ratio * r2, d1, d2)  # H0: true variance ratio <= 1/r²
    p_tost = float(max(p_upper, p_lower))

    def interval(level: float) -> list[float]:
        tail = (1 - level) / 2
        return [math.sqrt(variance_ratio / stats.f.ppf(1 - tail, d1, d2)),
                math.sqrt(variance_ratio / stats.f.ppf(tail, d1, d2))]

    p_equal = float(2 * min(stats.f.cdf(variance_ratio, d1, d2), stats.f.sf(variance_ratio, d1, d2)))
    return {"sd_flax": sd_flax, "sd_torch": sd_torch, "sd_ratio": math.sqrt(variance_ratio),
            **{key: interval(level) for key, level in _levels(alpha).items()}, "margin": ratio_margin,
            "tost_p": p_tost, "equivalent": bool(p_tost < alpha), "f_test_p": p_equal}


def spread_tost_power(n: int, sd_ratio: float, ratio_margin: float, alpha: float = ALPHA) -> float:
    """Probability that `spread_test` at `alpha` shows SD_flax / SD_torch within [1/r, r] with `n` seeds
    per arm when the true ratio is `sd_ratio`. Exact under normality: the sample variance ratio is
    sd_ratio² · F(n − 1, n − 1), and equivalence is F_(1−α)/r² < variance ratio < r²·F_α."""
    from scipy import stats

    d = n - 1
    low = stats.f.isf(alpha, d, d) / ratio_margin**2 / sd_ratio**2
    high = ratio_margin**2 * stats.f.ppf(alpha, d, d) / sd_ratio**2
    return float(max(0.0, stats.f.cdf(high, d, d) - stats.f.cdf(low, d, d)))


def escape_epochs(curves: Sequence[Sequence[float]], threshold: float) -> list[int | None]:
    """Per run, the first epoch (1-based) whose value (test accuracy) exceeds `threshold`; None for a
    run still below it at its last epoch (censored there)."""
    out = []
    for curve in curves:
        above = [e for e, value in enumerate(curve, start=1) if value > threshold]
        out.append(above[0] if above else None)
    return out


def survival(escapes: Sequence[int | None], epochs: int) -> list[float]:
    """The fraction of runs still on the plateau after each epoch 1 .. `epochs` (every run observed to
    the same epoch, so censoring is common to all and this is the Kaplan-Meier estimate)."""
    n = len(escapes)
    return [sum(1 for e in escapes if e is None or e > k) / n for k in range(1, epochs + 1)]


def escape_test(flax: Sequence[int | None], torch: Sequence[int | None], epochs: int) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov test of the escape-epoch distributions (a run not escaped by
    `epochs` counts as epochs + 1: both arms are censored at the same epoch). Epochs are discrete, so
    ties make the test conservative. A difference test: p > 0.05 is not evidence of equality."""
    from scipy import stats

    a = [epochs + 1 if e is None else e for e in flax]
    b = [epochs + 1 if e is None else e for e in torch]
    result = stats.ks_2samp(a, b)
    return {"escape_epochs": {"flax": list(flax), "torch": list(torch)},
            "survival": {"flax": survival(flax, epochs), "torch": survival(torch, epochs)},
            "ks_statistic": float(result.statistic), "ks_p": float(result.pvalue)}


def _tost_decision(result: dict[str, Any], p_lower: float, p_upper: float, margin: float, alpha: float) -> dict[str, Any]:
    p_tost = float(max(p_lower, p_upper))
    return {**result, "margin": margin, "tost_p": p_tost, "equivalent": bool(p_tost < alpha)}


def adjusted_difference_test(flax: Sequence[float], torch: Sequence[float], flax_levels: Sequence[str],
                             torch_levels: Sequence[str], margin: float, alpha: float = ALPHA) -> dict[str, Any]:
    """TOST against ±`margin` on the framework coefficient (Flax − PyTorch) of the ordinary least-squares
    fit of the values on framework and a factor (each run's level; one indicator per level present but
    the first), t with the residual df. `levels`: runs per level and framework."""
    from scipy import stats

    y = np.concatenate([np.asarray(flax, np.float64), np.asarray(torch, np.float64)])
    levels = list(flax_levels) + list(torch_levels)
    present = sorted(set(levels))
    x = np.column_stack([np.ones(len(y)), np.r_[np.ones(len(flax)), np.zeros(len(torch))],
                         *[[float(level == name) for level in levels] for name in present[1:]]])
    coefficients, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    df = len(y) - x.shape[1]
    if rank < x.shape[1] or df < 1:
        raise ValueError("the framework effect is not estimable beside the factor (a level holds one framework only "
                         "and no other level is shared, or too few runs)")
    residuals = y - x @ coefficients
    se = math.sqrt(residuals @ residuals / df * np.linalg.inv(x.T @ x)[1, 1])
    mean = float(coefficients[1])
    result = {"n": [len(flax), len(torch)], "difference": mean, "se": se, "df": float(df),
              "levels": {str(name): [sum(1 for v in flax_levels if v == name),
                                     sum(1 for v in torch_levels if v == name)] for name in present},
              **{key: _t_interval(mean, se, df, level) for key, level in _levels(alpha).items()}}
    return _tost_decision(result, stats.t.sf((mean + margin) / se, df), stats.t.cdf((mean - margin) / se, df),
                          margin, alpha)


def _invert(rejects, low: float, high: float) -> float:
    """The boundary between where the monotone `rejects` holds (at `low`) and where it does not (at `high`)."""
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if rejects(mid) else (low, mid)
    return float((low + high) / 2)


def rank_tost(flax: Sequence[float], torch: Sequence[float], margin: float, alpha: float = ALPHA) -> dict[str, Any]:
    """TOST of a location shift (Flax − PyTorch) against ±`margin` by two one-sided Mann-Whitney tests
    (SciPy's), with the Hodges-Lehmann estimate (the median of all pairwise differences) and its
    1 − 2·alpha interval: the shifts neither one-sided test at alpha rejects. Assumes the two
    distributions differ by a shift."""
    from scipy import stats

    x, y = np.asarray(flax, np.float64), np.asarray(torch, np.float64)
    differences = (x[:, None] - y[None, :]).ravel()

    def p_greater(shift: float) -> float:  # H0: the true shift <= `shift`
        return float(stats.mannwhitneyu(x - shift, y, alternative="greater").pvalue)

    def p_less(shift: float) -> float:  # H0: the true shift >= `shift`
        return float(stats.mannwhitneyu(x - shift, y, alternative="less").pvalue)

    span = differences.max() - differences.min() + 1.0
    low, high = differences.min() - span, differences.max() + span

    def interval(level: float) -> list[float]:
        tail = (1 - level) / 2
        return [_invert(lambda d: p_greater(d) < tail, low, high), _invert(lambda d: p_less(d) < tail, high, low)]

    result = {"n": [len(x), len(y)], "hodges_lehmann": float(np.median(differences)),
              **{key: interval(level) for key, level in _levels(alpha).items()}}
    return _tost_decision(result, p_greater(-margin), p_less(margin), margin, alpha)


def brown_forsythe_spread(flax: Sequence[float], torch: Sequence[float], ratio_margin: float,
                          alpha: float = ALPHA) -> dict[str, Any]:
    """TOST that the spreads' ratio lies in [1/r, r], on the Brown-Forsythe scale: each value's absolute
    deviation from its framework's median, whose mean ratio is the SD ratio in any location-scale
    family. Two one-sided Welch tests (SciPy's): Flax's deviations against PyTorch's times r (H0: ratio
    >= r) and times 1/r (H0: ratio <= 1/r); the 1 − 2·alpha interval of the ratio by inverting them.
    `levene_p`: SciPy's Brown-Forsythe test of equal spreads (`levene(center="median")`), a difference
    test."""
    from scipy import optimize, stats

    x, y = (np.asarray(v, np.float64) for v in (flax, torch))
    dx, dy = np.abs(x - np.median(x)), np.abs(y - np.median(y))
    ratio = float(dx.mean() / dy.mean())

    def p(scale: float, alternative: str) -> float:
        return float(stats.ttest_ind(dx, scale * dy, equal_var=False, alternative=alternative).pvalue)

    def bound(alternative: str, tail: float, far: float) -> float:
        """Where the one-sided test stops rejecting, between the estimate and `far`; `far` (0 or ∞) if it
        still does not reject there (few runs: the interval is unbounded)."""
        end = ratio * (1e-6 if far == 0 else 1e6)
        if p(end, alternative) >= tail:
            return far
        return float(optimize.brentq(lambda r: p(r, alternative) - tail, *sorted((ratio, end))))

    def interval(level: float) -> list[float]:
        tail = (1 - level) / 2
        return [bound("greater", tail, 0.0), bound("less", tail, math.inf)]

    result = {"mean_deviation_flax": float(dx.mean()), "mean_deviation_torch": float(dy.mean()), "ratio": ratio,
              **{key: interval(level) for key, level in _levels(alpha).items()},
              "levene_p": float(stats.levene(x, y, center="median").pvalue)}
    return _tost_decision(result, p(1 / ratio_margin, "greater"), p(ratio_margin, "less"), ratio_margin, alpha)


def bootstrap_spread(flax: Sequence[float], torch: Sequence[float], ratio_margin: float, alpha: float = ALPHA,
                     resamples: int = 9999, seed: int = 0) -> dict[str, Any]:
    """The BCa bootstrap interval (SciPy's `bootstrap`, the two samples resampled independently, a
    generator seeded with `seed`) of SD_flax / SD_torch at 1 − 2·alpha (and 90 %, 95 %); "equivalent"
    iff the 1 − 2·alpha interval lies inside [1/r, r]. No p-value."""
    from scipy import stats

    x, y = (np.asarray(v, np.float64) for v in (flax, torch))

    def sd_ratio(a, b, axis=-1):
        return np.std(a, ddof=1, axis=axis) / np.std(b, ddof=1, axis=axis)

    intervals = {}
    for key, level in _levels(alpha).items():
        # The statistic is the SD ratio itself, as the protocol names it (BCa's jackknife acceleration is not
        # invariant under a log). A resample of a few runs can repeat one value (SD 0: a ratio of 0 or
        # inf); such resamples are the extremes they are in the percentiles, not an error to print.
        with np.errstate(divide="ignore", invalid="ignore"):
            found = stats.bootstrap((x, y), sd_ratio, vectorized=True, paired=False, method="BCa",
                                    confidence_level=level, n_resamples=resamples, rng=np.random.default_rng(seed))
        intervals[key] = [float(b) for b in found.confidence_interval]
    low, high = intervals[interval_key(alpha)]
    return {"sd_ratio": float(sd_ratio(x, y)), **intervals, "margin": ratio_margin,
            "resamples": resamples, "seed": seed, "equivalent": bool(1 / ratio_margin < low and high < ratio_margin)}


def two_sided_test(flax: Sequence[float], torch: Sequence[float], paired: bool, alpha: float) -> dict[str, Any]:
    """A difference test of Flax − PyTorch, two-sided at `alpha`: Welch's t (SciPy's `ttest_ind`,
    `equal_var=False`) or, paired, the one-sample t on per-seed differences (`ttest_1samp`); the
    estimate, its standard error, df, p, the 1 − alpha interval and whether it rejects."""
    from scipy import stats

    x, y = (np.asarray(v, np.float64) for v in (flax, torch))
    if paired:
        d = x - y
        test, se = stats.ttest_1samp(d, 0.0), float(d.std(ddof=1) / math.sqrt(len(d)))
    else:
        test = stats.ttest_ind(x, y, equal_var=False)
        se = float(math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y)))
    ci = test.confidence_interval(1 - alpha)
    return {"n": [len(x), len(y)], "paired": paired, "difference": float(x.mean() - y.mean()), "se": se,
            "df": float(test.df), "p": float(test.pvalue), "alpha": alpha, "ci": [float(ci.low), float(ci.high)],
            "rejects": bool(test.pvalue < alpha)}
