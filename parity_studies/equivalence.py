"""`python -m parity_studies.equivalence [--models ...] [--seeds ...] [--designs ...] --out DIR`

Do Flax and PyTorch compute the same thing? Trains every model over many seeds in both frameworks,
through the training CLIs, and tests each Flax − PyTorch difference for equivalence (TOST, α = 0.05
each side: equivalent <=> the 90 % interval lies inside the margin). The defaults are the endpoints,
margins and seeds of reports/equivalence/PROTOCOL.md (parity_studies/protocols.py, FIRST):
primary, the ratio of test error rates at the full recipe length within ×/÷ 1.2; secondary, the
train-loss ratio at every epoch within ×/÷ 1.2 (intersection-union), the ratio of seed-to-seed SDs
within [1/2, 2], and for lenet the epoch each run leaves its initial plateau (survival curves,
two-sample KS test). Designs: "independent", each framework's own random generators (what two users
of the two frameworks get); "paired", per seed the same initial weights and the same batches in both
(so a seed's difference is numerical divergence alone, plus fashion_cnn's own dropout masks);
"shared-init" and "shared-order", one of those two streams shared. All but "independent" are
analysed paired by seed. Run records (config, metrics, summary; never weights) go to OUT/records, the
training workdirs (checkpoints, weights, logs) to --scratch (default OUT/scratch, which git ignores);
finished runs are skipped and interrupted ones resume, so the study can span sessions.

Writes OUT/report.json, OUT/report.md and one PNG per model. `--quick` is a smoke run (a few steps
per run).

`--protocol second` runs and analyses reports/equivalence/second/PROTOCOL.md instead, whose table the
command reads from that file (parity_studies/protocols.py): lenet's epoch-5 train loss and
fashion_cnn's SD ratio at α = 0.025 each side, their robustness checks, the direction test and, with
`--follow-up`, its paired runs (parity_studies/protocol_report.py); it reports nothing until every
planned run is recorded (`--final`: report with runs missing, named).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from cnn_parity.commands import OneLineParser, number, positive_int, report_errors, require_extra
from cnn_parity.errors import RunError, UsageError
from cnn_parity.files import write_json_atomic
from cnn_parity.frameworks import FRAMEWORKS
from cnn_parity.provenance import machine_info, source, versions
from cnn_parity.recipes import MODELS
from parity_studies import protocol_report, protocols, runs, statistics
from cnn_parity.markdown import replace_marked_block
from parity_studies.protocols import DESIGNS, FIRST, ModelPlan, Protocol

# The protocol (reports/equivalence/PROTOCOL.md gives the reason for each number): its endpoints and
# margins analyse every run set of this command, its designs and seeds are the defaults.
PROTOCOL = FIRST
ALPHA = PROTOCOL.alpha

# The pilot study's budgets (epochs): ten seeds per framework and design in about two hours.
PILOT_EPOCHS = {"mlp": 17, "cnn_base": 2, "cnn_2layer": 1, "lenet": 3, "fashion_cnn": 1}
BUDGETS = ("full", "pilot")


def budget_epochs(model: str, budget: str) -> int:
    return runs.recipe(model).epochs if budget == "full" else PILOT_EPOCHS[model]


def run_dir(scratch: Path, model: str, design: str, framework: str, seed: int) -> Path:
    """A run's training workdir (checkpoints, weights) below the scratch folder."""
    return scratch / "runs" / model / design / f"{framework}-seed{seed}"


def record_dir(out: Path, model: str, design: str, framework: str, seed: int) -> Path:
    """A finished run's record (runs.RECORD_FILES) below the output folder."""
    return out / "records" / model / design / f"{framework}-seed{seed}"


def _complete(out: Path, model: str, design: str, framework: str, seed: int, budget: str, quick: bool) -> bool:
    record = record_dir(out, model, design, framework, seed)
    return runs.finished(record, budget_epochs(model, budget), quick)


def complete_seeds(out: Path, model: str, seeds: list[int], designs: list[str], budget: str, quick: bool) -> list[int]:
    """The seeds whose runs are complete in both frameworks and every one of `designs`."""
    return [s for s in seeds if all(_complete(out, model, d, f, s, budget, quick) for d in designs for f in FRAMEWORKS)]


