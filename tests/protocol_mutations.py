"""Mutation check of the equivalence protocols' tests: each mutant changes one registered number or
one analysis rule of parity_studies (a margin, a seed range, a tested epoch, an endpoint's scale, a
verdict rule, the direction test, the follow-up, the conduct check), and the protocols' tests must fail
on every one. Not part of the test run (each mutant reruns the tests: about 30 s each):

    python -m tests.protocol_mutations [--only NAME ...]

It mutates a copy of the checkout's tracked files in a temporary folder, never the checkout, and
exits 1 if any mutant survives."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
PROTOCOLS, EQUIVALENCE = "parity_studies/protocols.py", "parity_studies/equivalence.py"
REPORT, SECOND = "parity_studies/protocol_report.py", "reports/equivalence/second/PROTOCOL.md"
TESTS = ("tests/test_protocols.py", "tests/test_equivalence.py", "tests/test_protocol_report.py",
         "tests/test_statistics.py", "tests/test_planning.py")

# (name, file, text, its replacement): the text occurs exactly once in the file.
MUTANTS = [
    ("first: SD margin 2 -> 1.5 (models other than lenet)", PROTOCOLS,
     "plan = ModelPlan(seeds, test_error_margin=1.2, train_loss_margin=1.2, sd_ratio_margin=2.0)",
     "plan = ModelPlan(seeds, test_error_margin=1.2, train_loss_margin=1.2, sd_ratio_margin=1.5)"),
    ("first: SD margin 2 -> 1.5 (lenet)", PROTOCOLS,
     "lenet = ModelPlan(seeds, test_error_margin=1.2, train_loss_margin=1.2, sd_ratio_margin=2.0,",
     "lenet = ModelPlan(seeds, test_error_margin=1.2, train_loss_margin=1.2, sd_ratio_margin=1.5,"),
    ("first: error margin 1.2 -> 1.25", PROTOCOLS,
     "plan = ModelPlan(seeds, test_error_margin=1.2,",
     "plan = ModelPlan(seeds, test_error_margin=1.25,"),
    ("first: error margin 1.2 -> 1.15 (lenet)", PROTOCOLS,
     "lenet = ModelPlan(seeds, test_error_margin=1.2,",
     "lenet = ModelPlan(seeds, test_error_margin=1.15,"),
    ("first: train-loss margin 1.2 -> 1.25", PROTOCOLS,
     "plan = ModelPlan(seeds, test_error_margin=1.2, train_loss_margin=1.2,",
     "plan = ModelPlan(seeds, test_error_margin=1.2, train_loss_margin=1.25,"),
    ("first: lenet's curve from epoch 6", PROTOCOLS,
     "train_loss_epochs=(5, None)",
     "train_loss_epochs=(6, None)"),
    ("first: other seeds (2000-2018)", PROTOCOLS,
     "seed_range(2000, 2019)",
     "seed_range(2000, 2018)"),
    ("first: other seeds (2001-2020)", PROTOCOLS,
     "seed_range(2000, 2019)",
     "seed_range(2001, 2020)"),
    ("spread endpoint on the log-error scale", EQUIVALENCE,
     'statistics.spread_test(accuracy["flax"], accuracy["torch"], plan.sd_ratio_margin)',
     'statistics.spread_test(np.log(100 - accuracy["flax"]), np.log(100 - accuracy["torch"]), plan.sd_ratio_margin)'),
    ("curve rule every epoch -> any epoch", EQUIVALENCE,
     '"train_loss_equivalent_every_epoch": all(',
     '"train_loss_equivalent_every_epoch": any('),
    ("curve's tested epochs drop the last", PROTOCOLS,
     "return range(min(first, last), last + 1)",
     "return range(min(first, last), last)"),
    ("model verdict ignores the spread", EQUIVALENCE,
     'and result.get("spread_test", {"equivalent": True})["equivalent"])',
     ')'),
    ("second: SD margin 2 -> 1.5", SECOND,
     "sd_ratio_margin = 2.0",
     "sd_ratio_margin = 1.5"),
    ("second: train-loss margin 1.2 -> 1.25", SECOND,
     "train_loss_margin = 1.2",
     "train_loss_margin = 1.25"),
    ("second: lenet's endpoint epoch 5 -> 6", SECOND,
     "train_loss_epochs = [5, 5]",
     "train_loss_epochs = [6, 6]"),
    ("second: lenet seeds 3000-3058", SECOND,
     "seeds = { first = 3000, last = 3059 }",
     "seeds = { first = 3000, last = 3058 }"),
    ("second: fashion_cnn seeds 3001-3080", SECOND,
     "seeds = { first = 3000, last = 3079 }",
     "seeds = { first = 3001, last = 3080 }"),
    ("second: alpha 0.025 -> 0.05", SECOND,
     "alpha = 0.025",
     "alpha = 0.05"),
    ("second: direction epochs lenet 5-21 -> 1-21", SECOND,
     "direction_epochs = [5, 21]",
     "direction_epochs = [1, 21]"),
    ("second: direction alpha 0.05 -> 0.1", SECOND,
     "order = [\"lenet\", \"fashion_cnn\"]\nalpha = 0.05",
     "order = [\"lenet\", \"fashion_cnn\"]\nalpha = 0.1"),
    ("second: follow-up seeds 3100-3118", SECOND,
     "seeds = { first = 3100, last = 3119 }",
     "seeds = { first = 3100, last = 3118 }"),
    ("second: bootstrap seed 3000 -> 0", SECOND,
     "seed = 3000",
     "seed = 0"),
    ("direction: not a fixed sequence", REPORT,
     'open_ = open_ and test["rejects"]',
     "open_ = True"),
    ("direction: paired test for independent runs", REPORT,
     'statistics.two_sided_test(s["flax"], s["torch"], False, protocol.direction.alpha)',
     'statistics.two_sided_test(s["flax"], s["torch"], True, protocol.direction.alpha)'),
    ("direction: at the equivalence alpha", REPORT,
     'statistics.two_sided_test(s["flax"], s["torch"], False, protocol.direction.alpha)',
     'statistics.two_sided_test(s["flax"], s["torch"], False, protocol.alpha)'),
    ("direction statistic: loss, not log loss", REPORT,
     "return np.log(train_loss[:, first - 1:epochs[1]]).mean(1)",
     "return train_loss[:, first - 1:epochs[1]].mean(1)"),
    ("direction statistic: first epoch skipped", REPORT,
     "return np.log(train_loss[:, first - 1:epochs[1]]).mean(1)",
     "return np.log(train_loss[:, first:epochs[1]]).mean(1)"),
    ("direction statistic: last epoch dropped", REPORT,
     "return np.log(train_loss[:, first - 1:epochs[1]]).mean(1)",
     "return np.log(train_loss[:, first - 1:epochs[1] - 1]).mean(1)"),
    ("follow-up: designs not compared", REPORT,
     "if same_direction and p_designs >= alpha:",
     "if same_direction:"),
    ("follow-up: draws read without the designs' test", REPORT,
     'elif not test["rejects"] and p_designs < alpha:',
     'elif not test["rejects"]:'),
    ("follow-up: unpaired test", REPORT,
     'test = statistics.two_sided_test(s["flax"], s["torch"], True, alpha)',
     'test = statistics.two_sided_test(s["flax"], s["torch"], False, alpha)'),
    ("follow-up: endpoints analysed too", REPORT,
     "plan = dataclasses.replace(plan, test_error_margin=None, train_loss_margin=None, sd_ratio_margin=None)",
     "pass"),
    ("follow-up: default models, all not the rejected", EQUIVALENCE,
     'return [d["model"] for d in report.get("direction", []) if d["confirmatory"] and d["rejects"]]',
     'return [d["model"] for d in report.get("direction", [])]'),
    ("verdict: any endpoint, not every", REPORT,
     'result["all_endpoints_equivalent"] = all(e["equivalent"] for e in endpoints.values()) if endpoints else None',
     'result["all_endpoints_equivalent"] = any(e["equivalent"] for e in endpoints.values()) if endpoints else None'),
    ("train loss: at alpha 0.05, not the protocol's", REPORT,
     "**statistics.difference_test(values[\"flax\"], values[\"torch\"], margin, paired, alpha)}",
     "**statistics.difference_test(values[\"flax\"], values[\"torch\"], margin, paired)}"),
    ("spread: at alpha 0.05, not the protocol's", REPORT,
     'accuracy["flax"], accuracy["torch"], plan.sd_ratio_margin, alpha), "robustness": {',
     'accuracy["flax"], accuracy["torch"], plan.sd_ratio_margin), "robustness": {'),
    ("spread: on log error", REPORT,
     'accuracy["flax"], accuracy["torch"], plan.sd_ratio_margin, alpha), "robustness": {',
     'np.log(100 - accuracy["flax"]), np.log(100 - accuracy["torch"]), plan.sd_ratio_margin, alpha), "robustness": {'),
    ("escape level: boundary < not <=", REPORT,
     "if escape <= bound:",
     "if escape < bound:"),
    ("escape level: a run never escaped in the first level", REPORT,
     "if escape is None:\n        return names[-1]",
     "if escape is None:\n        return names[0]"),
    ("bootstrap: seed 0, not the protocol's", REPORT,
     "alpha, protocol.bootstrap_resamples, protocol.bootstrap_seed)}}",
     "alpha, protocol.bootstrap_resamples, 0)}}"),
    ("conduct: two commits allowed", REPORT,
     "if len(known) > 1:",
     "if len(known) > 2:"),
    ("conduct: dirty tree not a deviation", REPORT,
     'if s.get("dirty"):',
     "if False:"),
    ("conduct: runs before the protocol allowed", REPORT,
     '_time(min(starts, key=_time)) < _time(protocol_commit["time"])',
     '_time(min(starts, key=_time)) > _time(protocol_commit["time"])'),
    ("conduct: session times ordered as text", REPORT,
     '"first_start": min(starts, key=_time) if starts else None,',
     '"first_start": min(starts) if starts else None,'),
    ("conduct: a commit's table compared with where it was read from", REPORT,
     "return dataclasses.replace(then, document=protocol.document) == load(REPO / protocol.document)",
     "return then == load(REPO / protocol.document)"),
    ("conduct: the design's random streams not checked", REPORT,
     "if recipe.get(key) != value]",
     "if False]"),
    ("conduct: pinned flags not checked", REPORT,
     "if wrong:\n                    deviations.append",
     "if False:\n                    deviations.append"),
    ("conduct: a session without provenance keys passes", REPORT,
     "if missing:",
     "if False:"),
    ("conduct: a session without the project's version passes", REPORT,
     '_SESSION_KEYS = ("version", "commit",',
     '_SESSION_KEYS = ("commit",'),
    ("follow-up: confirmatory whatever the direction test found", REPORT,
     '"confirmatory": bool(independent[m]["confirmatory"] and independent[m]["rejects"]),',
     '"confirmatory": True,'),
    ("follow-up: a missing run is never analysed around", EQUIVALENCE,
     "if recorded == list(follow.seeds) or (args.final and len(recorded) >= 2):",
     "if recorded == list(follow.seeds):"),
    ("follow-up: a missing run not named", EQUIVALENCE,
     "elif missing or follow_missing:",
     "elif missing:"),
    ("conduct: follow-up runs before the study's report allowed", REPORT,
     'elif _time(first) < _time(report_commit["time"]):',
     'elif _time(first) > _time(report_commit["time"]):'),
    ("combined claim: any model's, not every model's", REPORT,
     '"all_equivalent": all(per_model.values())',
     '"all_equivalent": any(per_model.values())'),
]


def copy_checkout(to: Path) -> None:
    """The checkout's tracked files, as they are in its work tree."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)


