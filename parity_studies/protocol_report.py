"""The report of a protocol given as data (reports/equivalence/second/PROTOCOL.md, or any protocol of
its shape): its equivalence endpoints at its own level, their pre-registered robustness checks, the
direction test in its fixed sequence, the paired follow-up where it was run, and how the records were
made (provenance: commits, machines, times, pinned options), all from the run records alone.

The first protocol keeps its own report (parity_studies.equivalence.build_report), which must
regenerate its committed report unchanged."""

from __future__ import annotations

import dataclasses
import datetime
import math
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnn_parity.files import read_json
from cnn_parity.frameworks import FRAMEWORKS
from parity_studies import statistics
from parity_studies.runs import epoch_records
from parity_studies.protocols import DESIGNS, REPO, ModelPlan, Protocol, load


@dataclass
class Runs:
    """One model's records in one design: per framework, its seeds' record folders, metrics, summaries."""

    seeds: list[int]
    records: dict[str, list[Path]]

    def __post_init__(self):
        self.metrics = {f: [epoch_records(r) for r in rs] for f, rs in self.records.items()}
        self.summaries = {f: [read_json(r / "summary.json") for r in rs] for f, rs in self.records.items()}
        self.epochs = min(len(m) for ms in self.metrics.values() for m in ms)

    def per_epoch(self, key: str) -> dict[str, np.ndarray]:
        """seeds × epochs of a metric, per framework."""
        return {f: np.array([[e[key] for e in m[:self.epochs]] for m in ms]) for f, ms in self.metrics.items()}


def _ratio_pct(log_ratio: float) -> float:
    return 100 * math.expm1(log_ratio)


def escape_level(escape: int | None, levels: tuple[int, ...]) -> str:
    """The escape epoch's factor level: "1-a", "a+1", ..., "z or later" for levels (a, ..., z); a run
    not escaped (None) is in the last."""
    names = [f"1-{levels[0]}", *map(str, levels[1:-1]), f"{levels[-1]} or later"]
    if escape is None:
        return names[-1]
    for bound, name in zip(levels[:-1], names):
        if escape <= bound:
            return name
    return names[-1]


def direction_statistic(train_loss: np.ndarray, epochs: tuple[int, int]) -> np.ndarray:
    """Per run, the mean log train loss over epochs first .. last (1-based; a shorter run, e.g. a smoke
    run, over those of its epochs there are)."""
    first = min(epochs[0], train_loss.shape[1])
    return np.log(train_loss[:, first - 1:epochs[1]]).mean(1)


