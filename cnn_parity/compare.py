"""`python -m cnn_parity.compare RUN_A RUN_B [--json]`: two runs of one recipe side by side (typically
the same command in Flax and in PyTorch): what they share (initial weights, batch order), every epoch
metric of both and their difference, and the largest |difference| of their final weights, per tensor."""

from __future__ import annotations

import sys
from pathlib import Path


from cnn_parity import checkpoints
from cnn_parity.commands import OneLineParser, report_errors
from cnn_parity.differences import max_abs_diff
from cnn_parity.errors import UsageError
from cnn_parity.files import strict_json
from cnn_parity.plot import pairing
from cnn_parity.workdir import Workdir, read_metrics

METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def compare(run_a: Path, run_b: Path) -> dict:
    configs = []
    for run in (run_a, run_b):
        config = Workdir(run).read_config()
        if config is None:
            raise UsageError(f"{run} holds no run (no config.json)")
        configs.append(config)
    (model_a, weights_a, _), (model_b, weights_b, _) = (checkpoints.load_weights(run) for run in (run_a, run_b))
    if model_a != model_b:
        raise UsageError(f"{run_a} holds a {model_a} run and {run_b} a {model_b} one: nothing to compare")
    records = [{r["epoch"]: r for r in read_metrics(run)} for run in (run_a, run_b)]
    epochs = sorted(set(records[0]) & set(records[1]))
    return {
        "runs": [{"path": str(run), "framework": config["framework"], "seed": config["recipe"]["seed"],
                  "shares": pairing(config["recipe"])} for run, config in zip((run_a, run_b), configs)],
        "model": model_a,
        "epochs": [{"epoch": e, **{m: [records[0][e][m], records[1][e][m], records[0][e][m] - records[1][e][m]]
                                   for m in METRICS}} for e in epochs],
        "weights_max_abs_diff": {name: max_abs_diff(weights_a[name], weights_b[name]) for name in weights_a},
    }


def _print(result: dict) -> None:
    for label, run in zip("AB", result["runs"]):
        print(f"{label}: {run['path']} ({run['framework']}, seed {run['seed']}; {run['shares']})")
    if result["runs"][0]["shares"] != "shared init + order" or result["runs"][1]["shares"] != "shared init + order":
        print("note: only runs that share their initial weights and batch order (--paired in both) compare step by "
              "step; others differ by their random draws as much as by their framework")
    print(f"{'epoch':>5}  " + "  ".join(f"{m + ' A':>16} {m + ' B':>16} {'A - B':>10}" for m in METRICS))
    for row in result["epochs"]:
        print(f"{row['epoch']:>5}  " + "  ".join(f"{row[m][0]:>16.6f} {row[m][1]:>16.6f} {row[m][2]:>10.2e}"
                                                for m in METRICS))
    worst = max(result["weights_max_abs_diff"].items(), key=lambda item: item[1])
    print(f"final weights: max |A - B| {worst[1]:.3e} ({worst[0]}); per tensor with --json")


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m cnn_parity.compare", description=__doc__)
    parser.add_argument("runs", nargs=2, type=Path, metavar="RUN", help="two workdirs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    def body() -> int:
        result = compare(*args.runs)
        if args.json:
            print(strict_json(result))
        else:
            _print(result)
        return 0

    return report_errors(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
