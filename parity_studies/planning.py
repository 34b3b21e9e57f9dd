"""`python -m parity_studies.planning [--study reports/equivalence/study] [--replicates N]`

The numbers a follow-up equivalence study is planned by, computed from the first study's records
(reports/equivalence/study/records, seeds 2000-2019) alone and printed as Markdown tables:

- the programme-level error of a second chance at an endpoint (`programme_error`);
- the power of the two open endpoints' TOSTs at candidate seeds per framework and levels: lenet's
  epoch-5 train loss (exact under normality, `statistics.tost_power`, and resampled from the first
  study's own epoch-5 values, which are far from normal) and fashion_cnn's SD ratio of last-epoch test
  accuracy (exact F-based, `statistics.spread_tost_power`, and resampled from the standardised values);
- the chance that the first protocol's intersection rule says "equivalent" for every model at 20
  seeds when the frameworks are exactly equivalent (`first_protocol_pass_rates`, simulated from the
  runs' joint spread: every endpoint of a model comes from the same runs);
- the power of a two-sided difference test of the per-run mean log train loss (`difference_power`);
- minutes per run from the records' wall times (`minutes_per_run`).

Resampled and simulated figures use a fixed generator (`--seed`), so the printout repeats exactly;
`--out FILE` writes it there (reports/equivalence/second/planning.md is this command's output with its
defaults, the numbers reports/equivalence/second/PROTOCOL.md quotes).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from cnn_parity.commands import OneLineParser, positive_int, report_errors, require_extra
from cnn_parity.errors import UsageError
from cnn_parity.frameworks import FRAMEWORKS
from cnn_parity.workdir import read_metrics
from parity_studies import statistics
from parity_studies.protocols import FIRST, ModelPlan

FIRST_STUDY = Path(__file__).resolve().parent.parent / "reports" / "equivalence" / "study"
# Start-up of a run outside its recorded wall time (imports, data, compilation), an allowance.
START_UP_S = 15.0


def programme_error(first_alpha: float, second_alpha: float) -> float:
    """The chance that an endpoint whose frameworks differ by exactly the margin is declared equivalent
    by a first study at `first_alpha` or, where that one did not, by an independent second study at
    `second_alpha`: α₁ + (1 − α₁)·α₂ (each TOST's size is at most its α)."""
    return first_alpha + (1 - first_alpha) * second_alpha


# ---- the first study's records ------------------------------------------------------------------------

def first_study(study: Path = FIRST_STUDY, protocol=FIRST) -> dict[str, dict[str, dict]]:
    """Per model and framework of the first study: train loss (seeds × epochs), last-epoch test accuracy
    (pp), first epoch above the escape threshold (lenet) and minutes per run."""
    out = {}
    for model, plan in protocol.models.items():
        out[model] = {}
        for framework in FRAMEWORKS:
            records = [study / "records" / model / "independent" / f"{framework}-seed{s}" for s in plan.seeds]
            metrics = [read_metrics(r) for r in records]
            summaries = [json.loads((r / "summary.json").read_text()) for r in records]
            out[model][framework] = {
                "train_loss": np.array([[e["train_loss"] for e in m] for m in metrics]),
                "test_accuracy_pp": 100 * np.array([m[-1]["test_accuracy"] for m in metrics]),
                "escape_epochs": statistics.escape_epochs([[e["test_accuracy"] for e in m] for m in metrics],
                                                          plan.escape_accuracy or 0.5),
                "wall_minutes": [s["wall_time_s"] / 60 for s in summaries if not s.get("resumed")]}
    return out


def minutes_per_run(values: dict[str, dict], model: str) -> dict[str, float]:
    """Median recorded wall minutes of an uninterrupted run, plus START_UP_S, per framework."""
    return {f: float(np.median(values[model][f]["wall_minutes"])) + START_UP_S / 60 for f in FRAMEWORKS}


def pooled_sd(a, b) -> float:
    return math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)