def analyse_model(runs: Runs, plan: ModelPlan, protocol: Protocol, paired: bool, endpoints_too: bool = True) -> dict[str, Any]:
    """Every endpoint `plan` names, at the protocol's level, with its robustness checks (unless not
    `endpoints_too`: a follow-up design, which the protocol analyses for the direction only)."""
    alpha = protocol.alpha
    loss, accuracy_curves = runs.per_epoch("train_loss"), runs.per_epoch("test_accuracy")
    accuracy = {f: 100 * c[:, -1] for f, c in accuracy_curves.items()}
    result: dict[str, Any] = {"seeds": runs.seeds, "epochs": runs.epochs, "paired": paired,
                              "train_loss": {f: v.tolist() for f, v in loss.items()},
                              "test_accuracy_pp": {f: v.tolist() for f, v in accuracy.items()}}
    escapes = None
    if plan.escape_accuracy is not None:
        escapes = {f: statistics.escape_epochs(c, plan.escape_accuracy) for f, c in accuracy_curves.items()}
        result["plateau_escape"] = {"threshold": plan.escape_accuracy,
                                    **statistics.escape_test(escapes["flax"], escapes["torch"], runs.epochs)}
    endpoints = {}
    if not endpoints_too:
        plan = dataclasses.replace(plan, test_error_margin=None, train_loss_margin=None, sd_ratio_margin=None)
    if plan.test_error_margin is not None:
        endpoints["test_error"] = {"kind": "log ratio", **statistics.difference_test(
            np.log(100 - accuracy["flax"]), np.log(100 - accuracy["torch"]), math.log(plan.test_error_margin), paired,
            alpha)}
    if plan.train_loss_margin is not None:
        margin = math.log(plan.train_loss_margin)
        for epoch in plan.tested_epochs(runs.epochs):
            values = {f: np.log(v[:, epoch - 1]) for f, v in loss.items()}
            endpoint = {"kind": "log ratio", "epoch": epoch,
                        **statistics.difference_test(values["flax"], values["torch"], margin, paired, alpha)}
            if not paired:
                robustness = {"rank": statistics.rank_tost(values["flax"], values["torch"], margin, alpha)}
                if plan.escape_levels and escapes:
                    levels = {f: [escape_level(e, plan.escape_levels) for e in escapes[f]] for f in FRAMEWORKS}
                    robustness["escape_adjusted"] = statistics.adjusted_difference_test(
                        values["flax"], values["torch"], levels["flax"], levels["torch"], margin, alpha)
                endpoint["robustness"] = robustness
            endpoints[f"train_loss_epoch_{epoch}"] = endpoint
    if plan.sd_ratio_margin is not None and not paired:
        try:
            endpoints["sd_ratio"] = {"kind": "sd ratio", **statistics.spread_test(
                accuracy["flax"], accuracy["torch"], plan.sd_ratio_margin, alpha), "robustness": {
                "brown_forsythe": statistics.brown_forsythe_spread(accuracy["flax"], accuracy["torch"],
                                                                   plan.sd_ratio_margin, alpha),
                "bootstrap": statistics.bootstrap_spread(accuracy["flax"], accuracy["torch"], plan.sd_ratio_margin,
                                                         alpha, protocol.bootstrap_resamples, protocol.bootstrap_seed)}}
        except statistics.NotComputable as e:
            endpoints["sd_ratio"] = statistics.not_computable("sd ratio", plan.sd_ratio_margin, str(e))
    result["endpoints"] = endpoints
    result["all_endpoints_equivalent"] = all(e["equivalent"] for e in endpoints.values()) if endpoints else None
    if plan.direction_epochs is not None:
        statistic = {f: direction_statistic(v, plan.direction_epochs) for f, v in loss.items()}
        result["direction_statistic"] = {"epochs": list(plan.direction_epochs),
                                         **{f: v.tolist() for f, v in statistic.items()}}
    return result


def direction_tests(models: dict[str, dict], protocol: Protocol) -> list[dict[str, Any]]:
    """The direction test of each model in the protocol's fixed sequence: confirmatory while every test
    before it rejected; after the first that does not, the rest are descriptive."""
    out, open_ = [], True
    for model in protocol.direction.order:
        entry = models.get(model, {}).get("independent")
        if entry is None or "direction_statistic" not in entry:
            open_ = False
            continue
        s = entry["direction_statistic"]
        test = statistics.two_sided_test(s["flax"], s["torch"], False, protocol.direction.alpha)
        out.append({"model": model, "epochs": s["epochs"], "confirmatory": open_, **test})
        open_ = open_ and test["rejects"]
    return out


def combined_claim(models: dict[str, dict], protocol: Protocol) -> dict[str, Any]:
    """The protocol's combined claim, an intersection-union test: a model is equivalent on every endpoint
    it has in the protocol's designs, the study on every endpoint of every model (None: nothing tested)."""
    per_model = {m: all(entry[d]["all_endpoints_equivalent"] for d in protocol.designs if d in entry)
                 for m, entry in models.items()
                 if any(entry.get(d, {}).get("all_endpoints_equivalent") is not None for d in protocol.designs)}
    return {"models": per_model, "all_equivalent": all(per_model.values()) if per_model else None}


def follow_up_test(independent: dict, paired: dict, alpha: float) -> dict[str, Any]:
    """The follow-up's paired test of the direction statistic and the comparison of the two designs'
    estimates (z on the difference, normal approximation), with the protocol's reading of them."""
    from scipy import stats

    s = paired["direction_statistic"]
    test = statistics.two_sided_test(s["flax"], s["torch"], True, alpha)
    z = (independent["difference"] - test["difference"]) / math.hypot(independent["se"], test["se"])
    p_designs = float(2 * stats.norm.sf(abs(z)))
    same_direction = test["rejects"] and np.sign(test["difference"]) == np.sign(independent["difference"])
    if same_direction and p_designs >= alpha:
        reading = "the computation carries it"
    elif not test["rejects"] and p_designs < alpha:
        reading = "the draws carry it"
    else:
        reading = "undecided"
    return {"paired": test, "designs_z": z, "designs_p": p_designs, "reading": reading}


# ---- how the records were made -------------------------------------------------------------------------

