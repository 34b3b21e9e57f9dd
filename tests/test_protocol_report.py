"""The second protocol's analysis on synthetic records: its level decides by the 95 % interval, its
lenet endpoint is epoch 5 alone, a model's verdict needs every endpoint it has, its direction statistic
covers the registered epochs and its test runs in a fixed sequence, its follow-up runs the models it
names and reads as the protocol says, its conduct check names every deviation, and its command reports
nothing before every planned run is in."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cnn_parity.frameworks import FRAMEWORKS
from cnn_parity.provenance import source
from parity_studies import equivalence, protocol_report, protocols

from .test_cli import REPO
from .test_equivalence import fake_run
from .test_protocols import deviations

SECOND = protocols.SECOND
COMMIT = "a" * 40


def provenance(commit=COMMIT, dirty=False, cpu="Test CPU", started="2030-01-01T00:00:00+00:00"):
    return {"provenance": {"sessions": [{"from_step": 0, "started_at": started, "to_step": 10, "commit": commit,
                                         "ended_at": "2030-01-01T00:05:00+00:00", "cpu_model": cpu, "dirty": dirty,
                                         "version": "0"}]},
            "versions": {"constraints": "constraints.txt"}}


def pinned(framework):
    return ({"pipeline": "device", "options": {"api": "linen", "conv_impl": "gemm", "devices": 1}} if framework == "flax"
            else {"pipeline": "tensor", "options": {"devices": 1}})


def write_model(out, model, seeds, losses, accuracies, escapes=None, design="independent", summary=None):
    """Records of `seeds` per framework: losses[f] seeds × epochs, accuracies[f] last-epoch accuracy
    (fraction); test accuracy 0.11 before each run's escape epoch (default 2), 0.9 after."""
    epochs = np.shape(losses["flax"])[1]
    for f in FRAMEWORKS:
        for i, seed in enumerate(seeds):
            escape = escapes[f][i] if escapes else 2
            curve = [0.11 if e + 1 < escape else 0.9 for e in range(epochs - 1)] + [accuracies[f][i]]
            streams = {"recipe": dict(zip(("init_rng", "shuffle_rng"), protocols.DESIGNS[design]))}
            fake_run(out, model, design, f, seed, epochs, list(losses[f][i]), curve,
                     summary={**provenance(), **pinned(f), **streams, **(summary or {}).get(f, {})})
    return protocol_report.Runs(list(seeds), {f: [equivalence.record_dir(out, model, design, f, s) for s in seeds]
                                              for f in FRAMEWORKS})


def with_seeds(n, **changes):
    """SECOND with n seeds per model (and other changes)."""
    models = {m: dataclasses.replace(p, seeds=tuple(range(n))) for m, p in SECOND.models.items()}
    return dataclasses.replace(SECOND, models=models, **changes)


def shift_between(sd, n, low_alpha=0.025, high_alpha=0.05, margin=math.log(1.2)):
    """A difference whose 1 − 2·high_alpha bound is inside `margin` and whose 1 − 2·low_alpha bound is not."""
    se = sd * math.sqrt(2 / n)
    return margin - se * (stats.t.isf(high_alpha, 2 * n - 2) + stats.t.isf(low_alpha, 2 * n - 2)) / 2


@pytest.mark.parametrize("fraction, equivalent", [(0.0, True), (1.0, False)])
def test_lenets_endpoint_is_epoch_5_decided_by_the_95_percent_interval(tmp_path, fraction, equivalent):
    """Flax's epoch-5 loss above PyTorch's by a shift whose 90 % CI is inside ×/÷ 1.2 and whose 95 % CI
    is not (fraction 1) or by none (fraction 0); epoch 6 far outside the margin either way (not tested)."""
    n, sd = 20, 0.1
    torch = np.exp(sd * deviations(n))[:, None] * np.linspace(2.3, 0.3, 6)
    flax = torch * np.array([1, 1, 1, 1, math.exp(fraction * shift_between(sd, n)), 1.5])
    accuracies = {f: 0.98 + 0.001 * deviations(n) for f in FRAMEWORKS}
    runs = write_model(tmp_path, "lenet", range(n), {"flax": flax, "torch": torch}, accuracies)
    protocol = with_seeds(n)
    result = protocol_report.analyse_model(runs, protocol.models["lenet"], protocol, paired=False)
    assert list(result["endpoints"]) == ["train_loss_epoch_5"]
    e = result["endpoints"]["train_loss_epoch_5"]
    assert e["equivalent"] is equivalent and result["all_endpoints_equivalent"] is equivalent
    if fraction:
        assert e["ci90"][1] < math.log(1.2) < e["ci95"][1]  # equivalent at 0.05, not at the protocol's 0.025
    assert set(e["robustness"]) == {"rank", "escape_adjusted"}
    assert e["robustness"]["escape_adjusted"]["levels"] == {"1-2": [n, n]}


