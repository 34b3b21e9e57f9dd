"""The training command line both frameworks share (`python -m flax_impl.train`, `python -m torch_ref.train`).

Same flags, same validation, same messages: bad input exits 2, a run that fails exits 1, both with
one line on stderr; a stop signal exits 128 + its number after saying what was kept.

The parser leaves out every flag not given (`argparse.SUPPRESS`), so a flag's value is the first of:
the command line, the run's config.json (when resuming: `--resume --workdir W` alone continues the run
as it was started), the default (`DEFAULTS`, and a framework's own).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from collections import ChainMap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cnn_parity import checkpoints, pairs
from cnn_parity.commands import OneLineParser, non_negative_int, number, positive_int, report_errors
from cnn_parity.data import DATASETS, IDX_DATASETS
from cnn_parity.errors import UsageError
from cnn_parity.frameworks import PACKAGES
from cnn_parity.provenance import command_line
from cnn_parity.recipes import MODELS, OPTIMIZERS, Recipe, load_recipe, parse_assignment, recipe_from_dict, settable_keys
from cnn_parity.stop_signals import Interrupted, StopNow, StopRequest
from cnn_parity.trainer import Trainer
from cnn_parity.training import RunOptions, fit
from cnn_parity.workdir import Workdir

DEFAULT_LOG_EVERY = 50  # steps between step records: a few hundred points per run, as other trainers log
DEFAULTS = {"model": None, "config": None, "dataset": None, "epochs": None, "batch_size": None, "lr": None,
            "seed": None, "max_steps": None, "threads": None, "data_dir": None, "workdir": None, "checkpoint_every": None,
            "resume": False, "init_weights": None, "log_every": DEFAULT_LOG_EVERY, "tensorboard": True,
            "paired": False, "set": []}
# The flags that change what a run writes, recorded in config.json and taken from it by a resume.
RUN_FLAGS = ("pipeline", "max_steps", "checkpoint_every", "log_every", "tensorboard")


def build_parser(framework: str, pipelines: Sequence[str]) -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"python -m {PACKAGES[framework]}.train", argument_default=argparse.SUPPRESS,
                      description=f"Train one of the five recipes with {framework}; the recipe comes from "
                                  "configs/<model>.toml.")
    p.add_argument("--model", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--config", help="a recipe file to use instead of configs/<model>.toml, or a run's config.json "
                                    "(its recipe: the same run again, in either framework)")
    p.add_argument("--dataset", choices=DATASETS, help="override the recipe's data set")
    # Numeric flags are checked by the recipe's validation, so --lr -1 and --set optimizer.lr=-1 agree.
    p.add_argument("--epochs", type=int, metavar="N", help="train N epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=int, metavar="N", help="training batch size (default: the recipe's)")
    p.add_argument("--lr", type=number, metavar="LR", help="learning rate, optimizer.lr (default: the recipe's)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed of the initial weights, shuffling and dropout, 0 .. 2**32 - 1 (default: the recipe's)")
    p.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N training steps (smoke runs)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads the framework computes with (torch's intra-op threads, XLA:CPU's; default: one "
                        "per core); recorded, with the machine's load, beside the run's speed")
    p.add_argument("--pipeline", choices=pipelines, help=f"input pipeline (default {pipelines[0]})")
    p.add_argument("--data-dir", help="folder holding <dataset>/ with the IDX files (see docs/data.md)")
    p.add_argument("--workdir", help=f"output folder (default runs/{framework}-<model>-<time>)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="checkpoint every N steps and at each epoch end, into WORKDIR/checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its newest complete checkpoint, with the options it was "
                        "started with (flags given here override them)")
    p.add_argument("--init-weights", metavar="PATH",
                   help="start from these weights: a .safetensors export, a checkpoint or a workdir (either framework)")
    p.add_argument("--log-every", type=non_negative_int, metavar="N",
                   help=f"log every N-th step's training loss and the learning rate to WORKDIR/steps.jsonl and "
                        f"TensorBoard (default {DEFAULT_LOG_EVERY}; 0: epoch records only)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="write no TensorBoard event files into the workdir (written by default)")
    p.add_argument("--paired", action="store_true",
                   help="a paired run: the initial weights and each epoch's batch order from one neutral generator, "
                        "as the same command in the other framework draws them (--set init_rng=shared --set "
                        "shuffle_rng=shared); compare the two with python -m cnn_parity.compare")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=f"override a recipe key (repeatable): {', '.join(settable_keys())}; optimizer.name is one "
                        f"of {', '.join(OPTIMIZERS)} (--set optimizer=adam for short); e.g. --set optimizer.momentum=0.5")
    return p


def recipe_from_args(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> Recipe:
    """The recipe the flags ask for; with `recorded` (the config.json of a run being resumed) that run's
    recipe, changed only where the flags say so (and refused later if that changes the run)."""
    overrides = dict(parse_assignment(text) for text in args.set)
    flags = {"dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch_size,
             "optimizer.lr": args.lr, "seed": args.seed}
    overrides.update({key: value for key, value in flags.items() if value is not None})
    if args.paired:
        overrides.update({"init_rng": "shared", "shuffle_rng": "shared"})
    if recorded is not None and args.config is None:
        model = recorded["recipe"].get("model")
        if args.model is not None and args.model != model:
            raise UsageError(f"--workdir {args.workdir} holds a {model} run, not a {args.model} one: resume it "
                             f"without --model, or pass another --workdir")
        return recipe_from_dict(recorded["recipe"], f"{args.workdir}/config.json", overrides)
    if args.model is None and args.config is None:
        raise UsageError(f"--model is required (one of: {', '.join(MODELS)}), or --config PATH")
    return load_recipe(args.model, args.config, overrides)


def resolve_flags(framework: str, given: dict[str, Any], defaults: Mapping[str, Any],
                  recorded: dict[str, Any] | None) -> argparse.Namespace:
    """Every flag's value: given, else (resuming) the run's recorded one, else the default. A new
    target in epochs replaces a recorded step limit; a changed target is said."""
    if recorded is None:
        return argparse.Namespace(**ChainMap(given, defaults))
    if recorded.get("framework") != framework:
        raise UsageError(f"--workdir {given['workdir']} holds a {recorded['framework']} run: resume it with "
                         f"python -m {PACKAGES[recorded['framework']]}.train")
    kept = {name: recorded[name] for name in RUN_FLAGS if name in recorded} | (recorded.get("options") or {})
    if "epochs" in given and "max_steps" not in given:
        kept["max_steps"] = None
    args = argparse.Namespace(**ChainMap(given, kept, defaults))
    old_epochs = recorded["recipe"].get("epochs")
    if args.epochs is not None and args.epochs != old_epochs:
        print(f"resume: the run's target changes from {old_epochs} to {args.epochs} epochs", file=sys.stderr)
    if args.max_steps != recorded.get("max_steps"):
        print(f"resume: the run's step limit changes from {recorded.get('max_steps') or 'none'} to "
              f"{args.max_steps or 'none'}", file=sys.stderr)
    return args


def default_workdir(framework: str, model: str) -> Path:
    base = Path("runs") / f"{framework}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def _initial_weights(path: str, recipe: Recipe):
    model, arrays, _ = checkpoints.load_weights(path)
    if model != recipe.model:
        raise UsageError(f"--init-weights {path} holds a {model}, not a {recipe.model}")
    return arrays


def _check_flags(args: argparse.Namespace) -> None:
    if args.workdir is not None and not str(args.workdir).strip():
        raise UsageError("--workdir is empty: name a folder")
    if args.resume and not args.workdir:
        raise UsageError("--resume needs the --workdir of the run to continue")
    if args.init_weights and args.resume:
        raise UsageError("--init-weights starts a run; --resume continues one: pass only one")


def _open_workdir(framework: str, args: argparse.Namespace, recipe: Recipe, trainer: Trainer) -> Workdir:
    if args.workdir is None and not trainer.is_single_process:
        raise UsageError("a multi-process run needs --workdir (a folder every process can read)")
    workdir = Workdir(args.workdir or default_workdir(framework, recipe.model), writer=trainer.is_primary)
    workdir.open_for_resume() if args.resume else workdir.create()
    return workdir


def _config(framework: str, args: argparse.Namespace, recipe: Recipe, options: dict[str, Any]) -> dict[str, Any]:
    """config.json: what the run is (framework, recipe) and every option that changes what it writes."""
    return {"framework": framework, **{name: getattr(args, name) for name in RUN_FLAGS}, "options": options,
            "command": command_line(), "recipe": recipe.to_dict()}


def run(framework: str, pipelines: Sequence[str], make_trainer: Callable[[Recipe, argparse.Namespace], Trainer],
        argv: Sequence[str] | None = None,
        add_flags: Callable[[argparse.ArgumentParser], dict[str, Any]] | None = None,
        recorded_flags: Sequence[str] = ()) -> int:
    """Parse `argv`, train, and return the exit code. `add_flags` adds a framework's own flags and
    returns their defaults; those named in `recorded_flags` (argparse dests) change what is trained and
    are recorded as the run's `options` in config.json and summary.json; in a multi-process run only
    the trainer whose `is_primary` is true writes the workdir and prints."""
    parser = build_parser(framework, pipelines)
    defaults = {**DEFAULTS, "pipeline": pipelines[0], **(add_flags(parser) if add_flags is not None else {})}
    given = vars(parser.parse_args(argv))
    opened: list[Workdir] = []
    with StopRequest() as stop:  # a stop signal from here on leaves a checkpoint, once training runs
        try:
            return report_errors(
                parser.prog, lambda: _run_training(framework, given, defaults, make_trainer, recorded_flags, stop, opened),
                stopped=lambda e: _stopped(parser.prog, e, opened[0] if opened else None))
        finally:
            for workdir in opened:
                workdir.close()


def _run_training(framework: str, given: dict[str, Any], defaults: Mapping[str, Any], make_trainer,
                  recorded_flags: Sequence[str], stop: StopRequest, opened: list[Workdir]) -> int:
    """Train as the flags ask (`opened` receives the workdir once it is open); the exit code."""
    _check_flags(argparse.Namespace(**ChainMap(given, defaults)))
    recorded = Workdir(given["workdir"]).read_config() if given.get("resume") else None
    args = resolve_flags(framework, given, defaults, recorded)
    recipe = recipe_from_args(args, recorded)
    if args.pipeline != defaults["pipeline"] and recipe.dataset not in IDX_DATASETS:
        raise UsageError(f"--pipeline {args.pipeline} reads {' and '.join(IDX_DATASETS)} only; {recipe.data_name} "
                         f"is read by the default pipeline, {defaults['pipeline']}")
    initial = _initial_weights(args.init_weights, recipe) if args.init_weights else None
    args.checked_pair = pairs.check_recipe(recipe, args.data_dir) if recipe.pair is not None else None
    trainer = make_trainer(recipe, args)
    stop.reclaim()
    if initial is not None:
        trainer.load_canonical(initial)
    workdir = _open_workdir(framework, args, recipe, trainer)
    opened.append(workdir)
    options = {**{name: getattr(args, name) for name in recorded_flags}, "devices": trainer.num_devices}
    if trainer.is_primary:
        shown = "".join(f" ({name} {value})" for name, value in options.items()
                        if name in recorded_flags and value is not None)
        print(f"{framework}{shown} {recipe.model}: {trainer.num_params:,} parameters, {recipe.dataset}, "
              f"{trainer.pipeline} pipeline, on {trainer.device}; writing {workdir.path}", flush=True)
    run_options = RunOptions(args.max_steps, args.checkpoint_every, args.log_every, args.tensorboard)
    summary = fit(recipe, trainer, workdir, run_options, stop, args.resume, _config(framework, args, recipe, options))
    if trainer.is_primary:
        print(f"test accuracy {100 * summary['test_accuracy']:.2f}%  test loss {summary['test_loss']:.4f}  "
              f"({summary['steps']} steps, {summary['train_samples_per_s'] or 0:,.0f} train samples/s); "
              f"summary in {workdir.summary_path}")
    return 0


def _stopped(prog: str, e: KeyboardInterrupt, workdir: Workdir | None) -> str:
    """What a stop signal left, and how to go on: only what exists is named."""
    signum = getattr(e, "signum", signal.SIGINT)  # a plain Ctrl-C: one before the stop handler was in place
    how = f"{'stopped at once by a second' if isinstance(e, StopNow) else 'stopped by'} {signal.Signals(signum).name}"
    if isinstance(e, Interrupted) and e.checkpoint is not None:
        kept = f"checkpoint {e.checkpoint}, weights in {workdir.model_path}"
    elif workdir is not None and (newest := checkpoints.latest(workdir.path)) is not None:
        kept = f"its newest checkpoint is {newest}"
    else:
        return f"{how}; no checkpoint was written"
    return f"{how}; {kept}; continue with: {prog} --resume --workdir {shlex.quote(str(workdir.given))}"
