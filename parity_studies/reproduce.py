"""`python -m parity_studies.reproduce [--models ...] [--seeds 0 1 2] [--quick] --out DIR`

Runs each model's full source recipe in both frameworks for each seed, through the training CLIs
themselves (`python -m flax_impl.train`, `python -m torch_ref.train`, as subprocesses: the same code a
user runs), then writes `DIR/report.json`, `DIR/report.md` and one learning-curve PNG per model.
Runs already complete in DIR are skipped and interrupted ones resume from their checkpoints, so the
command can be rerun after any interruption. `--quick` is a smoke run (a few steps per run).
`--from-json DIR/report.json --out DIR` trains nothing and reads no runs: it compares the frameworks and
renders the report again from that report's per-seed summaries, with this version's statistics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from cnn_parity.commands import OneLineParser, positive_int, report_errors, require_extra
from cnn_parity.errors import RunError, UsageError
from cnn_parity.files import write_json_atomic
from cnn_parity.frameworks import FRAMEWORKS
from cnn_parity.recipes import MODELS
from parity_studies import runs
from cnn_parity.markdown import replace_marked_block
from parity_studies.reproduction_report import README_MARKER, build_report, load_report, readme_table, run_dir, write_report

DEFAULT_SEEDS = [0, 1, 2]


def run_complete(out: Path, model: str, framework: str, seed: int, quick: bool) -> bool:
    """Whether the run finished: all the recipe's epochs (or runs.QUICK_STEPS in --quick)."""
    return runs.finished(run_dir(out, model, framework, seed), runs.recipe(model).epochs, quick)


def complete_seeds(out: Path, model: str, seeds: list[int], quick: bool) -> list[int]:
    return [seed for seed in seeds if all(run_complete(out, model, framework, seed, quick) for framework in FRAMEWORKS)]


def train(out: Path, model: str, framework: str, seed: int, quick: bool, data_dir: str | None) -> None:
    if not run_complete(out, model, framework, seed, quick):
        runs.train(run_dir(out, model, framework, seed), framework, model, seed,
                   ["--max-steps", str(runs.QUICK_STEPS)] if quick else [], data_dir)


def reproduce(args) -> dict:
    """Train every run of args.models x args.seeds not yet complete in args.out (none with --report-only),
    then report over the seeds complete in both frameworks."""
    runs.check_models_and_seeds(args.models, args.seeds)
    mode_file = args.out / "mode.json"
    mode = {"quick": args.quick}
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        if mode_file.is_file() and json.loads(mode_file.read_text()) != mode:
            raise UsageError(f"{args.out} holds a {'full' if args.quick else 'quick'} reproduction; use another --out")
        write_json_atomic(mode_file, mode)
    except OSError as e:
        raise UsageError(f"cannot write to {args.out}: {e.strerror or e}") from None
    seeds_by_model = {model: args.seeds for model in args.models}
    if args.report_only:
        seeds_by_model = {model: seeds for model in args.models
                          if (seeds := complete_seeds(args.out, model, args.seeds, args.quick))}
        if not seeds_by_model:
            raise RunError(f"no seed of {', '.join(args.models)} is complete in both frameworks in {args.out}")
        for model in args.models:
            print(f"{model}: seeds {seeds_by_model.get(model, 'none')} complete in both frameworks")
    else:
        jobs = [(m, f, s) for m in args.models for s in args.seeds for f in FRAMEWORKS]
        with runs.supervised_children():
            for model, framework, seed in tqdm(jobs, desc="reproduce", unit="run", file=sys.stderr):
                tqdm.write(f"{model} {framework} seed {seed}", file=sys.stderr)
                train(args.out, model, framework, seed, args.quick, args.data_dir)
    return build_report(args.out, seeds_by_model, args.quick)


def render_again(report_json: Path, out: Path) -> dict:
    """The report in `report_json` rendered again into `out`: the report's own folder, or one that holds
    no report (never overwrite another)."""
    report = load_report(report_json)
    try:
        own_folder = out.resolve() == report_json.resolve().parent
        if not own_folder and any((out / name).exists() for name in ("report.json", "report.md")):
            raise UsageError(f"{out} holds another report: render into {report_json.parent} or a folder without one")
        out.mkdir(parents=True, exist_ok=True)
        report["rendered_by"] = " ".join(["python -m parity_studies.reproduce", *sys.argv[1:]])
        return write_report(out, report)
    except OSError as e:
        raise UsageError(f"cannot write to {out}: {e.strerror or e}") from None


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m parity_studies.reproduce", description=__doc__.split("\n\n")[1])
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="default: all")
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="a recipe file of your own (a pair of your own, or a built-in model's recipe changed): "
                             "reproduce it instead of --models")
    parser.add_argument("--epochs", type=positive_int, metavar="N", help="shorten every run to N epochs (said in the report)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="N", help=f"default: {' '.join(map(str, DEFAULT_SEEDS))}")
    runs.add_quick_flag(parser)
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report each model over those of --seeds complete in both frameworks")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--update-readme", metavar="PATH",
                        help=f"replace the '{README_MARKER}' block of this Markdown file with the results table")
    parser.add_argument("--from-json", metavar="REPORT_JSON", type=Path,
                        help="train nothing, read no runs: render the report again from this report.json "
                             "into --out (its own folder, or one without a report)")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        given = [flag for flag, value in (("--models", args.models), ("--seeds", args.seeds),
                                          ("--quick", args.quick), ("--report-only", args.report_only),
                                          ("--data-dir", args.data_dir is not None)) if value]
        if given:
            parser.error(f"--from-json renders a report written earlier and trains nothing: leave out {', '.join(given)}")
    if args.config is not None and args.models:
        parser.error("--config names the model itself: leave out --models")
    args.seeds = args.seeds or DEFAULT_SEEDS

    def body() -> int:
        require_extra("scipy", "studies")
        args.models = runs.use_recipe(args.config, args.epochs, args.models or list(MODELS))
        report = render_again(args.from_json, args.out) if args.from_json is not None else reproduce(args)
        if args.update_readme:
            replace_marked_block(args.update_readme, README_MARKER, readme_table(report))
        print(f"wrote {args.out / 'report.md'}, {args.out / 'report.json'} and {len(report['models'])} PNGs")
        return 0

    return report_errors(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