def run_sessions(summary: dict) -> list[dict] | None:
    """A record's sessions (each start or resume), each with the provenance common to the run; None if
    the record has no provenance."""
    provenance = summary.get("provenance")
    if not isinstance(provenance, dict) or not provenance.get("sessions"):
        return None
    common = {k: v for k, v in provenance.items() if k != "sessions"}
    return [{**common, **session} for session in provenance["sessions"]]


_SESSION_KEYS = ("version", "commit", "dirty", "cpu_model", "started_at", "ended_at")
# Training-CLI flags and where a record states what they set.
_OPTION_OF_FLAG = {"--pipeline": ("pipeline",), "--api": ("options", "api"), "--conv-impl": ("options", "conv_impl"),
                   "--devices": ("options", "devices")}


def _pinned_differences(summary: dict, flags: tuple[str, ...], design: str) -> list[str]:
    """The pinned flags, and the design's random streams, a record's summary shows other values for."""
    recipe = summary.get("recipe") or {}
    wrong = [f"{key} {recipe.get(key)} (the {design} design's {value})"
             for key, value in zip(("init_rng", "shuffle_rng"), DESIGNS[design]) if recipe.get(key) != value]
    for flag, value in zip(flags[::2], flags[1::2]):
        where = _OPTION_OF_FLAG.get(flag)
        found: Any = summary
        for key in where or ():
            found = found.get(key) if isinstance(found, dict) else None
        if where and str(found) != value:
            wrong.append(f"{flag} {found} (pinned {value})")
    return wrong


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def protocol_at(commit: str, protocol: Protocol) -> bool | None:
    """Whether `commit` holds the protocol's document with the same protocol table (None: no git, or the
    commit is unknown here)."""
    if not protocol.document or _git("cat-file", "-e", f"{commit}^{{commit}}") is None:
        return None
    text = _git("show", f"{commit}:{protocol.document}")
    if text is None:
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "PROTOCOL.md"
        copy.write_text(text)
        try:
            then = load(copy)
        except Exception:  # noqa: BLE001 (any unreadable table is "not the same protocol")
            return False
    if not (REPO / protocol.document).is_file():
        return None
    # `document` says where each was read from (a temporary copy, the checkout), not what the table holds.
    return dataclasses.replace(then, document=protocol.document) == load(REPO / protocol.document)


def added(path: str | Path) -> dict[str, str] | None:
    """The commit that first added a file of this repository, and its time (None without git, history,
    or such a commit)."""
    try:
        relative = Path(path).resolve().relative_to(REPO)
    except ValueError:  # outside the repository
        return None
    found = _git("log", "--diff-filter=A", "--format=%H %cI", "--", str(relative))
    if not found or not found.strip():
        return None
    commit, time = found.strip().splitlines()[-1].split()
    return {"commit": commit, "time": time}


def registered(protocol: Protocol) -> dict[str, str] | None:
    """The commit that added the protocol's document, and its time (None without git or history)."""
    return added(REPO / protocol.document) if protocol.document else None