def train(out: Path, scratch: Path, model: str, design: str, framework: str, seed: int, budget: str, quick: bool,
          data_dir: str | None, pinned: Sequence[str] = ()) -> None:
    """Train one run in its scratch workdir unless its record in `out` is complete, then keep its record.
    `pinned`: training-CLI flags a protocol fixes for this framework."""
    if _complete(out, model, design, framework, seed, budget, quick):
        return
    init_rng, shuffle_rng = DESIGNS[design]
    flags = [*pinned, "--set", f"init_rng={init_rng}", "--set", f"shuffle_rng={shuffle_rng}"]
    flags += ["--max-steps", str(runs.QUICK_STEPS)] if quick else ["--epochs", str(budget_epochs(model, budget))]
    workdir = run_dir(scratch, model, design, framework, seed)
    if not runs.finished(workdir, budget_epochs(model, budget), quick):
        runs.train(workdir, framework, model, seed, flags, data_dir, run_environment(scratch))
    runs.keep_record(workdir, record_dir(out, model, design, framework, seed))


def run_environment(scratch: Path) -> dict[str, str]:
    """Every run on one thread (PyTorch's and XLA's intra-op pools), so results do not depend on how
    many runs share the machine (--jobs): thread counts change float summation orders. Flax runs
    share one persistent XLA compilation cache: the same programs compile once, not once per run."""
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false",
                                   "intra_op_parallelism_threads=1"]).strip(),
            "CNN_PARITY_JAX_CACHE": str((scratch / "xla-cache").resolve())}


def prepare_scratch(scratch: Path) -> None:
    """Create the scratch folder; one this command creates holds a .gitignore of everything in it, so
    its checkpoints and weights are never committed with the records beside it."""
    if not scratch.exists():
        scratch.mkdir(parents=True)
        (scratch / ".gitignore").write_text("# training workdirs: checkpoints and weights, never committed\n*\n")


# ---- analysis ----------------------------------------------------------------------------------------

def equivalence_test(flax, torch, margin: float, paired: bool) -> dict[str, Any]:
    """TOST, with the seeds per framework it would need for 80 % power at the spread measured."""
    test = statistics.difference_test(flax, torch, margin, paired)
    return {**test, "seeds_for_power": statistics.seeds_for_power(test["sd"], margin, paired)}


def analyse(out: Path, model: str, design: str, seeds: list[int], plan: ModelPlan | None = None) -> dict[str, Any]:
    """Every endpoint of one model and design over `seeds`, margins from `plan` (the protocol's for the
    model): paired unless the design is independent."""
    plan = plan or PROTOCOL.models[model]
    records = {f: [runs.epoch_records(record_dir(out, model, design, f, s)) for s in seeds] for f in FRAMEWORKS}
    epochs = min(len(r) for rs in records.values() for r in rs)
    paired = design != "independent"
    curves = {f: np.array([[e["test_accuracy"] for e in r[:epochs]] for r in rs]) for f, rs in records.items()}
    accuracy = {f: 100 * c[:, -1] for f, c in curves.items()}
    train_loss = {f: np.array([[e["train_loss"] for e in r[:epochs]] for r in rs]) for f, rs in records.items()}
    tested = plan.tested_epochs(epochs)
    loss_margin = math.log(plan.train_loss_margin)
    loss_tests = [equivalence_test(np.log(train_loss["flax"][:, e]), np.log(train_loss["torch"][:, e]), loss_margin, paired)
                  for e in range(epochs)]
    result = {
        "seeds": seeds, "paired": paired, "epochs": epochs, "steps": records["flax"][0][epochs - 1]["steps"],
        "test_accuracy_pp": {f: a.tolist() for f, a in accuracy.items()},
        "train_loss": {f: a.tolist() for f, a in train_loss.items()},
        # Primary: log(error_flax / error_torch) per seed, TOST within ±log of the protocol's margin.
        "test_error_log_ratio_test": equivalence_test(np.log(100 - accuracy["flax"]), np.log(100 - accuracy["torch"]),
                                                      math.log(plan.test_error_margin), paired),
        "test_accuracy_difference_pp": statistics.mean_difference(accuracy["flax"], accuracy["torch"], paired),
        "train_loss_log_ratio_tests": loss_tests,
        "curve_first_epoch": tested.start,
        # Intersection-union: equivalence at every tested epoch holds at level α without correction.
        "train_loss_equivalent_every_epoch": all(loss_tests[e - 1]["equivalent"] for e in tested),
    }
    if not paired:
        try:
            result["spread_test"] = statistics.spread_test(accuracy["flax"], accuracy["torch"], plan.sd_ratio_margin)
        except statistics.NotComputable as e:
            result["spread_test"] = statistics.not_computable("sd ratio", plan.sd_ratio_margin, str(e))
    # The model's verdict is the intersection of its equivalence endpoints (plateau escape is descriptive).
    result["all_endpoints_equivalent"] = (result["test_error_log_ratio_test"]["equivalent"]
                                          and result["train_loss_equivalent_every_epoch"]
                                          and result.get("spread_test", {"equivalent": True})["equivalent"])
    if plan.escape_accuracy is not None:
        escapes = {f: statistics.escape_epochs(c, plan.escape_accuracy) for f, c in curves.items()}
        result["plateau_escape"] = {"threshold": plan.escape_accuracy,
                                    **statistics.escape_test(escapes["flax"], escapes["torch"], epochs)}
    return result


