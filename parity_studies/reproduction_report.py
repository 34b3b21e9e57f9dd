"""The reproduction report: per model, each framework's runs summarised over seeds, the two compared
(Welch), set beside the source's own figures and deviations, as report.json, report.md, one PNG per
model and the README's table. Reads the runs `python -m parity_studies.reproduce` trained in
OUT/runs/MODEL/FRAMEWORK-seedN, or (--from-json) the per-seed summaries of a report written earlier."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cnn_parity.errors import UsageError
from cnn_parity.files import read_json, write_json_atomic
from cnn_parity.provenance import machine_info, versions
from cnn_parity.recipes import MODELS
from cnn_parity.specs import spec
from parity_studies import runs, statistics
from parity_studies.runs import epoch_records



def run_dir(out: Path, model: str, framework: str, seed: int) -> Path:
    return out / "runs" / model / f"{framework}-seed{seed}"


def _stats(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _median_epoch_seconds(records: list[dict]) -> float:
    """Median over epochs of one run's train + evaluation seconds. The log holds running totals (kept across
    resumes), so each epoch's time is a difference; the median ignores the odd epoch slowed by other work on
    the machine or by a pause, which a total divided by the epoch count would not."""
    totals = np.array([0.0] + [r["train_time_s"] + r["eval_time_s"] for r in records])
    return float(np.median(np.diff(totals)))


def summarise(out: Path, model: str, framework: str, seeds: list[int]) -> dict[str, Any]:
    runs = [epoch_records(run_dir(out, model, framework, seed)) for seed in seeds]
    summaries = [json.loads((run_dir(out, model, framework, s) / "summary.json").read_text()) for s in seeds]
    epochs = min(len(r) for r in runs)
    epoch_seconds = [_median_epoch_seconds(r) for r in runs]
    curve = {key: [_stats([r[e][key] for r in runs])[0] for e in range(epochs)]
             for key in ("train_loss", "test_loss", "test_accuracy")}
    accuracy_mean, accuracy_std = _stats([r[-1]["test_accuracy"] for r in runs])
    loss_mean, loss_std = _stats([r[-1]["test_loss"] for r in runs])
    return {
        "seeds": seeds, "epochs": epochs, "steps": summaries[0]["steps"],
        "test_accuracy_mean": accuracy_mean, "test_accuracy_std": accuracy_std,
        "test_loss_mean": loss_mean, "test_loss_std": loss_std,
        "test_accuracy_per_seed": [r[-1]["test_accuracy"] for r in runs],
        # median over seeds as well: one run that shared the machine with other work does not move it
        "seconds_per_epoch": float(np.median(epoch_seconds)),
        "seconds_per_epoch_per_seed": epoch_seconds,
        "num_params": summaries[0]["num_params"],
        "curves": {**{f"{k}_mean": v for k, v in curve.items()},
                   **{f"{key}_per_seed": [[e[key] for e in r[:epochs]] for r in runs]
                      for key in ("train_loss", "test_loss", "test_accuracy")}},
        "device": summaries[0]["device"],
    }


def compare(flax: dict, torch: dict) -> dict[str, Any]:
    """Does a Flax-vs-PyTorch difference in final test accuracy show? Welch's t-test
    (unequal variances; the frameworks draw different random streams, so seeds are not paired) and the 95 %
    confidence interval of the difference it implies. With 3 + 3 seeds the test only detects differences
    of a few seed standard deviations: the interval says how large a difference the data still allow."""
    difference = flax["test_accuracy_mean"] - torch["test_accuracy_mean"]
    a, b = flax["test_accuracy_per_seed"], torch["test_accuracy_per_seed"]
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return {"difference_pp": 100 * difference, "test": None,
                "statement": "too few seeds (or no spread) for a test of the difference"}
    result = statistics.welch(a, b)
    low, high = result["ci95"]
    shown = bool(result["p"] < 0.05)
    return {"difference_pp": 100 * difference, "test": "Welch's t-test, two-sided", "t": result["t"],
            "df": result["df"], "p": result["p"], "ci95_pp": [100 * low, 100 * high],
            "difference_shown": shown,
            "statement": (f"Flax - PyTorch = {100 * difference:+.2f} pp, 95% CI [{100 * low:+.2f}, {100 * high:+.2f}] pp; "
                          f"Welch t = {result['t']:.2f}, df = {result['df']:.1f}, p = {result['p']:.3f} "
                          f"(n = {len(a)} + {len(b)} seeds): "
                          + ("a difference at p < 0.05." if shown else
                             "no difference shown (p ≥ 0.05: absence of evidence, not evidence of equality)."))}


README_MARKER = "reproduction-report"  # the README block `--update-readme` regenerates


def readme_table(report: dict[str, Any]) -> str:
    """The README's table: per model, final test accuracy per framework, the difference with its
    95 % interval and Welch p, and the source's own figure beside ours."""
    lines = ["| model | Flax | PyTorch | Flax − PyTorch [95% CI], Welch p | source's figure: source / Flax / PyTorch |",
             "|---|---:|---:|---|---|"]
    for model, entry in report["models"].items():
        flax, torch, comparison = entry["flax"], entry["torch"], entry["comparison"]
        difference = _difference_cell(comparison)
        figure, source_value, flax_value, torch_value = headline(entry["source"]["reported"], flax, torch)
        source = "none reported" if source_value == "—" else f"{figure}: {source_value} / {flax_value} / {torch_value}"
        lines.append(f"| {model} | {_mean_std(flax['test_accuracy_per_seed'], 100, 2)} "
                     f"| {_mean_std(torch['test_accuracy_per_seed'], 100, 2)} | {difference} | {source} |")
    return "\n".join(lines) + "\n"