def _time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def conduct(entries: list[tuple[str, str, Runs]], protocol: Protocol, study_report: Path | None = None) -> dict[str, Any]:
    """Provenance of every record: commits, dirty trees, CPU models, versions, times, sessions; and the
    deviations from the protocol's conduct rules (no provenance, a dirty tree, more than one commit, a
    commit without the protocol's table, options other than the pinned ones, random streams other than
    the design's, packages other than constraints.txt's; a follow-up run started before `study_report`,
    the study's report.json, was committed)."""
    commits, cpus, constraints = Counter(), Counter(), Counter()
    starts, ends, deviations, resumed, follow_up_starts = [], [], [], [], []
    runs_total = 0
    for model, design, runs in entries:
        for framework in FRAMEWORKS:
            for seed, summary in zip(runs.seeds, runs.summaries[framework]):
                name = f"{model} {design} {framework} seed {seed}"
                runs_total += 1
                constraints[summary.get("versions", {}).get("constraints", "not stated")] += 1
                wrong = _pinned_differences(summary, protocol.flags.get(framework, ()), design)
                if wrong:
                    deviations.append(f"{name}: {', '.join(wrong)}")
                sessions = run_sessions(summary)
                if sessions is None:
                    deviations.append(f"{name}: no provenance")
                    continue
                if len(sessions) > 1 or summary.get("resumed"):
                    resumed.append(f"{name}: {len(sessions)} sessions on "
                                   f"{', '.join(sorted({str(s.get('cpu_model')) for s in sessions}))}")
                for s in sessions:
                    missing = [k for k in _SESSION_KEYS if s.get(k) in (None, "")]
                    if missing:
                        deviations.append(f"{name}: a session without {', '.join(missing)}")
                    if s.get("dirty"):
                        deviations.append(f"{name}: run from a dirty tree ({s.get('commit')})")
                    commits[s.get("commit")] += 1
                    cpus[s.get("cpu_model")] += 1
                    starts += [s["started_at"]] if s.get("started_at") else []
                    if design not in protocol.designs and s.get("started_at"):
                        follow_up_starts.append(s["started_at"])
                    ends += [s["ended_at"]] if s.get("ended_at") else []
    known = [c for c in commits if c]
    if len(known) > 1:
        deviations.append(f"records from {len(known)} commits (the protocol allows one, or a second after a bitwise check)")
    holds = {c: protocol_at(c, protocol) for c in known}
    deviations += [f"commit {c} does not hold this protocol's table" for c, held in holds.items() if held is False]
    if protocol.document and _git("rev-parse", "HEAD") is not None:  # an unknown commit cannot be checked
        deviations += [f"commit {c} is not in this repository: not checked" for c, held in holds.items() if held is None]
    if any(k != "constraints.txt" for k in constraints):
        deviations.append(f"packages: {dict(constraints)}")
    protocol_commit = registered(protocol)
    if protocol_commit and starts and _time(min(starts, key=_time)) < _time(protocol_commit["time"]):
        deviations.append(f"a run started ({min(starts, key=_time)}) before the protocol was committed "
                          f"({protocol_commit['time']})")
    if follow_up_starts and study_report is not None and _git("rev-parse", "HEAD") is not None:
        report_commit = added(study_report)
        first = min(follow_up_starts, key=_time)
        if report_commit is None:
            deviations.append(f"the study's report ({study_report}) is not committed here: that the follow-up's runs "
                              "started after it was is not checked")
        elif _time(first) < _time(report_commit["time"]):
            deviations.append(f"a follow-up run started ({first}) before the study's report was committed "
                              f"({report_commit['time']})")
    return {"runs": runs_total, "protocol_commit": protocol_commit, "commits": {str(c): n for c, n in commits.items()},
            "commits_hold_the_protocol": holds, "cpu_models": {str(c): n for c, n in cpus.items()},
            "constraints": dict(constraints), "first_start": min(starts, key=_time) if starts else None,
            "last_end": max(ends, key=_time) if ends else None, "resumed": resumed, "deviations": deviations}


# ---- the report -------------------------------------------------------------------------------------------

def _interval(ci, fmt) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _pct(x: float) -> str:
    return f"{_ratio_pct(x):+.2f} %"


def _decided(endpoint: dict, key: str) -> str:
    """The margin an endpoint's deciding interval decides: ×/÷ r for a log ratio, [1/r, r] for an SD ratio."""
    ci = endpoint[key]
    if endpoint["kind"] == "sd ratio":
        r = max(ci[1], 1 / ci[0] if ci[0] > 0 else math.inf)
        return f"[1/{r:.3g}, {r:.3g}]"
    return f"×/÷ {math.exp(max(abs(x) for x in ci)):.3g}"


def endpoint_line(name: str, e: dict, alpha: float) -> str:
    if not e.get("computable", True):
        return f"- **{name}**: **not computable** ({e['reason']})."
    key, level = statistics.interval_key(alpha), f"{100 * (1 - 2 * alpha):g}%"
    verdict = "equivalent" if e["equivalent"] else "equivalence not shown"
    fmt = '{:.3f}'.format if e["kind"] == "sd ratio" else _pct
    also_90 = f" (90% CI {_interval(e['ci90'], fmt)})" if key != "ci90" else ""  # the first study's level, beside
    if e["kind"] == "sd ratio":
        estimate = (f"SD {e['sd_flax']:.3f} / {e['sd_torch']:.3f} pp, ratio {e['sd_ratio']:.3f}, {level} CI "
                    f"{_interval(e[key], fmt)}{also_90}; margin [1/{e['margin']:g}, {e['margin']:g}]")
    else:
        estimate = (f"Flax / PyTorch − 1 = {_pct(e['difference'])}, {level} CI {_interval(e[key], fmt)}{also_90}; "
                    f"margin ×/÷ {math.exp(e['margin']):g}")
    return (f"- **{name}**: {estimate}: **{verdict}**, TOST p = {e['tost_p']:.2g} at α = {alpha} each side "
            f"(the {level} CI decides {_decided(e, key)}).")