def sd_upper_bound(sd: float, df: int, confidence: float) -> float:
    """The one-sided `confidence` upper bound of a normal SD estimated with `df` degrees of freedom."""
    from scipy import stats

    return sd * math.sqrt(df / stats.chi2.ppf(1 - confidence, df))


# ---- vectorised tests for simulation (the same decisions as statistics.difference_test / spread_test) --

def welch_tost(x: np.ndarray, y: np.ndarray, margin: float, alpha: float) -> np.ndarray:
    """TOST by Welch's t along the last axis: is the 1 − 2·alpha interval of mean(x) − mean(y) inside ±margin?"""
    from scipy import stats

    n1, n2 = x.shape[-1], y.shape[-1]
    va, vb = x.var(-1, ddof=1) / n1, y.var(-1, ddof=1) / n2
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n1 - 1) + vb**2 / (n2 - 1))
    half = stats.t.ppf(1 - alpha, df) * se
    difference = x.mean(-1) - y.mean(-1)
    return (difference - half > -margin) & (difference + half < margin)


def f_tost(x: np.ndarray, y: np.ndarray, ratio_margin: float, alpha: float) -> np.ndarray:
    """The spread TOST along the last axis: is the 1 − 2·alpha F interval of SD(x) / SD(y) inside [1/r, r]?"""
    from scipy import stats

    d1, d2 = x.shape[-1] - 1, y.shape[-1] - 1
    v = x.var(-1, ddof=1) / y.var(-1, ddof=1)
    low, high = np.sqrt(v / stats.f.isf(alpha, d1, d2)), np.sqrt(v / stats.f.ppf(alpha, d1, d2))
    return (low > 1 / ratio_margin) & (high < ratio_margin)


def resampled_tost_power(flax, torch, n: int, margin: float, alpha: float, true_ratio: float,
                         replicates: int, rng: np.random.Generator) -> float:
    """TOST power on log values resampled (with replacement) from both frameworks' values, each centred
    on its own mean, with Flax's shifted by log `true_ratio`: the power at the shape observed."""
    pool = np.concatenate([flax - np.mean(flax), torch - np.mean(torch)])
    x = rng.choice(pool, (replicates, n)) + math.log(true_ratio)
    return float(welch_tost(x, rng.choice(pool, (replicates, n)), margin, alpha).mean())


def resampled_spread_power(flax, torch, n: int, ratio_margin: float, alpha: float, sd_ratio: float,
                           replicates: int, rng: np.random.Generator) -> float:
    """Spread TOST power on values resampled from both frameworks' standardised values, Flax's scaled
    by `sd_ratio`: the power at the shape observed (the F-test's exactness rests on normal tails)."""
    pool = np.concatenate([(v - np.mean(v)) / np.std(v, ddof=1) for v in (flax, torch)])
    x = sd_ratio * rng.choice(pool, (replicates, n))
    return float(f_tost(x, rng.choice(pool, (replicates, n)), ratio_margin, alpha).mean())


# ---- the first protocol's intersection rule under exact equivalence ------------------------------------

def endpoint_columns(values: dict, plan: ModelPlan) -> tuple[dict[str, np.ndarray], slice]:
    """Per framework a runs × columns array: log test error, log train loss at each tested epoch, test
    accuracy (pp); and the slice of the loss columns."""
    columns = {}
    for f in FRAMEWORKS:
        v = values[f]
        epochs = plan.tested_epochs(v["train_loss"].shape[1])
        columns[f] = np.column_stack([np.log(100 - v["test_accuracy_pp"]),
                                      np.log(v["train_loss"][:, epochs.start - 1:epochs.stop - 1]),
                                      v["test_accuracy_pp"]])
    return columns, slice(1, columns["flax"].shape[1] - 1)