# ---- report ------------------------------------------------------------------------------------------

def _ratio_pct(log_ratio: float) -> float:
    return 100 * math.expm1(log_ratio)


def _interval(ci, fmt=lambda x: f"{x:+.2f}") -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _log_ratio(test: dict) -> str:
    """A log-ratio test as "Flax / PyTorch − 1": estimate, 90 % CI (the verdict's), 95 % CI."""
    return (f"{_ratio_pct(test['difference']):+.2f} % 90% CI {_interval([_ratio_pct(x) for x in test['ci90']])} "
            f"(95% CI {_interval([_ratio_pct(x) for x in test['ci95']])})")


def _decided_ratio(tests) -> float:
    """The ×/÷ margin the 90 % CIs of log-ratio tests do decide: their farthest bound."""
    return max(math.exp(max(abs(x) for x in t["ci90"])) for t in tests)


def _verdict(test: dict, state_margin: bool = True) -> str:
    """The TOST verdict on a log ratio, with the margin its 90 % CI does decide (tighter than the
    protocol's where equivalent, wider where not)."""
    ratio = math.exp(test["margin"])
    margin = f"{_ratio_pct(-test['margin']):+.2f} % / {_ratio_pct(test['margin']):+.0f} % (×/÷ {ratio:g})"
    decided = f"(the 90 % CI decides ×/÷ {_decided_ratio([test]):.3g})"
    if test["equivalent"]:
        return f"equivalent{f' within {margin}' if state_margin else ''} {decided}, TOST p = {test['tost_p']:.2g}"
    return (f"equivalence not shown{f' at {margin}' if state_margin else ''}, TOST p = {test['tost_p']:.2g} "
            f"{decided}")


def _spread_verdict(spread: dict) -> str:
    """The SD-ratio verdict, with the margin [1/r, r] its 90 % CI does decide."""
    r = max(spread["ci90"][1], 1 / spread["ci90"][0])
    decided = f"(the 90 % CI decides [1/{r:.3g}, {r:.3g}])"
    return f"equivalent {decided}" if spread["equivalent"] else f"equivalence not shown {decided}"