def _difference_cell(comparison: dict) -> str:
    """Flax − PyTorch, with its 95 % interval and Welch p where a test was possible."""
    return f"{comparison['difference_pp']:+.2f} pp" + (
        f" [{comparison['ci95_pp'][0]:+.2f}, {comparison['ci95_pp'][1]:+.2f}], p = {comparison['p']:.2f}"
        if comparison["test"] else "")


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    mean, std = _stats(values)
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


# The train-loss lists a recipe's [reported] table may hold, and their column names.
SOURCE_LOSS_LISTS = {"train_loss": "source", "train_loss_run_a": "source run A", "train_loss_run_b": "source run B"}


def source_metric_table(reported: dict, flax: dict, torch: dict) -> list[str]:
    """The source's own figures, epoch by epoch, next to ours (mean ± sample std over seeds)."""
    lines = []
    loss_lists = [name for name in SOURCE_LOSS_LISTS if name in reported]
    if loss_lists:
        heads = [SOURCE_LOSS_LISTS[name] for name in loss_lists]
        lines += [f"| epoch | {' | '.join(heads)} | Flax | PyTorch |", "|---:|" + "---:|" * (len(heads) + 2)]
        for e in range(min(flax["epochs"], torch["epochs"], *(len(reported[n]) for n in loss_lists))):
            lines.append(f"| {e + 1} | " + " | ".join(f"{reported[n][e]:.4f}" for n in loss_lists)
                         + f" | {_mean_std([r[e] for r in flax['curves']['train_loss_per_seed']])}"
                         f" | {_mean_std([r[e] for r in torch['curves']['train_loss_per_seed']])} |")
        lines = ["Mean train loss per epoch:", "", *lines, ""]
    rows = []
    for metric, scale, digits in (("test_loss", 1, 4), ("test_accuracy", 100, 2)):
        for epoch, value in sorted(reported.get(metric, {}).items(), key=lambda kv: int(kv[0])):
            e = int(epoch) - 1
            if e < flax["epochs"] and e < torch["epochs"]:
                rows.append(f"| {metric.replace('_', ' ')}{' (%)' if scale == 100 else ''} | {epoch} | {scale * value:.{digits}f} "
                            f"| {_mean_std([r[e] for r in flax['curves'][f'{metric}_per_seed']], scale, digits)} "
                            f"| {_mean_std([r[e] for r in torch['curves'][f'{metric}_per_seed']], scale, digits)} |")
    if rows:
        lines += ["| source metric | epoch | source | Flax | PyTorch |", "|---|---:|---:|---:|---:|", *rows, ""]
    return lines


def headline(reported: dict, flax: dict, torch: dict) -> tuple[str, str, str, str]:
    """The source's last reported figure, and ours at the same epoch (mean ± std over seeds)."""
    for metric, label in (("test_accuracy", "test acc (%)"), ("train_loss", "train loss"),
                          ("train_loss_run_b", "train loss (run B)")):
        if metric not in reported:
            continue
        if isinstance(reported[metric], dict):  # {epoch: value}
            epoch = max(int(e) for e in reported[metric])
            value = reported[metric][str(epoch)]
        else:  # one value per epoch
            epoch, value = len(reported[metric]), reported[metric][-1]
        if epoch > min(flax["epochs"], torch["epochs"]):  # a --quick run stops before it
            break
        key, scale, digits = ("test_accuracy", 100, 2) if metric == "test_accuracy" else ("train_loss", 1, 4)
        return (f"{label}, epoch {epoch}", f"{scale * value:.{digits}f}",
                *(_mean_std([r[epoch - 1] for r in entry["curves"][f"{key}_per_seed"]], scale, digits)
                  for entry in (flax, torch)))
    return "none reported", "—", "—", "—"