def first_protocol_pass_rates(values: dict, plan: ModelPlan, n: int, alpha: float, replicates: int,
                              rng: np.random.Generator, method: str = "normal") -> dict[str, float]:
    """How often a model passes each endpoint of `plan`, and all of them (its intersection), with `n`
    seeds per framework when both frameworks draw runs from one distribution: the first study's runs,
    each framework centred on its own means (so no difference remains), either as a multivariate normal
    with their covariance ("normal") or resampled whole, with replacement ("bootstrap"). Each
    simulated run keeps the observed dependence between its endpoints and epochs."""
    columns, loss = endpoint_columns(values, plan)
    residuals = np.concatenate([c - c.mean(0) for c in columns.values()])
    df = len(residuals) - 2
    counts = {"primary": 0, "curve": 0, "spread": 0, "all": 0}
    done = 0
    while done < replicates:
        chunk = min(2000, replicates - done)

        def draw():
            if method == "normal":  # cov = residualsᵀ residuals / df
                return np.einsum("rnk,kd->rnd", rng.standard_normal((chunk, n, len(residuals))), residuals) / math.sqrt(df)
            return residuals[rng.integers(0, len(residuals), (chunk, n))]

        x, y = (np.moveaxis(draw(), 1, 2) for _ in FRAMEWORKS)  # replicates × columns × runs
        primary = welch_tost(x[:, 0], y[:, 0], math.log(plan.test_error_margin), alpha)
        curve = welch_tost(x[:, loss], y[:, loss], math.log(plan.train_loss_margin), alpha).all(-1)
        spread = f_tost(x[:, -1], y[:, -1], plan.sd_ratio_margin, alpha)
        for name, passed in (("primary", primary), ("curve", curve), ("spread", spread),
                             ("all", primary & curve & spread)):
            counts[name] += int(passed.sum())
        done += chunk
    return {name: count / replicates for name, count in counts.items()}


# ---- a difference test's power ------------------------------------------------------------------------

def difference_power(n: int, sd: float, difference: float, alpha: float, paired: bool = False) -> float:
    """Power of the two-sided t-test at `alpha` (Welch's with equal spreads and n per arm is the pooled
    t; paired: the one-sample t on n per-seed differences of SD `sd`) when the true difference is
    `difference`: exact under normality (noncentral t)."""
    from scipy import stats

    se, df = (sd / math.sqrt(n), n - 1) if paired else (sd * math.sqrt(2 / n), 2 * n - 2)
    t, shift = stats.t.isf(alpha / 2, df), abs(difference) / se
    # P(T > t) + P(T < −t); the far tail as sf at −shift (scipy's nct.cdf gives NaN far out in it).
    return float(stats.nct.sf(t, df, shift) + stats.nct.sf(t, df, -shift))


def detectable_difference(n: int, sd: float, alpha: float, power: float = 0.8, paired: bool = False) -> float:
    """The smallest true difference the two-sided test finds with `power` (solved on difference_power)."""
    from scipy import optimize

    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
    return float(optimize.brentq(lambda d: difference_power(n, sd, d, alpha, paired) - power, 1e-9 * se, 10 * se))


def mean_log_loss(train_loss: np.ndarray, epochs: Iterable[int]) -> np.ndarray:
    """Per run, the mean over `epochs` (1-based) of the log train loss: the direction test's statistic."""
    epochs = list(epochs)
    return np.log(train_loss[:, [e - 1 for e in epochs]]).mean(1)


# ---- the printout ---------------------------------------------------------------------------------------