def _mean_sd(values) -> str:
    values = np.asarray(values, np.float64)
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def plot_model(path: Path, model: str, entry: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(11, 4))
    designs = [d for d in DESIGNS if d in entry]
    colours = dict(zip(DESIGNS, ("tab:purple", "tab:green", "tab:orange", "tab:blue")))
    offsets = np.linspace(-0.15, 0.15, len(designs)) if len(designs) > 1 else [0.0]
    for offset, design in zip(offsets, designs):
        result, colour = entry[design], colours[design]
        for ax, tests, x in ((loss_ax, result["train_loss_log_ratio_tests"], None),
                             (err_ax, [result["test_error_log_ratio_test"]], [offset])):
            x = np.arange(1, len(tests) + 1) + offset if x is None else x
            mid = np.array([_ratio_pct(t["difference"]) for t in tests])
            low, high = (np.array([_ratio_pct(t["ci90"][i]) for t in tests]) for i in (0, 1))
            ax.errorbar(x, mid, yerr=[mid - low, high - mid], fmt="o-" if len(tests) > 1 else "o", color=colour,
                        capsize=3, label=f"{design} (90% CI)")
    first_tested = entry[designs[0]]["curve_first_epoch"]
    if first_tested > 1:
        loss_ax.axvspan(0.5, first_tested - 0.5, color="0.92", label="not tested (initial plateau)")
    plan = PROTOCOL.models[model]
    for ax, ratio in ((loss_ax, plan.train_loss_margin), (err_ax, plan.test_error_margin)):
        for m in (_ratio_pct(-math.log(ratio)), _ratio_pct(math.log(ratio))):  # the margin where it is
            ax.axhline(m, color="k", ls="--", lw=1)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n, epochs = len(entry[designs[0]]["seeds"]), entry[designs[0]]["epochs"]
    loss_ax.set_xticks(range(1, epochs + 1, max(1, epochs // 10)))
    loss_ax.set_title(f"{model}: train loss, Flax / PyTorch − 1 (%)\n{n} seeds, {entry['budget']}", fontsize=10)
    loss_ax.set(xlabel="epoch", ylabel="%")
    err_ax.set_title(f"{model}: test error at epoch {epochs}\nFlax / PyTorch − 1 (%)", fontsize=10)
    err_ax.set(xticks=[], ylabel="%")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(report: dict) -> list[str]:
    margins = report["margins"]
    lines = ["| model | budget | design | seeds | test accuracy Flax / PyTorch (%) | test error Flax / PyTorch − 1 "
             f"| primary: test error (×/÷ {margins['test_error_ratio']:g}) | SD ratio of test accuracy, 90% CI "
             f"(within [1/{margins['sd_ratio']:g}, {margins['sd_ratio']:g}]?) | train-loss curve "
             f"(×/÷ {margins['train_loss_ratio']:g}, every epoch tested) | all endpoints (intersection) |",
             "|---|---|---|---:|---|---|---|---|---|---|"]
    for model, entry in report["models"].items():
        for design in (d for d in DESIGNS if d in entry):
            r = entry[design]
            primary = r["test_error_log_ratio_test"]
            first = r["curve_first_epoch"]
            failed = {e + 1: t for e, t in enumerate(r["train_loss_log_ratio_tests"]) if e + 1 >= first and not t["equivalent"]}
            tested = r["train_loss_log_ratio_tests"][first - 1:]
            loss = (f"epochs {first}-{r['epochs']}: " if first > 1 else "") + (
                f"equivalent (the 90 % CIs decide ×/÷ {_decided_ratio(tested):.3g})" if not failed else
                f"equivalence not shown at epoch {', '.join(map(str, failed))} "
                f"(the 90 % CI decides ×/÷ {_decided_ratio(failed.values()):.3g})")
            spread = r.get("spread_test")
            spread_text = ("(paired design)" if not spread else f"not computable: {spread['reason']}"
                           if not spread.get("computable", True) else
                           f"{spread['sd_ratio']:.2f} {_interval(spread['ci90'], '{:.2f}'.format)}: {_spread_verdict(spread)}")
            lines.append(
                f"| {model} | {entry['budget']} | {design}{' (paired)' if r['paired'] else ''} | {primary['n']} | "
                f"{_mean_sd(r['test_accuracy_pp']['flax'])} / {_mean_sd(r['test_accuracy_pp']['torch'])} | "
                f"{_log_ratio(primary)} | {_verdict(primary, state_margin=False)} | {spread_text} | {loss} | "
                f"{'equivalent' if r['all_endpoints_equivalent'] else 'not shown'} |")
    return lines


def _details(model: str, design: str, r: dict) -> list[str]:
    a, primary = r["test_accuracy_difference_pp"], r["test_error_log_ratio_test"]
    lines = [f"**{design}** ({'paired by seed' if r['paired'] else 'independent samples, Welch'}; {r['steps']} steps "
             f"per run; seeds {', '.join(map(str, r['seeds']))}):", "",
             f"- primary, test error Flax / PyTorch − 1: {_log_ratio(primary)}; {_verdict(primary)}; seeds for 80 % "
             f"power at this spread: {primary['seeds_for_power']}.",
             f"- test accuracy Flax − PyTorch: {a['difference']:+.3f} pp, 90% CI {_interval(a['ci90'], '{:+.3f}'.format)} "
             f"(95% CI {_interval(a['ci95'], '{:+.3f}'.format)})."]
    if "spread_test" in r and not r["spread_test"].get("computable", True):
        lines.append(f"- spread: not computable ({r['spread_test']['reason']}).")
    elif "spread_test" in r:
        s = r["spread_test"]
        lines.append(f"- spread: test-accuracy SD {s['sd_flax']:.3f} / {s['sd_torch']:.3f} pp, ratio {s['sd_ratio']:.2f}, "
                     f"90% CI {_interval(s['ci90'], '{:.2f}'.format)} (95% CI {_interval(s['ci95'], '{:.2f}'.format)}); "
                     f"margin [1/{s['margin']:g}, {s['margin']:g}]: {_spread_verdict(s)} (TOST p = {s['tost_p']:.2g}); "
                     f"F-test of equal SDs p = {s['f_test_p']:.2g} (a difference test).")
    if "plateau_escape" in r:
        e = r["plateau_escape"]
        lines.append(f"- plateau escape (first epoch with test accuracy > {e['threshold']:.0%}; not escaped by epoch "
                     f"{r['epochs']}: censored): Flax {e['escape_epochs']['flax']}, PyTorch {e['escape_epochs']['torch']}; "
                     f"still on the plateau after each epoch: Flax {[round(x, 2) for x in e['survival']['flax']]}, "
                     f"PyTorch {[round(x, 2) for x in e['survival']['torch']]}; two-sample KS D = {e['ks_statistic']:.2f}, "
                     f"p = {e['ks_p']:.2g} (a difference test: p > 0.05 is not evidence of equality).")
    lines += ["", "| epoch | Flax train loss | PyTorch train loss | Flax / PyTorch − 1, 90% CI (95% CI) | TOST p | "
              "verdict |", "|---:|---:|---:|---|---:|---|"]
    for e, t in enumerate(r["train_loss_log_ratio_tests"]):
        flax_loss, torch_loss = (np.asarray(r["train_loss"][f])[:, e] for f in ("flax", "torch"))
        verdict = ("equivalent" if t["equivalent"] else "not shown") if e + 1 >= r["curve_first_epoch"] else "(not tested)"
        lines.append(f"| {e + 1} | {flax_loss.mean():.4f} ± {flax_loss.std(ddof=1):.4f} | {torch_loss.mean():.4f} ± "
                     f"{torch_loss.std(ddof=1):.4f} | {_log_ratio(t)} | {t['tost_p']:.2g} | {verdict} |")
    return lines + [""]


def build_report(out: Path, seeds_by_model: dict[str, list[int]], designs: list[str], budget: str,
                 quick: bool) -> dict[str, Any]:
    margins = {(p.test_error_margin, p.train_loss_margin, p.sd_ratio_margin) for p in PROTOCOL.models.values()}
    assert len(margins) == 1, "one margin of each kind for every model"
    (error_margin, loss_margin, sd_margin), = margins
    report: dict[str, Any] = {
        "command": " ".join(["python -m parity_studies.equivalence", *sys.argv[1:]]), "quick": quick, "budget": budget,
        "designs": {d: {"init_rng": DESIGNS[d][0], "shuffle_rng": DESIGNS[d][1]} for d in designs},
        "margins": {"test_error_ratio": error_margin, "train_loss_ratio": loss_margin, "sd_ratio": sd_margin},
        "alpha": ALPHA, "versions": versions(), "machine": machine_info(), "models": {}}
    details = []
    for model, seeds in seeds_by_model.items():
        epochs = budget_epochs(model, budget)
        full = runs.recipe(model).epochs
        entry = {"budget": f"{runs.QUICK_STEPS} steps" if quick else
                 (f"epoch {epochs} of {full}" if epochs < full else f"full recipe, {full} epochs"),
                 **{design: analyse(out, model, design, seeds) for design in designs}}
        report["models"][model] = entry
        entry["all_endpoints_equivalent"] = all(entry[d]["all_endpoints_equivalent"] for d in designs)
        plot_model(out / f"{model}.png", model, entry)
        details += [f"## {model} ({entry['budget']})", "", f"![{model}]({model}.png)", ""]
        for design in designs:
            details += _details(model, design, entry[design])
    report["all_models_equivalent"] = all(e["all_endpoints_equivalent"] for e in report["models"].values())
    md = ["# Equivalence of learning: Flax vs PyTorch", "",
          f"Command: `{report['command']}`" + (" (QUICK smoke run: not a result)" if quick else ""), "",
          f"Tests: TOST, α = {ALPHA} each side (equivalent <=> the 90 % interval lies inside the margin; 95 % intervals "
          "are shown too, labelled); Welch's t for independent runs, one-sample t on per-seed differences for the "
          "paired designs; log ratios shown as Flax / PyTorch − 1. Endpoints and margins: reports/equivalence/PROTOCOL.md. "
          "The train-loss curve passes only if every tested epoch does (intersection-union, no correction needed). "
          "\"Seeds for 80 % power\": seeds per framework for TOST to show equivalence 80 % of the time if the true "
          "difference is 0, at the spread measured here.", "",
          *summary_table(report), "", "Values: mean ± sample SD over seeds.", "",
          f"Overall (the intersection of every endpoint of every model and design above): "
          f"{'equivalent' if report['all_models_equivalent'] else 'equivalence not shown'}.", "", *details,
          *run_scope(out, seeds_by_model, designs), "",
          f"Report made on: {report['machine'].get('cpu_model', '?')}, {report['machine']['cpu_count']} logical CPUs; "
          "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text("\n".join(md) + "\n")
    return report


def run_scope(out: Path, seeds_by_model: dict[str, list[int]], designs: list[str]) -> list[str]:
    """What the analysed runs' own summaries say they ran on: package versions, devices, CPU models."""
    versions_seen, devices, cpus = Counter(), Counter(), Counter()
    for model, seeds in seeds_by_model.items():
        for design in designs:
            for framework in FRAMEWORKS:
                for seed in seeds:
                    path = record_dir(out, model, design, framework, seed) / "summary.json"
                    summary = json.loads(path.read_text())
                    versions_seen[", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items()
                                            if k in ("jax", "flax", "torch", "constraints"))] += 1
                    devices[summary.get("device", "not recorded")] += 1
                    cpus[summary.get("machine", {}).get("cpu_model", "not recorded")] += 1
    return ["Scope of these results: what the runs' records state. Versions: "
            + "; ".join(f"{v or 'not recorded'} ({n} runs)" for v, n in versions_seen.items())
            + ". Devices: " + "; ".join(f"{d} ({n} runs)" for d, n in devices.items())
            + ". CPU models: " + "; ".join(f"{c} ({n} runs)" for c, n in cpus.items())
            + ". This command runs each run on one thread (`run_environment`)."]


README_MARKER = "equivalence-report"


def own_protocol(args) -> Protocol:
    """A study of a recipe of the user's own, planned on the command line: its model, --seeds, --margin on
    the test error rate and every epoch's train loss, the SD ratio within [1/2, 2], the designs asked for.
    Not pre-registered, so its report says it is exploratory."""
    if args.margin is None or not args.seeds:
        raise UsageError("a study of your own recipe (--config) needs its --seeds and its --margin (e.g. 1.2)")
    if args.margin <= 1:
        raise UsageError(f"--margin is a ratio above 1 (x/÷ RATIO), got {args.margin}")
    if args.models or args.protocol != "first" or args.budget != "full":
        raise UsageError("--config names the study's model and plan: leave out --models, --protocol and --budget")
    (model,) = runs.use_recipe(args.config, args.epochs, [])
    plan = protocols.ModelPlan(tuple(args.seeds), test_error_margin=args.margin, train_loss_margin=args.margin,
                               sd_ratio_margin=2.0)
    return Protocol(name=model, document="", alpha=ALPHA, designs=tuple(args.designs or ["independent"]),
                    models={model: plan})


def resolve_protocol(name: str) -> Protocol:
    """--protocol: "first", "second", or the path of a protocol (a PROTOCOL.md with its TOML table, or TOML)."""
    return {"first": lambda: FIRST, "second": lambda: protocols.SECOND}.get(name, lambda: protocols.load(name))()


def make_folders(out: Path, scratch: Path | None) -> None:
    """The output folder, and the scratch folder unless None; a one-line UsageError if either cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if scratch is not None:
            prepare_scratch(scratch)
    except OSError as e:
        raise UsageError(f"cannot write to {e.filename or out}: {e.strerror or e}") from None


def train_all(args, jobs: list[tuple[str, str, str, int]], scratch: Path, pinned: dict[str, Sequence[str]]) -> None:
    """Train the runs `jobs` (model, design, framework, seed) not yet recorded, args.jobs at a time."""
    # Runs recorded in earlier sessions count as done from the start (the bar redraws only as runs end).
    pending = [spec for spec in jobs if not _complete(args.out, *spec, args.budget, args.quick)]
    with runs.supervised_children(), ThreadPoolExecutor(args.jobs) as pool, \
            tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="equivalence", unit="run",
                 file=sys.stderr) as bar:
        def job(spec):
            model, design, framework, seed = spec
            train(args.out, scratch, model, design, framework, seed, args.budget, args.quick, args.data_dir,
                  pinned.get(framework, ()))
            bar.update()
        futures = []
        try:
            for spec in pending:
                futures.append(pool.submit(job, spec))
            for future in futures:
                runs.wait_for_future(future)
                future.result()
        except BaseException:  # a failed run, Ctrl-C or SIGTERM: start no more; finished runs are kept
            pool.shutdown(wait=False, cancel_futures=True)
            for future in futures:  # the running ones stop (a second signal kills them)
                runs.wait_for_future(future)
            raise


def rejected_models(out: Path) -> list[str]:
    """The models whose direction test rejected in OUT/report.json (the follow-up's default)."""
    path = out / "report.json"
    if not path.is_file():
        raise UsageError(f"--follow-up follows the study's report, and {path} does not exist yet")
    report = json.loads(path.read_text())
    return [d["model"] for d in report.get("direction", []) if d["confirmatory"] and d["rejects"]]


def run_protocol(args, protocol: Protocol, scratch: Path) -> int:
    """The study of a protocol given as data: its models, seeds, design and pinned flags unless the
    command line says otherwise (then its report is exploratory); the report only once every planned
    run is recorded (or with --final), progress counts before that."""
    if args.budget != "full":
        raise UsageError(f"the {protocol.name} protocol runs each recipe at its full length (no --budget pilot)")
    if args.follow_up and not protocol.follow_up:
        raise UsageError(f"the {protocol.name} protocol has no follow-up")
    models = args.models or (rejected_models(args.out) if args.follow_up else list(protocol.models))
    unknown = [m for m in models if m not in protocol.models]
    if unknown:
        raise UsageError(f"model {unknown[0]!r} is not in the {protocol.name} protocol ({', '.join(protocol.models)})")
    follow = protocol.follow_up
    designs = args.designs or ([follow.design] if args.follow_up else list(protocol.designs))
    planned = {m: args.seeds or list(follow.seeds if args.follow_up else protocol.models[m].seeds) for m in models}
    for m, seeds in planned.items():
        runs.check_models_and_seeds([m], seeds)
    make_folders(args.out, None if args.report_only else scratch)
    if not args.report_only:
        train_all(args, [(m, d, f, s) for m in models for s in planned[m] for d in designs for f in FRAMEWORKS],
                  scratch, protocol.flags)
    # The report covers the protocol's own runs: every model's main design, and a follow-up design wherever
    # all its seeds are recorded.
    report_models = list(protocol.models) if not args.models else models
    main = {m: args.seeds or list(protocol.models[m].seeds) for m in report_models}
    complete = {m: complete_seeds(args.out, m, seeds, list(protocol.designs), "full", args.quick)
                for m, seeds in main.items()}
    missing = {m: sorted(set(main[m]) - set(c)) for m, c in complete.items() if set(c) != set(main[m])}
    for m in report_models:
        print(f"{m}: {len(complete[m])} of {len(main[m])} seeds recorded in both frameworks")
    if missing and not args.final:
        print("the report is made once every planned run is recorded (or with --final); no statistic before that")
        return 0
    if any(len(c) < 2 for c in complete.values()):
        raise RunError(f"fewer than 2 seeds complete in both frameworks for {min(complete, key=lambda m: len(complete[m]))}")
    found = {m: {d: protocol_report.Runs(complete[m], {f: [record_dir(args.out, m, d, f, s) for s in complete[m]]
                                                       for f in FRAMEWORKS}) for d in protocol.designs}
             for m in report_models}
    # A follow-up is analysed once all its seeds are in (no interim look), or with --final on those there are.
    follow_missing = {}
    if follow:
        for m in report_models:
            recorded = complete_seeds(args.out, m, list(follow.seeds), [follow.design], "full", args.quick)
            if recorded or args.follow_up:
                print(f"{m} follow-up ({follow.design}): {len(recorded)} of {len(follow.seeds)} seeds recorded")
            if recorded == list(follow.seeds) or (args.final and len(recorded) >= 2):
                found[m][follow.design] = protocol_report.Runs(recorded, {
                    f: [record_dir(args.out, m, follow.design, f, s) for s in recorded] for f in FRAMEWORKS})
                if recorded != list(follow.seeds):
                    follow_missing[f"{m} follow-up ({follow.design})"] = sorted(set(follow.seeds) - set(recorded))
    exploratory = [what for what, given in (("seeds", args.seeds), ("models", args.models),
                                            ("designs", args.designs and not args.follow_up)) if given]
    if args.quick:
        status, reason = "quick", f"a smoke run of {runs.QUICK_STEPS} steps per run: not a result"
    elif not protocol.document:
        shortened = f", every run shortened to {args.epochs} epochs" if args.epochs else ""
        status, reason = "exploratory", (f"a study planned on the command line (--config, --seeds, --margin "
                                         f"{args.margin:g}{shortened}), not pre-registered")
    elif exploratory:
        status, reason = "exploratory", f"{' and '.join(exploratory)} other than the protocol's"
    elif missing or follow_missing:
        status, reason = "final, with missing runs", "seeds not recorded in both frameworks: " + "; ".join(
            f"{m} {s}" for m, s in {**missing, **follow_missing}.items())
    else:
        status, reason = "confirmatory", ""
    machine, code = machine_info(), source()
    made_by = (f"the code at {code['commit']}" + (" with uncommitted changes" if code["dirty"] else "")
               if "commit" in code else f"cnn-parity {code.get('version', '?')} (no git checkout)")
    report = protocol_report.build(
        args.out, protocol, found, " ".join(["python -m parity_studies.equivalence", *sys.argv[1:]]), status, reason,
        f"{machine.get('cpu_model', '?')}; " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        + f"; by {made_by}")
    if args.update_readme:
        replace_marked_block(args.update_readme, f"{README_MARKER}-{protocol.name}",
                             "\n".join(protocol_report.summary_table(report)))
    print(f"wrote {args.out / 'report.md'}, {args.out / 'report.json'} and {len(found)} PNGs ({status})")
    return 0


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m parity_studies.equivalence", description=__doc__.split("\n\n")[1])
    parser.add_argument("--protocol", default="first", metavar="NAME_OR_PATH",
                        help="first (reports/equivalence/PROTOCOL.md, the default), second "
                             "(reports/equivalence/second/PROTOCOL.md), or the path of a protocol of that shape")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="default: the protocol's")
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="a recipe file of your own (a pair of your own, or a built-in model's recipe changed): "
                             "a study of it, with --seeds and --margin, instead of a protocol's")
    parser.add_argument("--margin", type=number, metavar="RATIO",
                        help="with --config: the equivalence margin x/÷ RATIO of the test error rate and of each epoch's "
                             "train loss (the SD ratio's is [1/2, 2])")
    parser.add_argument("--epochs", type=positive_int, metavar="N",
                        help="with --config: shorten every run to N epochs (said in the report)")
    first_seeds = FIRST.seeds("mlp")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="N",
                        help=f"default: the protocol's (first: {first_seeds[0]} .. {first_seeds[-1]})")
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), metavar="DESIGN",
                        help=f"any of: {', '.join(DESIGNS)} (default: the protocol's, {' '.join(FIRST.designs)})")
    parser.add_argument("--budget", choices=BUDGETS, default="full",
                        help="full: each recipe's epochs (default, the protocol's); pilot: the pilot study's "
                             f"shorter budgets ({', '.join(f'{m} {e}' for m, e in PILOT_EPOCHS.items())})")
    runs.add_quick_flag(parser)
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="runs trained at once, one thread each (default 1); results do not depend on it")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report each model over those of --seeds complete in every run")
    parser.add_argument("--follow-up", action="store_true",
                        help="a protocol's follow-up runs (second: the paired design, seeds 3100-3119) for "
                             "--models (default: those whose direction test rejected in OUT/report.json)")
    parser.add_argument("--final", action="store_true",
                        help="report a protocol given as data although planned runs are missing (named in it)")
    parser.add_argument("--update-readme", metavar="PATH", type=Path,
                        help=f"replace the marked summary table in this file: the block '{README_MARKER}' for the "
                             f"first protocol, '{README_MARKER}-NAME' for protocol NAME")
    parser.add_argument("--data-dir")
    parser.add_argument("--scratch", type=Path, help="training workdirs: checkpoints, weights, logs (default OUT/scratch)")
    parser.add_argument("--out", required=True, type=Path, help="report and run records (no weights): the folder to commit")
    args = parser.parse_args(argv)

    def body() -> int:
        require_extra("scipy", "studies")
        protocol = own_protocol(args) if args.config is not None else resolve_protocol(args.protocol)
        scratch = args.scratch or args.out / "scratch"
        if protocol is not FIRST:
            return run_protocol(args, protocol, scratch)
        if args.follow_up or args.final:
            raise UsageError("--follow-up and --final are for a protocol given as data (--protocol second)")
        models = args.models or list(MODELS)
        seeds = args.seeds or first_seeds
        designs = args.designs or list(FIRST.designs)
        runs.check_models_and_seeds(models, seeds)
        if len(seeds) < 2:
            raise UsageError("an equivalence test needs at least 2 seeds")
        make_folders(args.out, None if args.report_only else scratch)
        if not args.report_only:
            train_all(args, [(m, d, f, s) for m in models for s in seeds for d in designs for f in FRAMEWORKS],
                      scratch, FIRST.flags)
        seeds_by_model = {m: found for m in models if len(
            found := complete_seeds(args.out, m, seeds, designs, args.budget, args.quick)) >= 2}
        if not seeds_by_model:
            raise RunError(f"no model has 2 seeds complete in both frameworks and designs in {args.out}")
        for model in models:
            print(f"{model}: seeds {seeds_by_model.get(model, 'fewer than 2')} complete")
        report = build_report(args.out, seeds_by_model, designs, args.budget, args.quick)
        if args.update_readme:
            replace_marked_block(args.update_readme, README_MARKER, "\n".join(summary_table(report)))
        print(f"wrote {args.out / 'report.md'}, {args.out / 'report.json'} and {len(seeds_by_model)} PNGs")
        return 0

    return report_errors(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