@pytest.mark.parametrize("ratio, equivalent", [(1.0, True), (None, False)])
def test_fashion_cnns_spread_is_decided_by_the_95_percent_f_interval(tmp_path, ratio, equivalent):
    """60 seeds; Flax's accuracy SD ratio 1, or one whose 90 % F interval ends below 2 and 95 % above."""
    n = 60
    if ratio is None:  # the observed ratio whose upper bounds straddle 2
        f90, f95 = (stats.f.ppf(a, n - 1, n - 1) for a in (0.05, 0.025))
        ratio = 2 * (math.sqrt(f90) + math.sqrt(f95)) / 2
    accuracies = {"torch": 0.9 + 0.001 * deviations(n), "flax": 0.9 + 0.001 * ratio * deviations(n)}
    losses = {f: np.ones((n, 2)) * np.exp(0.01 * deviations(n))[:, None] for f in FRAMEWORKS}
    runs = write_model(tmp_path, "fashion_cnn", range(n), losses, accuracies)
    protocol = with_seeds(n)
    result = protocol_report.analyse_model(runs, protocol.models["fashion_cnn"], protocol, paired=False)
    spread = result["endpoints"]["sd_ratio"]
    assert spread["sd_ratio"] == pytest.approx(ratio) and spread["margin"] == 2.0
    assert spread["equivalent"] is equivalent
    if not equivalent:
        assert spread["ci90"][1] < 2 < spread["ci95"][1]
    assert set(spread["robustness"]) == {"brown_forsythe", "bootstrap"}
    assert spread["robustness"]["bootstrap"]["resamples"] == SECOND.bootstrap_resamples
    assert spread["robustness"]["bootstrap"]["seed"] == SECOND.bootstrap_seed == 3000


def direction_entry(difference, n=30, sd=0.05, seed=0):
    rng = np.random.default_rng(seed)
    torch = rng.normal(0, sd, n)
    return {"independent": {"direction_statistic": {"epochs": [1, 2], "flax": (torch + difference + rng.normal(0, sd, n)).tolist(),
                                                    "torch": (torch + rng.normal(0, sd, n)).tolist()}}}


@pytest.mark.parametrize("lenet_shift, fashion_confirmatory", [(0.0, False), (0.2, True)])
def test_the_direction_test_is_a_fixed_sequence(lenet_shift, fashion_confirmatory):
    models = {"lenet": direction_entry(lenet_shift), "fashion_cnn": direction_entry(0.2, seed=1)}
    lenet, fashion = protocol_report.direction_tests(models, SECOND)
    assert (lenet["model"], fashion["model"]) == SECOND.direction.order
    assert lenet["confirmatory"] and lenet["rejects"] is (lenet_shift > 0)
    assert fashion["rejects"] and fashion["confirmatory"] is fashion_confirmatory
    assert lenet["alpha"] == fashion["alpha"] == 0.05 and not lenet["paired"]


@pytest.mark.parametrize("independent, paired, reading", [
    (0.05, 0.05, "the computation carries it"), (0.05, 0.0, "the draws carry it"), (0.05, 0.02, "undecided"),
    (0.002, 0.0, "undecided")])
def test_the_follow_ups_reading(independent, paired, reading):
    rng = np.random.default_rng(2)
    base = rng.normal(0, 0.02, 20)
    entry = {"direction_statistic": {"epochs": [1, 2], "flax": (base + paired + rng.normal(0, 0.01, 20)).tolist(),
                                     "torch": base.tolist()}}
    main = {"difference": independent, "se": 0.005}
    result = protocol_report.follow_up_test(main, entry, 0.05)
    assert result["paired"]["paired"] and result["reading"] == reading