def robustness_lines(e: dict, alpha: float) -> list[str]:
    key, level = statistics.interval_key(alpha), f"{100 * (1 - 2 * alpha):g}%"
    lines = []
    r = e.get("robustness", {})
    if "escape_adjusted" in r:
        a = r["escape_adjusted"]
        lines.append(f"  - adjusted for the escape epoch (levels, Flax / PyTorch runs: "
                     f"{', '.join(f'{k} {v[0]}/{v[1]}' for k, v in a['levels'].items())}): {_pct(a['difference'])}, "
                     f"{level} CI {_interval(a[key], _pct)}, TOST p = {a['tost_p']:.2g}: "
                     f"{'equivalent' if a['equivalent'] else 'not shown'} (runs that left the plateau at the same "
                     "epoch: not the endpoint's quantity)")
    if "rank" in r:
        a = r["rank"]
        lines.append(f"  - rank TOST (Mann-Whitney): Hodges-Lehmann {_pct(a['hodges_lehmann'])}, {level} CI "
                     f"{_interval(a[key], _pct)}, TOST p = {a['tost_p']:.2g}: {'equivalent' if a['equivalent'] else 'not shown'}")
    if "brown_forsythe" in r:
        a = r["brown_forsythe"]
        lines.append(f"  - Brown-Forsythe (mean absolute deviation from the median): ratio {a['ratio']:.3f}, {level} CI "
                     f"{_interval(a[key], '{:.3f}'.format)}, TOST p = {a['tost_p']:.2g}: "
                     f"{'equivalent' if a['equivalent'] else 'not shown'}; Levene (median) p of equal spreads = "
                     f"{a['levene_p']:.2g} (a difference test)")
    if "bootstrap" in r:
        a = r["bootstrap"]
        lines.append(f"  - bootstrap (BCa, {a['resamples']} resamples, seed {a['seed']}): {level} CI "
                     f"{_interval(a[key], '{:.3f}'.format)}: {'inside' if a['equivalent'] else 'not inside'} the margin")
    disagree = [n for n, a in r.items() if a["equivalent"] != e["equivalent"]]
    if disagree:
        lines.append(f"  - **{', '.join(disagree)} disagree{'s' if len(disagree) == 1 else ''} with the endpoint's "
                     "verdict**; the verdict is the endpoint's, as the protocol says.")
    return lines