def run_tests(root: Path) -> subprocess.CompletedProcess:
    """The protocols' tests in the copy, which reads the checkout's git history (the conduct check's)."""
    git_dir = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--absolute-git-dir"], capture_output=True,
                             text=True, check=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(root), "GIT_DIR": git_dir, "GIT_WORK_TREE": str(root)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *TESTS],
                          cwd=root, env=env, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.protocol_mutations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the mutants of these names")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m[0] in args.only]
    unknown = set(args.only or ()) - {m[0] for m in MUTANTS}
    if unknown:
        parser.error(f"no mutant named {sorted(unknown)[0]!r}")
    survived = []
    with tempfile.TemporaryDirectory(prefix="protocol-mutations-") as folder:
        root = Path(folder)
        copy_checkout(root)
        if run_tests(root).returncode != 0:
            print("the tests fail without a mutation: nothing to check", file=sys.stderr)
            return 1
        for name, relative, text, replacement in tqdm(chosen, desc="mutants", unit="mutant"):
            path = root / relative
            original = path.read_text()
            if original.count(text) != 1:
                print(f"{name}: its text is not once in {relative} (the code moved): update this mutant", file=sys.stderr)
                return 1
            path.write_text(original.replace(text, replacement))
            try:
                done = run_tests(root)
            finally:
                path.write_text(original)
            failed = next((line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
            tqdm.write(f"{'killed  ' if done.returncode else 'SURVIVED'}  {name}  {failed[:100]}")
            if done.returncode == 0:
                survived.append(name)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutants killed" + (f"; survived: {survived}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