def test_the_direction_statistic_is_the_mean_log_loss_over_the_registered_epochs():
    """Epoch e's loss exp(e): the statistic is the mean of e over lenet's epochs 5-21 and fashion_cnn's 1-40."""
    loss = np.exp(np.arange(1.0, 41.0))[None, :].repeat(3, 0)
    lenet = protocol_report.direction_statistic(loss[:, :21], SECOND.models["lenet"].direction_epochs)
    fashion = protocol_report.direction_statistic(loss, SECOND.models["fashion_cnn"].direction_epochs)
    assert lenet == pytest.approx([13.0] * 3) and fashion == pytest.approx([20.5] * 3)


def test_the_follow_up_runs_the_models_whose_confirmatory_direction_test_rejected(tmp_path):
    direction = [{"model": "lenet", "confirmatory": True, "rejects": False},
                 {"model": "fashion_cnn", "confirmatory": False, "rejects": True}]
    (tmp_path / "report.json").write_text(json.dumps({"direction": direction}))
    assert equivalence.rejected_models(tmp_path) == []
    direction[0]["rejects"] = direction[1]["confirmatory"] = True
    (tmp_path / "report.json").write_text(json.dumps({"direction": direction}))
    assert equivalence.rejected_models(tmp_path) == ["lenet", "fashion_cnn"]
    direction[1]["rejects"] = False
    (tmp_path / "report.json").write_text(json.dumps({"direction": direction}))
    assert equivalence.rejected_models(tmp_path) == ["lenet"]


def test_escape_levels():
    levels = SECOND.models["lenet"].escape_levels
    assert levels == (2, 3, 4)
    found = [protocol_report.escape_level(e, levels) for e in (1, 2, 3, 4, 5, 21, None)]
    assert found == ["1-2", "1-2", "3", "4 or later", "4 or later", "4 or later", "4 or later"]


def test_a_models_verdict_needs_every_endpoint_it_has(tmp_path):
    """A plan with two endpoints, the train loss equivalent and the spread not: not shown equivalent."""
    n = 60
    accuracies = {"torch": 0.9 + 0.001 * deviations(n), "flax": 0.9 + 0.003 * deviations(n)}
    losses = {f: np.ones((n, 2)) * np.exp(0.01 * deviations(n))[:, None] for f in FRAMEWORKS}
    runs = write_model(tmp_path, "fashion_cnn", range(n), losses, accuracies)
    protocol = with_seeds(n)
    plan = dataclasses.replace(protocol.models["fashion_cnn"], train_loss_margin=1.2, train_loss_epochs=(2, 2))
    result = protocol_report.analyse_model(runs, plan, protocol, paired=False)
    endpoints = result["endpoints"]
    assert endpoints["train_loss_epoch_2"]["equivalent"] and not endpoints["sd_ratio"]["equivalent"]
    assert result["all_endpoints_equivalent"] is False


def test_conduct_names_every_deviation(tmp_path):
    """Four runs per framework: one without provenance, one from a dirty tree, one from another commit,
    one Flax run with another --conv-impl; one PyTorch run with the paired design's batch order."""
    n = 4
    losses = {f: np.exp(0.05 * deviations(n))[:, None] * np.ones((n, 2)) for f in FRAMEWORKS}
    runs = write_model(tmp_path, "fashion_cnn", range(n), losses, {f: 0.9 + 0.001 * deviations(n) for f in FRAMEWORKS})
    record = equivalence.record_dir
    for seed, change in [(0, lambda s: s.pop("provenance")), (1, lambda s: s["provenance"]["sessions"][0].update(dirty=True)),
                         (2, lambda s: s["provenance"]["sessions"][0].update(commit="b" * 40)),
                         (3, lambda s: s["options"].update(conv_impl="xla"))]:
        path = record(tmp_path, "fashion_cnn", "independent", "flax", seed) / "summary.json"
        summary = json.loads(path.read_text())
        change(summary)
        path.write_text(json.dumps(summary))
    path = record(tmp_path, "fashion_cnn", "independent", "torch", 0) / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "recipe": {"init_rng": "framework", "shuffle_rng": "shared"}}))
    runs = protocol_report.Runs(runs.seeds, runs.records)
    found = protocol_report.conduct([("fashion_cnn", "independent", runs)], SECOND)
    text = "; ".join(found["deviations"])
    assert "fashion_cnn independent flax seed 0: no provenance" in text
    assert "flax seed 1: run from a dirty tree" in text
    assert "records from 2 commits" in text
    assert "flax seed 3: --conv-impl xla (pinned gemm)" in text
    assert "torch seed 0: shuffle_rng shared (the independent design's framework)" in text
    assert found["runs"] == 8 and found["cpu_models"] == {"Test CPU": 7} and found["commits"] == {COMMIT: 6, "b" * 40: 1}