def plot_model(path: Path, model: str, result: dict, alpha: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = statistics.interval_key(alpha)
    endpoints = result["endpoints"]
    fig, (values_ax, ci_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"flax": "tab:orange", "torch": "tab:blue"}
    if any(e["kind"] == "sd ratio" for e in endpoints.values()):
        values = {f: np.asarray(v) for f, v in result["test_accuracy_pp"].items()}
        values_ax.set(ylabel=f"test accuracy at epoch {result['epochs']} (%)")
    else:
        epoch = next(e["epoch"] for e in endpoints.values() if "epoch" in e)
        values = {f: np.asarray(v)[:, epoch - 1] for f, v in result["train_loss"].items()}
        values_ax.set(ylabel=f"train loss, epoch {epoch} (log scale)", yscale="log")
    rng = np.random.default_rng(0)
    for i, (f, v) in enumerate(values.items()):
        values_ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=12, color=colours[f], alpha=0.7)
    values_ax.set_xticks([0, 1], ["Flax", "PyTorch"])
    values_ax.set_title(f"{model}: {len(result['seeds'])} seeds per framework", fontsize=10)
    rows = []
    for name, e in endpoints.items():
        if not e.get("computable", True):
            continue
        rows.append((name, e, e))
        rows += [(f"  {check}", e, r) for check, r in e.get("robustness", {}).items()]
    for y, (name, e, r) in enumerate(rows):
        estimate = next(r[k] for k in ("difference", "hodges_lehmann", "sd_ratio", "ratio") if k in r)
        scale = (lambda x: x) if e["kind"] == "sd ratio" else _ratio_pct
        ci_ax.plot([scale(x) for x in r[key]], [y, y], "|-", color="k", ms=10)
        ci_ax.plot([scale(estimate)], [y], "o", color="k")
    kind = next(iter(endpoints.values()))["kind"] if endpoints else "log ratio"
    margin = next(iter(endpoints.values()))["margin"] if endpoints else 0
    if kind == "sd ratio":
        ci_ax.set_xscale("log")
        for m in (1 / margin, margin):
            ci_ax.axvline(m, color="k", ls="--", lw=1)
        ci_ax.set_xlabel("SD ratio Flax / PyTorch")
    else:
        for m in (_ratio_pct(-margin), _ratio_pct(margin)):
            ci_ax.axvline(m, color="k", ls="--", lw=1)
        ci_ax.set_xlabel("Flax / PyTorch − 1 (%)")
    ci_ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ci_ax.invert_yaxis()
    ci_ax.set_title(f"{100 * (1 - 2 * alpha):g} % intervals (dashed: the margin)", fontsize=10)
    ci_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_lines(r: dict, alpha: float) -> list[str]:
    """One design's endpoints of one model, and its plateau escape where it was analysed."""
    lines = []
    for name, e in r["endpoints"].items():
        lines.append(endpoint_line(name.replace("_", " "), e, alpha))
        lines += robustness_lines(e, alpha)
    if "plateau_escape" in r:
        e = r["plateau_escape"]
        lines.append(f"- leaving the plateau (first epoch with test accuracy > {e['threshold']:.0%}): still on it "
                     f"after each epoch Flax {[round(x, 2) for x in e['survival']['flax'][:8]]}, PyTorch "
                     f"{[round(x, 2) for x in e['survival']['torch'][:8]]} (epochs 1-8); KS D = "
                     f"{e['ks_statistic']:.2f}, p = {e['ks_p']:.2g} (a difference test).")
    return lines


CLAIM = {True: "equivalent", False: "not shown"}


def direction_verdict(d: dict) -> str:
    return "difference shown" if d["rejects"] else "no difference shown (not evidence of none)"


def combined_lines(report: dict) -> list[str]:
    """The combined claim: each model's, then the study's, with the margin each endpoint not shown decides."""
    combined = report["combined"]
    if combined["all_equivalent"] is None:
        return []
    key = statistics.interval_key(report["alpha"])
    lines = ["## The combined claim", "",
             "An intersection-union test, as the protocol defines it: a model's claim needs every endpoint it has "
             "here, the study's every model's; each endpoint at its own level, no correction.", ""]
    for model, equivalent in combined["models"].items():
        failing = [f"{name.replace('_', ' ')}: its {key[2:]} % CI decides {_decided(e, key)}"
                   for d in report["models"][model].values() for name, e in d.get("endpoints", {}).items()
                   if not e.get("equivalent") and e.get("computable", True)]
        failing += [f"{name.replace('_', ' ')}: not computable" for d in report["models"][model].values()
                    for name, e in d.get("endpoints", {}).items() if not e.get("computable", True)]
        lines.append(f"- {model}, every endpoint tested here: **{CLAIM[equivalent]}**"
                     + (f" ({'; '.join(failing)})" if failing else "") + ".")
    lines += [f"- The study, every endpoint of every model: **{CLAIM[combined['all_equivalent']]}**.", ""]
    return lines