GAP_PP = 0.5  # a gap this large (percentage points) needs an explanation in the report


def prediction_interval(values: list[float]) -> tuple[float, float] | None:
    """95 % prediction interval for one more run (a source's single run, say) from our runs' values:
    mean ± t(0.975, n-1) · s · sqrt(1 + 1/n), assuming seed-to-seed variation is roughly normal."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean, std = _stats(values)
    half = stats.t.ppf(0.975, len(values) - 1) * std * math.sqrt(1 + 1 / len(values))
    return mean - half, mean + half


def gaps(reported: dict, flax: dict, torch: dict, comparison: dict) -> list[str]:
    """Accuracy gaps over GAP_PP percentage points: between the frameworks, and against a source's figure.
    A source figure is one run, so it is judged against the 95 % prediction interval for one run from our
    runs of both frameworks pooled (the same recipe; the Welch test above checks that they agree)."""
    found = []
    if abs(comparison["difference_pp"]) > GAP_PP:
        found.append(f"Flax vs PyTorch final test accuracy: {comparison['difference_pp']:+.2f} pp")
    for epoch, value in sorted(reported.get("test_accuracy", {}).items(), key=lambda kv: int(kv[0])):
        e = int(epoch) - 1
        if e >= min(flax["epochs"], torch["epochs"]):
            continue
        differences = {name: 100 * (entry["curves"]["test_accuracy_mean"][e] - value)
                       for name, entry in (("Flax", flax), ("PyTorch", torch))}
        if all(abs(d) <= GAP_PP for d in differences.values()):
            continue
        gap = f"test accuracy at epoch {epoch} vs source: " + ", ".join(f"{n} {d:+.2f} pp" for n, d in differences.items())
        pooled = [run[e] for entry in (flax, torch) for run in entry["curves"].get("test_accuracy_per_seed", [])]
        interval = prediction_interval(pooled)
        if interval:
            inside = interval[0] <= value <= interval[1]
            gap += (f"; the source's {100 * value:.2f}% is {'inside' if inside else 'OUTSIDE'} the 95% prediction "
                    f"interval for one run from our {len(pooled)} runs, [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]%")
        found.append(gap)
    return found


def plot_model(path: Path, model: str, entry: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for framework, colour in (("flax", "tab:blue"), ("torch", "tab:orange")):
        curves = entry[framework]["curves"]
        epochs = np.arange(1, len(curves["train_loss_mean"]) + 1)
        for key, ax in (("train_loss", loss_ax), ("test_accuracy", acc_ax)):
            per_seed = np.asarray(curves[f"{key}_per_seed"]) * (100 if key == "test_accuracy" else 1)
            ax.plot(epochs, per_seed.mean(0), color=colour, marker="o", ms=3, label=f"{framework} (mean)")
            ax.fill_between(epochs, per_seed.min(0), per_seed.max(0), color=colour, alpha=0.2)
    for name, style in (("train_loss", "k--"), ("train_loss_run_a", "k--"), ("train_loss_run_b", "k:")):
        if name in entry["source"]["reported"]:
            reported = entry["source"]["reported"][name]
            loss_ax.plot(np.arange(1, len(reported) + 1), reported, style, label=f"source {name}")
    source_points = sorted((int(e), 100 * v) for e, v in entry["source"]["reported"].get("test_accuracy", {}).items())
    if source_points:
        acc_ax.plot(*zip(*source_points), "k*", ms=10, linestyle="none", label="source (one run)")
    loss_ax.set(title=f"{model}: train loss", xlabel="epoch", yscale="log")
    acc_ax.set(title=f"{model}: test accuracy (%) — band: min-max over seeds", xlabel="epoch")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(out: Path, seeds_by_model: dict[str, list[int]], quick: bool) -> dict[str, Any]:
    """Summarise the runs in OUT/runs over each model's seeds, then write the report (write_report)."""
    report: dict[str, Any] = {"models": {}, "seeds": seeds_by_model, "quick": quick, "versions": versions(), "machine": machine_info(),
                              "command": " ".join(["python -m parity_studies.reproduce", *sys.argv[1:]])}
    for model, seeds in seeds_by_model.items():
        recipe = runs.recipe(model)
        flax, torch = summarise(out, model, "flax", seeds), summarise(out, model, "torch", seeds)
        deviation = spec(model).deviation if model in MODELS else "a recipe of your own"
        if runs.shortened(model):
            deviation += f"; shortened to {recipe.epochs} epochs (--epochs)"
        report["models"][model] = {"source": {"description": recipe.source, "reported": recipe.reported},
                                   "flax": flax, "torch": torch, "deviation": deviation}
        report["device"] = flax["device"]
    return write_report(out, report)