def test_conduct_names_a_run_before_the_protocol_and_a_session_without_provenance_keys(tmp_path):
    n = 2
    losses = {f: np.exp(0.05 * deviations(n))[:, None] * np.ones((n, 2)) for f in FRAMEWORKS}
    runs = write_model(tmp_path, "fashion_cnn", range(n), losses, {f: 0.9 + 0.001 * deviations(n) for f in FRAMEWORKS})
    for seed, change in [(0, lambda s: s.update(started_at="2020-01-01T00:00:00+00:00")),
                         (1, lambda s: [s.pop("cpu_model"), s.pop("version")])]:
        path = equivalence.record_dir(tmp_path, "fashion_cnn", "independent", "torch", seed) / "summary.json"
        summary = json.loads(path.read_text())
        change(summary["provenance"]["sessions"][0])
        path.write_text(json.dumps(summary))
    found = protocol_report.conduct([("fashion_cnn", "independent", protocol_report.Runs(runs.seeds, runs.records))], SECOND)
    if found["protocol_commit"] is None:
        pytest.skip("no git history here: the protocol's registration time cannot be checked")
    text = "; ".join(found["deviations"])
    assert "a run started (2020-01-01T00:00:00+00:00) before the protocol was committed" in text
    assert "fashion_cnn independent torch seed 1: a session without version, cpu_model" in text


def test_conduct_orders_session_times_as_times_not_text(tmp_path):
    """01:00 at UTC+02:00 is 23:00 UTC the day before: the first start, though its text sorts later."""
    n = 2
    losses = {f: np.exp(0.05 * deviations(n))[:, None] * np.ones((n, 2)) for f in FRAMEWORKS}
    runs = write_model(tmp_path, "fashion_cnn", range(n), losses, {f: 0.9 + 0.001 * deviations(n) for f in FRAMEWORKS})
    path = equivalence.record_dir(tmp_path, "fashion_cnn", "independent", "flax", 1) / "summary.json"
    summary = json.loads(path.read_text())
    summary["provenance"]["sessions"][0].update(started_at="2030-01-01T01:00:00+02:00", ended_at="2030-01-01T02:00:00+02:00")
    path.write_text(json.dumps(summary))
    found = protocol_report.conduct([("fashion_cnn", "independent", protocol_report.Runs(runs.seeds, runs.records))], SECOND)
    assert found["first_start"] == "2030-01-01T01:00:00+02:00" and found["last_end"] == "2030-01-01T00:05:00+00:00"


def test_the_commit_that_registered_the_protocol_holds_its_table_and_a_changed_table_does_not(monkeypatch):
    registration = protocol_report.registered(SECOND)
    if registration is None:
        pytest.skip("no git history here: the protocol's commit cannot be read")
    assert protocol_report.protocol_at(registration["commit"], SECOND) is True
    text = (REPO / SECOND.document).read_text()
    assert "\nalpha = 0.025\n" in text
    real_git = protocol_report._git
    monkeypatch.setattr(protocol_report, "_git", lambda *args: text.replace("\nalpha = 0.025\n", "\nalpha = 0.05\n")
                        if args[0] == "show" else real_git(*args))
    assert protocol_report.protocol_at(registration["commit"], SECOND) is False
    assert protocol_report.protocol_at("0" * 40, SECOND) is None  # not a commit of this repository