def summary_table(report: dict) -> list[str]:
    """The README's block: each equivalence endpoint and direction test at the interval that decides it,
    the follow-up's reading, the combined claim, and the report's status where it is not confirmatory."""
    key, level = statistics.interval_key(report["alpha"]), f"{100 * (1 - 2 * report['alpha']):g}%"
    lines = [f"| model | endpoint | seeds per framework | Flax vs PyTorch | {level} CI | verdict |",
             "|---|---|---:|---|---|---|"]
    for model, entry in report["models"].items():
        for design, r in entry.items():
            for name, e in r.get("endpoints", {}).items():
                what = (f"SD ratio of test accuracy, epoch {r['epochs']}, within [1/{e['margin']:g}, {e['margin']:g}]"
                        if e["kind"] == "sd ratio" else
                        f"{name.replace('_', ' ')}, Flax / PyTorch − 1, within ×/÷ {math.exp(e['margin']):g}")
                if not e.get("computable", True):
                    lines.append(f"| {model} | {what} | {len(r['seeds'])} | - | - | not computable: {e['reason']} |")
                    continue
                fmt = '{:.3f}'.format if e["kind"] == "sd ratio" else _pct
                estimate = fmt(e["sd_ratio"] if e["kind"] == "sd ratio" else e["difference"])
                verdict = "equivalent" if e["equivalent"] else "equivalence not shown"
                lines.append(f"| {model} | {what} | {len(r['seeds'])} | {estimate} | {_interval(e[key], fmt)} | "
                             f"**{verdict}** (the {level} CI decides {_decided(e, key)}) |")
    for d in report.get("direction", []):
        status = "confirmatory" if d["confirmatory"] else "descriptive"
        verdict = (f"{direction_verdict(d)}, p = {d['p']:.2g}" if d["confirmatory"]
                   else "- (the fixed sequence stopped before it)")
        lines.append(f"| {d['model']} | direction: mean log train loss, epochs {d['epochs'][0]}-{d['epochs'][1]}, "
                     f"Flax / PyTorch − 1 (difference test, α = {d['alpha']}, {status}) | {d['n'][0]} | "
                     f"{_pct(d['difference'])} | {_interval(d['ci'], _pct)} | {verdict} |")
    for model, f in report.get("follow_up", {}).items():
        p = f["paired"]
        reading = f["reading"] if f["confirmatory"] else f"exploratory: {f['reading']}"
        lines.append(f"| {model} | follow-up: the direction statistic, paired design | {len(f['seeds'])} | "
                     f"{_pct(p['difference'])} | {_interval(p['ci'], _pct)} | {reading} (paired p = {p['p']:.2g}; "
                     f"designs differ: p = {f['designs_p']:.2g}) |")
    combined = report["combined"]
    if combined["all_equivalent"] is not None:
        lines += ["", "Combined claim (intersection-union): " + "; ".join(
            f"{m} {CLAIM[v]}" for m, v in combined["models"].items())
                  + f"; every endpoint tested here: **{CLAIM[combined['all_equivalent']]}**."]
    if report["status"] != "confirmatory":
        lines += ["", f"**{report['status'].upper()}**: {report['status_reason']}"]
    return lines


def render(report: dict) -> list[str]:
    """report.md's lines."""
    alpha = report["alpha"]
    plan = f"Protocol: [`{report['document']}`](PROTOCOL.md)" if report["document"] else \
        "Plan: the command line's (not pre-registered)"
    lines = [f"# Equivalence: {report['protocol']} {'protocol' if report['document'] else 'study'}", "",
             f"{plan}. Command: `{report['command']}`.", ""]
    if report["status"] != "confirmatory":
        lines += [f"**{report['status'].upper()}**: {report['status_reason']}", ""]
    lines += [f"Equivalence tests: TOST at α = {alpha} each side (equivalent <=> the {100 * (1 - 2 * alpha):g} % "
              "interval lies inside the margin; the 90 % interval is shown too, labelled); Welch's t for log ratios, "
              "two one-sided F-tests for the SD ratio. An endpoint not shown equivalent is not shown to differ.", ""]
    for model, entry in report["models"].items():
        lines += [f"## {model}", "", f"![{model}]({model}.png)", ""]
        # Every design whose endpoints were analysed (a follow-up's design has its own section below).
        designs = [(design, r) for design, r in entry.items() if r.get("endpoints")] or [next(iter(entry.items()))]
        for design, r in designs:
            if len(designs) > 1:
                lines += [f"### {design} runs", ""]
            lines += [f"{len(r['seeds'])} seeds per framework ({r['seeds'][0]}-{r['seeds'][-1]}), {r['epochs']} epochs.", ""]
            lines += model_lines(r, alpha) + [""]
    lines += combined_lines(report)
    if report.get("direction"):
        lines += ["## Direction (difference test, fixed sequence)", "",
                  "| model | epochs | Flax / PyTorch − 1 (mean log train loss) | 95% CI | Welch p | α | status | "
                  "verdict |", "|---|---|---|---|---:|---:|---|---|"]
        for d in report["direction"]:
            verdict = direction_verdict(d)
            lines.append(f"| {d['model']} | {d['epochs'][0]}-{d['epochs'][1]} | {_pct(d['difference'])} | "
                         f"{_interval(d['ci'], _pct)} | {d['p']:.2g} | {d['alpha']} | "
                         f"{'confirmatory' if d['confirmatory'] else 'descriptive (sequence stopped before it)'} | "
                         f"{verdict if d['confirmatory'] else '-'} |")
        lines.append("")
    for model, f in report.get("follow_up", {}).items():
        p = f["paired"]
        lines += [f"## Follow-up, {model}: paired design", "", f"{len(f['seeds'])} seeds per framework "
                  f"({f['seeds'][0]}-{f['seeds'][-1]}). " + ("" if f["confirmatory"] else
                  "**Exploratory**: the protocol follows up only a model whose direction test rejected, and this "
                  "one's did not (or was not confirmatory)."), "",
                  f"Paired Flax − PyTorch of the direction statistic: {_pct(p['difference'])}, 95% CI "
                  f"{_interval(p['ci'], _pct)}, p = {p['p']:.2g}; designs compared: z = {f['designs_z']:.2f}, "
                  f"p = {f['designs_p']:.2g}. Reading, as the protocol defines it: **{f['reading']}**.", ""]
    c = report["conduct"]
    held = {True: "holds this protocol's table", False: "does not hold it", None: "not in this repository: not checked"}
    registration = (f"committed in {c['protocol_commit']['commit'][:10]} at {c['protocol_commit']['time']}"
                    if c["protocol_commit"] else "its commit not found (no git history here)" if report["document"]
                    else "planned on the command line, not committed before its runs")
    lines += ["## How the records were made", "",
              f"The protocol: {registration}. {c['runs']} runs; their sessions (each start or resume) by commit: "
              + (", ".join(f"{k[:10]} {n}" + (f" ({held[c['commits_hold_the_protocol'].get(k)]})" if report["document"]
                                                else "") for k, n in c["commits"].items())
                 or "none recorded")
              + "; by CPU model: " + (", ".join(f"{k} {n}" for k, n in c["cpu_models"].items()) or "none recorded")
              + f"; packages: {', '.join(f'{k} {n}' for k, n in c['constraints'].items())}; first session started "
              f"{c['first_start']}, last ended {c['last_end']}.", "",
              f"Resumed runs: {'; '.join(c['resumed']) if c['resumed'] else 'none'}.", "",
              "Deviations from the protocol's conduct rules: " + ("; ".join(c["deviations"]) if c["deviations"]
                                                                  else "none") + ".", "",
              f"Report made on: {report['analysed_on']}."]
    return lines