def write_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """From the per-seed summaries in `report`: the Flax-vs-PyTorch comparison and the gaps of each model
    (set into `report`), then OUT/report.json, OUT/report.md and one PNG per model. Reads no runs, so a
    report written earlier renders again with this version's statistics and wording (--from-json)."""
    md = ["# Reproduction report", "",
          f"Command: `{report['command']}`" + (" (QUICK smoke run: not a result)" if report["quick"] else ""), "",
          *([f"Rendered again from its report.json, training nothing: `{report['rendered_by']}`.", ""]
            if "rendered_by" in report else []),
          "Seeds (each in both frameworks): " + "; ".join(f"{m} {', '.join(map(str, v))}" for m, v in report["seeds"].items())
          + ".", "",
          "| model | source's figure | source | Flax | PyTorch | Flax test acc | PyTorch test acc | Flax − PyTorch "
          "| Flax test loss | PyTorch test loss | s/epoch Flax | s/epoch PyTorch |",
          "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    details = []
    for model, entry in report["models"].items():
        flax, torch, reported = entry["flax"], entry["torch"], entry["source"]["reported"]
        entry["comparison"] = comparison = compare(flax, torch)
        entry["gaps_over_0_5_pp"] = gaps(reported, flax, torch, comparison)
        plot_model(out / f"{model}.png", model, entry)
        figure, source_value, flax_value, torch_value = headline(reported, flax, torch)
        md.append(f"| {model} | {figure} | {source_value} | {flax_value} | {torch_value} "
                  f"| {_mean_std(flax['test_accuracy_per_seed'], 100, 2)} | {_mean_std(torch['test_accuracy_per_seed'], 100, 2)} "
                  f"| {_difference_cell(comparison)} | {flax['test_loss_mean']:.4f} | {torch['test_loss_mean']:.4f} "
                  f"| {flax['seconds_per_epoch']:.1f} | {torch['seconds_per_epoch']:.1f} |")
        params = f"parameters: Flax {flax['num_params']:,}, PyTorch {torch['num_params']:,}" + (
            f", source {reported['num_params']:,}" if "num_params" in reported else "")
        details += [f"## {model}", "", f"Source: {entry['source']['description']}", "", f"![{model}]({model}.png)", "",
                    f"- Epochs run: {flax['epochs']} (Flax), {torch['epochs']} (PyTorch); seeds {flax['seeds']}; {params}.",
                    "- Final test accuracy per seed: Flax "
                    + ", ".join(f"{100 * a:.2f}" for a in flax["test_accuracy_per_seed"]) + "; PyTorch "
                    + ", ".join(f"{100 * a:.2f}" for a in torch["test_accuracy_per_seed"]) + " (%).",
                    f"- {comparison['statement']}",
                    f"- Deviation: {entry['deviation']}",
                    "- Gaps over 0.5 pp: " + ("; ".join(entry["gaps_over_0_5_pp"]) or "none") + ".", "",
                    *source_metric_table(reported, flax, torch)]
    md += ["", "Accuracy and loss: mean ± sample std over seeds, final epoch, full test split. Seconds per epoch: "
           "training + evaluation, median over a run's epochs, then median over seeds. Flax − PyTorch: difference of "
           "the mean final test accuracies, [95% confidence interval] and p of Welch's t-test.", "", *details,
           f"Device: {report.get('device')}; report built on: {report['machine'].get('cpu_model', '?')}, "
           f"{report['machine']['cpu_count']} logical CPUs, {report['machine'].get('memory_gib', '?')} GiB, "
           f"{report['machine']['platform']}; versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text("\n".join(md) + "\n")
    return report


def load_report(path: Path) -> dict[str, Any]:
    """A report written earlier (OUT/report.json), checked to render: every model's summaries compare."""
    report = read_json(path)
    try:
        for entry in report["models"].values():
            compare(entry["flax"], entry["torch"])
            headline(entry["source"]["reported"], entry["flax"], entry["torch"])
        missing = {"seeds", "quick", "command", "machine", "versions"} - report.keys()
        if missing:
            raise KeyError(", ".join(sorted(missing)))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise UsageError(f"{path} is not a reproduction report written by python -m parity_studies.reproduce "
                         f"({type(e).__name__}: {e})") from None
    return report