@pytest.mark.parametrize("flax_spread, all_equivalent", [(0.001, True), (0.004, False)])
def test_the_combined_claim_needs_every_endpoint_of_every_model(tmp_path, flax_spread, all_equivalent):
    """lenet's epoch-5 loss equivalent; fashion_cnn's SD ratio 1 (equivalent) or 4 (not): the study's claim
    holds only with both, and the report names the margin an endpoint not shown decides."""
    n = 30
    lenet_losses = {f: np.exp(0.05 * deviations(n))[:, None] * np.linspace(2.3, 0.3, 21) for f in FRAMEWORKS}
    lenet = write_model(tmp_path / "records", "lenet", range(n), lenet_losses,
                        {f: 0.98 + 0.001 * deviations(n) for f in FRAMEWORKS})
    fashion_losses = {f: np.exp(0.05 * deviations(n))[:, None] * np.linspace(1, 0.2, 40) for f in FRAMEWORKS}
    fashion = write_model(tmp_path / "records", "fashion_cnn", range(n), fashion_losses,
                          {"torch": 0.9 + 0.001 * deviations(n), "flax": 0.9 + flax_spread * deviations(n)})
    report = protocol_report.build(tmp_path / "out", with_seeds(n), {"lenet": {"independent": lenet},
                                                                    "fashion_cnn": {"independent": fashion}},
                                   "a command", "confirmatory", "", "a machine")
    assert report["combined"] == {"models": {"lenet": True, "fashion_cnn": all_equivalent}, "all_equivalent": all_equivalent}
    text = (tmp_path / "out" / "report.md").read_text()
    assert "- lenet, every endpoint tested here: **equivalent**." in text
    if all_equivalent:
        assert "- fashion_cnn, every endpoint tested here: **equivalent**." in text
        assert "every endpoint of every model: **equivalent**." in text
    else:
        assert "- fashion_cnn, every endpoint tested here: **not shown** (sd ratio: its 95 % CI decides [1/" in text
        assert "every endpoint of every model: **not shown**." in text