def build(out: Path, protocol: Protocol, runs: dict[str, dict[str, Runs]], command: str, status: str,
          reason: str, analysed_on: str) -> dict[str, Any]:
    """Analyse `runs` (model -> design -> Runs) as `protocol` says; write OUT/report.json, OUT/report.md
    and one PNG per model. `status`: "confirmatory", or what the report is instead (and `reason`)."""
    import os

    from cnn_parity.files import write_json_atomic

    models = {model: {design: analyse_model(r, protocol.models[model], protocol, design != "independent",
                                            endpoints_too=design in protocol.designs)
                      for design, r in by_design.items()} for model, by_design in runs.items()}
    report: dict[str, Any] = {"protocol": protocol.name, "document": protocol.document, "command": command,
                              "alpha": protocol.alpha, "status": status, "status_reason": reason, "models": models}
    report["combined"] = combined_claim(models, protocol)
    if protocol.direction:
        report["direction"] = direction_tests(models, protocol)
        if protocol.follow_up:
            independent = {d["model"]: d for d in report["direction"]}
            # The protocol follows up only a model whose confirmatory direction test rejected; paired runs of
            # any other model are analysed the same way, labelled exploratory.
            report["follow_up"] = {m: {"seeds": e[protocol.follow_up.design]["seeds"],
                                       "confirmatory": bool(independent[m]["confirmatory"] and independent[m]["rejects"]),
                                       **follow_up_test(independent[m], e[protocol.follow_up.design],
                                                        protocol.follow_up.alpha)}
                                   for m, e in models.items() if protocol.follow_up.design in e and m in independent}
    report["conduct"] = conduct([(m, d, r) for m, by_design in runs.items() for d, r in by_design.items()], protocol,
                                out / "report.json")
    report["analysed_on"] = analysed_on
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    lines = render(report)
    if protocol.document:
        link = os.path.relpath(REPO / protocol.document, out.resolve())
        lines = [line.replace("](PROTOCOL.md)", f"]({link})") for line in lines]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    for model, entry in models.items():
        plot_model(out / f"{model}.png", model, entry.get("independent") or next(iter(entry.values())), protocol.alpha)
    return report