def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header, rows) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def report(values: dict, replicates: int, seed: int, design: dict[str, int], alpha: float,
           lenet_seeds=(50, 60, 70), fashion_seeds=(60, 70, 80, 100), levels=(0.05, 0.025),
           pilot: Path | None = None) -> list[str]:
    """The printout: `design` the seeds per framework chosen for lenet and fashion_cnn, `alpha` the
    level chosen; `pilot` a report.json with the paired design's spread."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    margin = math.log(FIRST.models["lenet"].train_loss_margin)
    sd_margin = FIRST.models["fashion_cnn"].sd_ratio_margin
    lines = ["## Programme-level error of a second chance at an endpoint", "",
             *_table(["first study α (each side)", "second study α (each side)", "at most"],
                     [[FIRST.alpha, a, f"{programme_error(FIRST.alpha, a):.4f}"] for a in levels])]

    lenet = {f: np.log(values["lenet"][f]["train_loss"][:, 4]) for f in FRAMEWORKS}
    sd = pooled_sd(*lenet.values())
    sds = {"observed": sd, "80 % upper bound": sd_upper_bound(sd, 38, 0.8)}
    ratios = (1.0, 1.03, 1.065)
    lines += ["## lenet: epoch-5 train loss, log ratio, TOST ×/÷ 1.2", "",
              f"First study: SD of log loss Flax {np.std(lenet['flax'], ddof=1):.4f}, PyTorch "
              f"{np.std(lenet['torch'], ddof=1):.4f}, pooled {sd:.4f} (one-sided 80 % upper bound "
              f"{sds['80 % upper bound']:.4f}); Shapiro-Wilk p = {stats.shapiro(lenet['flax']).pvalue:.3g} (Flax), "
              f"{stats.shapiro(lenet['torch']).pvalue:.3g} (PyTorch); Flax / PyTorch − 1 = "
              f"{math.expm1(np.mean(lenet['flax']) - np.mean(lenet['torch'])):+.3f}.", "",
              "Power, exact under normality at each SD / resampled from the first study's 40 values (shape kept):", ""]
    header = ["α", "seeds per framework", *[f"SD {name}, true ratio {r:g}" for name in sds for r in ratios],
              *[f"resampled, true ratio {r:g}" for r in ratios]]
    rows = []
    for alpha in levels:
        for n in lenet_seeds:
            rows.append([alpha, n, *[f"{statistics.tost_power(n, s, margin, False, math.log(r), alpha):.3f}"
                                     for s in sds.values() for r in ratios],
                         *[f"{resampled_tost_power(lenet['flax'], lenet['torch'], n, margin, alpha, r, replicates, rng):.3f}"
                           for r in ratios]])
    lines += _table(header, rows)

    fashion = {f: values["fashion_cnn"][f]["test_accuracy_pp"] for f in FRAMEWORKS}
    ratio = np.std(fashion["flax"], ddof=1) / np.std(fashion["torch"], ddof=1)
    sd_ratios = (1.0, 0.8, 0.75, 0.7, round(ratio, 2))
    lines += ["## fashion_cnn: SD ratio of last-epoch test accuracy, [1/2, 2], two one-sided F-tests", "",
              f"First study: SD Flax {np.std(fashion['flax'], ddof=1):.3f} pp, PyTorch {np.std(fashion['torch'], ddof=1):.3f} "
              f"pp, ratio {ratio:.3f}; excess kurtosis {stats.kurtosis(fashion['flax']):+.2f} / "
              f"{stats.kurtosis(fashion['torch']):+.2f}.", "",
              "Power, exact under normality / resampled from the 40 standardised values:", ""]
    rows = []
    for alpha in levels:
        for n in fashion_seeds:
            rows.append([alpha, n, *[f"{statistics.spread_tost_power(n, r, sd_margin, alpha):.3f}" for r in sd_ratios],
                         *[f"{resampled_spread_power(fashion['flax'], fashion['torch'], n, sd_margin, alpha, r, replicates, rng):.3f}"
                           for r in sd_ratios]])
    lines += _table(["α", "seeds per framework", *[f"true ratio {r:g}" for r in sd_ratios],
                     *[f"resampled, ratio {r:g}" for r in sd_ratios]], rows)

    lines += ["## The first protocol's intersection rule at 20 seeds under exact equivalence", "",
              "Chance of each verdict \"equivalent\" when both frameworks draw runs from one distribution with the "
              f"first study's spreads ({replicates} simulated studies per model; normal: multivariate normal with "
              "the runs' covariance; bootstrap: runs resampled whole). Models are independent, so the study's chance "
              "is the product.", ""]
    rows, product = [], {"normal": 1.0, "bootstrap": 1.0}
    for model, plan in FIRST.models.items():
        rates = {m: first_protocol_pass_rates(values[model], plan, 20, FIRST.alpha, replicates, rng, m)
                 for m in ("normal", "bootstrap")}
        for m in product:
            product[m] *= rates[m]["all"]
        rows.append([model, *[f"{rates['normal'][k]:.3f} / {rates['bootstrap'][k]:.3f}"
                              for k in ("primary", "curve", "spread", "all")]])
    rows.append(["**study (product)**", "", "", "", f"**{product['normal']:.3f} / {product['bootstrap']:.3f}**"])
    lines += _table(["model", "primary (normal / bootstrap)", "train-loss curve", "spread", "all endpoints"], rows)

    e1 = {(name, r): statistics.tost_power(design["lenet"], s, margin, False, math.log(r), alpha)
          for name, s in sds.items() for r in ratios}
    e2 = {r: statistics.spread_tost_power(design["fashion_cnn"], r, sd_margin, alpha) for r in sd_ratios}
    lines += [f"## The second study's combined claim: both endpoints equivalent (lenet {design['lenet']}, fashion_cnn "
              f"{design['fashion_cnn']} seeds per framework, α = {alpha})", "",
              "The two endpoints come from different runs, so the chance that both are shown is the product of "
              "their exact powers (normal theory).", ""]
    rows = [[f"SD {name}, true ratio {r:g}", f"{e1[name, r]:.3f}", f"true ratio {q:g}", f"{e2[q]:.3f}",
             f"{e1[name, r] * e2[q]:.3f}"]
            for (name, r), q in ((("observed", 1.0), 1.0), (("observed", 1.0), 0.8), (("observed", 1.03), 0.75),
                                 (("80 % upper bound", 1.03), 0.7), (("observed", 1.065), sd_ratios[-1]),
                                 (("80 % upper bound", 1.065), sd_ratios[-1]))]
    lines += _table(["lenet: SD, true loss ratio", "power", "fashion_cnn: SD ratio", "power", "both"], rows)

    lines += ["## Direction: per-run mean log train loss over the tested epochs, two-sided t-test", "",
              "First study (exploratory, seen after its planned analysis): Flax − PyTorch and the pooled SD; the "
              "smallest difference found with 80 % power; the power at the first study's estimate.", ""]
    rows, detectable = [], {}
    for model, epochs, seeds in (("lenet", range(5, 22), design["lenet"]),
                                 ("fashion_cnn", range(1, 41), design["fashion_cnn"])):
        x = {f: mean_log_loss(values[model][f]["train_loss"], epochs) for f in FRAMEWORKS}
        welch = stats.ttest_ind(x["flax"], x["torch"], equal_var=False)
        difference, s = float(np.mean(x["flax"]) - np.mean(x["torch"])), pooled_sd(*x.values())
        for n in sorted({20, seeds}):
            for alpha in (0.05, 0.025):
                rows.append([model, f"{epochs.start}-{epochs.stop - 1}", f"{difference:+.4f} (p = {welch.pvalue:.2f})",
                             f"{s:.4f}", n, alpha, f"{detectable_difference(n, s, alpha):.4f}",
                             f"{difference_power(n, s, difference, alpha):.3f}"])
        detectable[model] = (detectable_difference(seeds, s, 0.05), s)
    lines += _table(["model", "epochs", "first study: Flax − PyTorch", "SD", "seeds per framework", "α (two-sided)",
                     "detectable with 80 %", "power at the first study's estimate"], rows)

    paired = {}
    if pilot is not None and pilot.is_file():
        pilot_models = json.loads(pilot.read_text())["models"]
        for model in detectable:
            p = pilot_models.get(model, {}).get("paired")
            if p:
                d = np.log(np.array(p["train_loss"]["flax"])) - np.log(np.array(p["train_loss"]["torch"]))
                paired[model] = f"{np.std(d.mean(1), ddof=1):.4f} (epochs 1-{p['epochs']})"
    lines += ["## Paired follow-up: 20 seeds per framework, paired t on the same statistic, two-sided α = 0.05", "",
              "The SD of per-seed Flax − PyTorch differences below which 20 paired seeds find the main study's "
              "detectable difference with 80 % power; without any benefit from pairing that SD is √2 × the "
              "per-run SD; the pilot's paired runs (truncated budgets) show what pairing leaves.", ""]
    rows = []
    for model, (difference, s) in detectable.items():
        t = _paired_sd_for(difference, 20)
        rows.append([model, f"{difference:.4f}", f"{t:.4f}", f"{math.sqrt(2) * s:.4f}", paired.get(model, "-")])
    lines += _table(["model", "main study: detectable with 80 % (α = 0.05)", "paired SD that detects it with 80 %",
                     "no benefit from pairing: √2 × SD", "pilot's paired SD of the statistic"], rows)

    lines += ["## Budget (median recorded wall time of uninterrupted runs + start-up allowance)", ""]
    rows, total = [], 0.0
    for model, seeds in (*design.items(), *((f"{m} paired follow-up", 20) for m in design)):
        minutes = minutes_per_run(values, model.split()[0])
        per_seed = sum(minutes.values())
        total += per_seed * seeds if "follow-up" not in model else 0
        rows.append([model, *[f"{v:.2f}" for v in minutes.values()], f"{per_seed:.2f}", seeds,
                     f"{per_seed * seeds / 60:.1f}", f"{per_seed * seeds / 120:.1f}"])
    rows.append(["**main study**", "", "", "", "", f"**{total / 60:.1f}**", f"**{total / 120:.1f}**"])
    lines += _table(["runs", *(f"{f} min/run" for f in FRAMEWORKS), "min per seed (both)", "seeds",
                     "single-core hours", "wall hours at --jobs 2"], rows)
    return lines


def _paired_sd_for(difference: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The SD of per-seed differences at which the two-sided paired t-test with `n` seeds finds
    `difference` with `power`."""
    from scipy import optimize

    return float(optimize.brentq(lambda sd: difference_power(n, sd, difference, alpha, True) - power,
                                 difference / 100, difference * 10))


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m parity_studies.planning", description=__doc__.split("\n\n")[1])
    parser.add_argument("--study", type=Path, default=FIRST_STUDY, help="the first study's folder (its records/)")
    parser.add_argument("--replicates", type=positive_int, default=20_000, help="simulated studies per figure (default 20000)")
    parser.add_argument("--seed", type=int, default=3000, help="the simulations' generator seed (default 3000)")
    parser.add_argument("--lenet-seeds", type=positive_int, default=60, help="the design's seeds per framework (default 60)")
    parser.add_argument("--fashion-seeds", type=positive_int, default=80, help="the design's seeds per framework (default 80)")
    parser.add_argument("--alpha", type=float, default=0.025, help="the design's level, each side (default 0.025)")
    parser.add_argument("--pilot", type=Path, default=FIRST_STUDY.parent / "report.json",
                        help="the pilot's report.json, for the paired design's spread")
    parser.add_argument("--out", type=Path, help="write the Markdown here instead of printing it")
    args = parser.parse_args(argv)
    design = {"lenet": args.lenet_seeds, "fashion_cnn": args.fashion_seeds}

    def body() -> int:
        require_extra("scipy", "studies")
        lines = report(first_study(args.study), args.replicates, args.seed, design, args.alpha, pilot=args.pilot)
        if args.out is None:
            print("\n".join(lines))
            return 0
        title = ["# Planning the second equivalence study", "",
                 "Generated from the first study's records by `python -m parity_studies.planning --out "
                 f"{args.out}` ({args.replicates} simulated studies per figure, generator seed {args.seed}); "
                 f"the design: lenet {args.lenet_seeds}, fashion_cnn {args.fashion_seeds} seeds per framework, "
                 f"α = {args.alpha} each side.", ""]
        try:
            args.out.write_text("\n".join([*title, *lines]).rstrip("\n") + "\n")
        except OSError as e:
            raise UsageError(f"cannot write {args.out}: {e.strerror or e}") from None
        print(f"wrote {args.out}")
        return 0

    return report_errors(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