@pytest.mark.filterwarnings("ignore")  # bootstrap resamples of 3 runs are often degenerate
def test_the_command_reports_nothing_before_every_planned_run_and_pins_the_flags(tmp_path, monkeypatch, capsys):
    """Three of lenet's and fashion_cnn's planned seeds recorded: progress counts only, no report; with
    --final, a report that names the missing runs. Runs it trains get the protocol's pinned flags."""
    for model, epochs in (("lenet", 21), ("fashion_cnn", 40)):
        seeds = SECOND.seeds(model)[:3]
        losses = {f: np.exp(0.05 * deviations(3))[:, None] * np.linspace(2, 0.5, epochs) for f in FRAMEWORKS}
        write_model(tmp_path, model, seeds, losses, {f: 0.9 + 0.001 * deviations(3) for f in FRAMEWORKS})
    assert equivalence.main(["--protocol", "second", "--report-only", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lenet: 3 of 60 seeds recorded" in out and "fashion_cnn: 3 of 80" in out and "no statistic" in out
    assert not (tmp_path / "report.json").exists()
    assert equivalence.main(["--protocol", "second", "--report-only", "--final", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "final, with missing runs" and "lenet [3003" in report["status_reason"]
    assert report["alpha"] == 0.025 and list(report["models"]) == ["lenet", "fashion_cnn"]
    assert "FINAL, WITH MISSING RUNS" in (tmp_path / "report.md").read_text()
    code = source()
    assert (f"by the code at {code['commit']}" if "commit" in code else "(no git checkout)") in report["analysed_on"]

    trained = []

    def train(workdir, framework, model, seed, flags, *args):
        trained.append((framework, list(flags)))
        losses = list(np.linspace(2, 0.5, 21) * (1 + seed / 1e4))
        fake_run(tmp_path, model, "independent", framework, seed, 21, losses, [0.9] * 21, workdir=workdir,
                 summary={**provenance(), **pinned(framework)})

    monkeypatch.setattr(equivalence.runs, "train", train)
    assert equivalence.main(["--protocol", "second", "--models", "lenet", "--seeds", "3003", "3004", "--out",
                             str(tmp_path), "--scratch", str(tmp_path / "scratch")]) == 0
    flags = dict(trained)
    assert flags["flax"][:8] == list(SECOND.flags["flax"]) and flags["torch"][:2] == list(SECOND.flags["torch"])
    assert "--set" in flags["flax"] and "init_rng=framework" in flags["flax"]


def test_seeds_other_than_the_protocols_make_an_exploratory_report(tmp_path):
    seeds = [3000, 3001, 3002]
    losses = {f: np.exp(0.05 * deviations(3))[:, None] * np.linspace(2, 0.5, 21) for f in FRAMEWORKS}
    write_model(tmp_path, "lenet", seeds, losses, {f: 0.9 + 0.001 * deviations(3) for f in FRAMEWORKS})
    assert equivalence.main(["--protocol", "second", "--models", "lenet", "--seeds", *map(str, seeds), "--report-only",
                             "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "exploratory" and "seeds and models" in report["status_reason"]
    assert (tmp_path / "lenet.png").stat().st_size > 10_000


@pytest.mark.filterwarnings("ignore")  # bootstrap resamples of 3 runs are often degenerate
@pytest.mark.parametrize("lenet_shift, confirmatory", [(1.0, False), (1.3, True)])
def test_the_follow_ups_paired_runs_are_analysed_for_the_direction_only(tmp_path, capsys, lenet_shift, confirmatory):
    """lenet's paired runs are analysed for the direction; the reading is the protocol's only where lenet's
    direction test rejected (Flax's loss 30 % higher), exploratory where it did not (no difference)."""
    for model, epochs in (("lenet", 21), ("fashion_cnn", 40)):
        losses = {f: np.exp(0.05 * deviations(3))[:, None] * np.linspace(2, 0.5, epochs) for f in FRAMEWORKS}
        if model == "lenet":
            losses["flax"] = losses["flax"] * lenet_shift
        write_model(tmp_path, model, SECOND.seeds(model)[:3], losses, {f: 0.9 + 0.001 * deviations(3) for f in FRAMEWORKS})
    seeds = SECOND.follow_up.seeds
    losses = {"torch": np.exp(0.05 * deviations(len(seeds)))[:, None] * np.linspace(2, 0.5, 21)}
    losses["flax"] = losses["torch"] * 1.01
    write_model(tmp_path, "lenet", seeds, losses, {f: 0.9 + 0.001 * deviations(len(seeds)) for f in FRAMEWORKS},
                design="paired")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- equivalence-report-second:begin -->\nold\n<!-- equivalence-report-second:end -->\n")
    assert equivalence.main(["--protocol", "second", "--report-only", "--final", "--out", str(tmp_path),
                             "--update-readme", str(readme)]) == 0
    assert "lenet follow-up (paired): 20 of 20 seeds recorded" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    paired = report["models"]["lenet"]["paired"]
    assert paired["endpoints"] == {} and paired["all_endpoints_equivalent"] is None and paired["paired"]
    follow = report["follow_up"]["lenet"]
    assert follow["paired"]["difference"] == pytest.approx(math.log(1.01)) and follow["paired"]["rejects"]
    assert report["direction"][0]["rejects"] is confirmatory and follow["confirmatory"] is confirmatory
    text = (tmp_path / "report.md").read_text()
    assert "fashion_cnn" not in report["follow_up"] and "Follow-up, lenet: paired design" in text
    assert ("**Exploratory**: the protocol follows up only a model whose direction test rejected" in text) is not confirmatory
    # The records are in a temporary folder, not committed: whether the follow-up began after the study's
    # report was committed cannot be checked, and the report says so.
    assert any("is not committed here" in d for d in report["conduct"]["deviations"])
    # The README's block is the report's summary table: each endpoint at the interval that decides it, the
    # direction tests, the follow-up's reading (labelled exploratory where the protocol does not follow up).
    block = readme.read_text().split("<!-- equivalence-report-second:begin -->\n")[1].split("<!--")[0]
    assert block == "\n".join(protocol_report.summary_table(report)) + "\n"
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in block.splitlines()}
    assert "(the 95% CI decides ×/÷" in rows["lenet", "train loss epoch 5, Flax / PyTorch − 1, within ×/÷ 1.2"]
    assert "[1/2, 2]" in rows["fashion_cnn", "SD ratio of test accuracy, epoch 40, within [1/2, 2]"]
    follow_row = rows["lenet", "follow-up: the direction statistic, paired design"]
    assert ("| exploratory: " in follow_row) is not confirmatory and follow["reading"] in follow_row
    assert "Combined claim (intersection-union)" in block and "**FINAL, WITH MISSING RUNS**" in block


def test_a_follow_up_with_a_missing_run_waits_for_it_or_with_final_names_it(tmp_path, capsys):
    """Every planned run of the study, and 19 of lenet's 20 follow-up seeds: the report has no follow-up
    (no interim look); with --final, the follow-up on the 19 seeds, the report naming the missing one."""
    for model, epochs in (("lenet", 21), ("fashion_cnn", 40)):
        n = len(SECOND.seeds(model))
        losses = {f: np.exp(0.05 * deviations(n))[:, None] * np.linspace(2, 0.5, epochs) for f in FRAMEWORKS}
        write_model(tmp_path, model, SECOND.seeds(model), losses, {f: 0.9 + 0.001 * deviations(n) for f in FRAMEWORKS})
    seeds = SECOND.follow_up.seeds[:-1]
    losses = {f: np.exp(0.05 * deviations(len(seeds)))[:, None] * np.linspace(2, 0.5, 21) for f in FRAMEWORKS}
    write_model(tmp_path, "lenet", seeds, losses, {f: 0.9 + 0.001 * deviations(len(seeds)) for f in FRAMEWORKS},
                design="paired")
    assert equivalence.main(["--protocol", "second", "--report-only", "--out", str(tmp_path)]) == 0
    assert "lenet follow-up (paired): 19 of 20 seeds recorded" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "confirmatory" and report["follow_up"] == {}
    assert equivalence.main(["--protocol", "second", "--report-only", "--final", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "final, with missing runs"
    assert report["status_reason"] == f"seeds not recorded in both frameworks: lenet follow-up (paired) [{SECOND.follow_up.seeds[-1]}]"
    assert report["follow_up"]["lenet"]["seeds"] == list(seeds)


def test_conduct_names_a_follow_up_run_made_before_the_studys_report_was_committed(tmp_path, monkeypatch):
    n = 3
    losses = {f: np.exp(0.05 * deviations(n))[:, None] * np.ones((n, 21)) for f in FRAMEWORKS}
    accuracies = {f: 0.9 + 0.001 * deviations(n) for f in FRAMEWORKS}
    independent = write_model(tmp_path, "lenet", range(n), losses, accuracies)
    paired = write_model(tmp_path, "lenet", range(100, 100 + n), losses, accuracies, design="paired")
    real_added = protocol_report.added
    monkeypatch.setattr(protocol_report, "added", lambda path: {"commit": "c" * 40, "time": "2031-01-01T00:00:00+00:00"}
                        if Path(path).name == "report.json" else real_added(path))
    found = protocol_report.conduct([("lenet", "independent", independent), ("lenet", "paired", paired)], SECOND,
                                    tmp_path / "report.json")
    if protocol_report._git("rev-parse", "HEAD") is None:
        pytest.skip("no git here: the check is not made")
    assert ("a follow-up run started (2030-01-01T00:00:00+00:00) before the study's report was committed "
            "(2031-01-01T00:00:00+00:00)") in found["deviations"]


@pytest.mark.filterwarnings("ignore")  # bootstrap resamples of 3 runs are often degenerate
def test_every_design_a_study_analysed_is_in_its_report(tmp_path):
    """A study planned on the command line with both designs reports each design's endpoints."""
    seeds = [10, 11, 12]
    losses = {f: np.exp(0.05 * deviations(3))[:, None] * np.linspace(2, 0.5, 21) for f in FRAMEWORKS}
    for design in ("independent", "paired"):
        write_model(tmp_path, "lenet", seeds, losses, {f: 0.9 + 0.001 * deviations(3) for f in FRAMEWORKS}, design=design)
    assert equivalence.main(["--config", str(REPO / "configs" / "lenet.toml"), "--seeds", *map(str, seeds), "--margin",
                             "1.2", "--designs", "independent", "paired", "--report-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert text.index("### independent runs") < text.index("### paired runs")
    assert text.count("- **test error**") == 2


def test_readme_second_study_table_is_what_the_committed_report_renders():
    """The README's figures of the second study are generated: its block is summary_table of the study's
    committed report.json (python -m parity_studies.equivalence --protocol second --report-only
    --out reports/equivalence/second --update-readme README.md)."""
    report = json.loads((REPO / "reports" / "equivalence" / "second" / "report.json").read_text())
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- equivalence-report-second:begin -->\n")[1].split("<!-- equivalence-report-second:end -->")[0]
    assert block == "\n".join(protocol_report.summary_table(report)) + "\n"
    assert report["status"] == "confirmatory" and report["conduct"]["deviations"] == []
