"""The training command line both frameworks share (`python -m flax_impl.train`, `python -m torch_ref.train`).

Same flags, same validation, same messages: bad input exits 2, a run that fails exits 1, both with
one line on stderr; Ctrl-C exits 130 after saying what was kept.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from cnn_parity import checkpoints
from cnn_parity.commands import OneLineParser, internal_error, non_negative_int, number, positive_int
from cnn_parity.data import DATASETS
from cnn_parity.errors import CnnParityError, UsageError
from cnn_parity.frameworks import PACKAGES
from cnn_parity.recipes import MODELS, OPTIMIZERS, Recipe, load_recipe, parse_assignment, recipe_from_dict, settable_keys
from cnn_parity.stop_signals import Interrupted, StopRequest
from cnn_parity.trainer import Trainer
from cnn_parity.training import fit
from cnn_parity.provenance import command_line
from cnn_parity.workdir import Workdir


DEFAULT_LOG_EVERY = 50  # steps between step records: a few hundred points per run, as other trainers log


def build_parser(framework: str, pipelines: Sequence[str]) -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"python -m {PACKAGES[framework]}.train",
                description=f"Train one of the five recipes with {framework}; the recipe comes from configs/<model>.toml.")
    p.add_argument("--model", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--config", help="a recipe file to use instead of configs/<model>.toml")
    p.add_argument("--dataset", choices=DATASETS, help="override the recipe's data set")
    # Numeric flags are checked by the recipe's validation, so --lr -1 and --set optimizer.lr=-1 agree.
    p.add_argument("--epochs", type=int, metavar="N", help="train N epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=int, metavar="N", help="training batch size (default: the recipe's)")
    p.add_argument("--lr", type=number, metavar="LR", help="learning rate, optimizer.lr (default: the recipe's)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed of the initial weights, shuffling and dropout, 0 .. 2**32 - 1 (default: the recipe's)")
    p.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N training steps (smoke runs)")
    p.add_argument("--pipeline", choices=pipelines, default=pipelines[0],
                   help=f"input pipeline (default {pipelines[0]})")
    p.add_argument("--data-dir", help="folder holding <dataset>/ with the IDX files (see docs/data.md)")
    p.add_argument("--workdir", help=f"output folder (default runs/{framework}-<model>-<time>)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="checkpoint every N steps and at each epoch end, into WORKDIR/checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its newest complete checkpoint")
    p.add_argument("--init-weights", metavar="PATH",
                   help="start from these weights: a .safetensors export, a checkpoint or a workdir (either framework)")
    p.add_argument("--log-every", type=non_negative_int, default=DEFAULT_LOG_EVERY, metavar="N",
                   help=f"log every N-th step's training loss and the learning rate to WORKDIR/steps.jsonl and "
                        f"TensorBoard (default {DEFAULT_LOG_EVERY}; 0: epoch records only)")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard event files into the workdir (written by default)")
    p.add_argument("--paired", action="store_true",
                   help="a paired run: the initial weights and each epoch's batch order from one neutral generator, "
                        "as the same command in the other framework draws them (--set init_rng=shared --set "
                        "shuffle_rng=shared); compare the two with python -m cnn_parity.compare")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a recipe key (repeatable): {', '.join(settable_keys())}; optimizer.name is one "
                        f"of {', '.join(OPTIMIZERS)} (--set optimizer=adam for short); e.g. --set optimizer.momentum=0.5")
    return p


class _Unset:
    """The value of a flag the command line did not give (so a resumed run can take its recorded one)."""

    def __repr__(self):
        return "unset"


UNSET = _Unset()


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, set[str]]:
    """`parser`'s arguments with their defaults filled in, and the names (dests) of those `argv` gave."""
    # argparse sets a default only where the namespace has no value yet: pre-filled, the rest stay UNSET.
    # (Repeatable flags, such as --set, start from their default list.)
    args = parser.parse_args(argv, argparse.Namespace(**{
        a.dest: list(a.default or []) if isinstance(a, argparse._AppendAction) else UNSET
        for a in parser._actions if a.dest != argparse.SUPPRESS}))
    given = {name for name, value in vars(args).items() if value is not UNSET}
    for name in set(vars(args)) - given:
        setattr(args, name, parser.get_default(name))
    return args, given


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
    try:
        return load_recipe(args.model, args.config, overrides)
    except UnicodeDecodeError:
        raise UsageError(f"config {args.config} is not UTF-8 text (a TOML recipe file)") from None


def _continue_recorded(framework: str, args: argparse.Namespace, given: set[str], recorded: dict[str, Any],
                       names: Sequence[str]) -> None:
    """Flags a resume does not give take the values the run recorded (`--resume --workdir W` alone
    continues the run as it was started); a changed target is said."""
    if recorded.get("framework") != framework:
        raise UsageError(f"--workdir {args.workdir} holds a {recorded.get('framework')} run: resume it with "
                         f"python -m {PACKAGES.get(recorded.get('framework'), '?')}.train")
    options = {**recorded, **(recorded.get("options") or {})}
    if "epochs" in given and "max_steps" not in given:  # a new target in epochs replaces a step limit
        options["max_steps"] = None
    for name in names:
        if name not in given and name in options:
            setattr(args, name, options[name])
    old_epochs = recorded["recipe"].get("epochs")
    if "epochs" in given and args.epochs != old_epochs:
        print(f"resume: the run's target changes from {old_epochs} to {args.epochs} epochs", file=sys.stderr)
    if args.max_steps != recorded.get("max_steps"):
        print(f"resume: the run's step limit changes from {recorded.get('max_steps') or 'none'} to "
              f"{args.max_steps or 'none'}", file=sys.stderr)


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


def run(framework: str, pipelines: Sequence[str], make_trainer: Callable[[Recipe, argparse.Namespace], Trainer],
        argv: Sequence[str] | None = None,
        add_flags: Callable[[argparse.ArgumentParser], None] | None = None,
        recorded_flags: Sequence[str] = ()) -> int:
    """Parse `argv`, train, and return the exit code. `add_flags` adds a framework's own flags, of
    which those named in `recorded_flags` (argparse dests) change what is trained and are recorded
    as the run's `options` in config.json and summary.json; in a multi-process run only the trainer
    whose `is_primary` is true writes the workdir and prints."""
    parser = build_parser(framework, pipelines)
    if add_flags is not None:
        add_flags(parser)
    args, given = parse_flags(parser, argv)
    workdir = None
    with StopRequest() as stop:  # a stop signal from here on leaves a checkpoint, once training runs
        try:
            if args.workdir is not None and not args.workdir.strip():
                raise UsageError("--workdir is empty: name a folder")
            if args.resume and not args.workdir:
                raise UsageError("--resume needs the --workdir of the run to continue")
            if args.init_weights and args.resume:
                raise UsageError("--init-weights starts a run; --resume continues one: pass only one")
            recorded = Workdir(args.workdir).read_config() if args.resume else None
            if recorded is not None:
                _continue_recorded(framework, args, given, recorded,
                                   ("pipeline", "max_steps", "log_every", "devices", *recorded_flags))
            recipe = recipe_from_args(args, recorded)
            initial = _initial_weights(args.init_weights, recipe) if args.init_weights else None
            trainer = make_trainer(recipe, args)
            stop.reclaim()
            if initial is not None:
                trainer.load_canonical(initial)
            if args.workdir is None and not trainer.is_single_process:
                raise UsageError("a multi-process run needs --workdir (a folder every process can read)")
            workdir = Workdir(args.workdir or default_workdir(framework, recipe.model), writer=trainer.is_primary)
            if args.resume:
                workdir.open_for_resume()
            else:
                workdir.create()
            options = {name: getattr(args, name) for name in recorded_flags}
            if trainer.is_primary:
                shown = "".join(f" ({name} {value})" for name, value in options.items())
                print(f"{framework}{shown} {recipe.model}: {trainer.num_params:,} parameters, {recipe.dataset}, "
                      f"{trainer.pipeline} pipeline, on {trainer.device}; writing {workdir.path}", flush=True)
            config = {"framework": framework, "pipeline": args.pipeline, "max_steps": args.max_steps,
                      "log_every": args.log_every, "options": {**options, "devices": trainer.num_devices},
                      "command": command_line(), "recipe": recipe.to_dict()}
            summary = fit(recipe, trainer, workdir, args.max_steps, args.checkpoint_every, args.resume, config,
                          tensorboard=not args.no_tensorboard, stop=stop, log_every=args.log_every)
        except CnnParityError as e:
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
            return e.exit_code
        except Interrupted as e:
            print(f"{parser.prog}: stopped by {signal.Signals(e.signum).name}; checkpoint {e.checkpoint}, weights in "
                  f"{workdir.model_path}; continue with: {parser.prog} --resume --workdir {shlex.quote(str(workdir.path))}",
                  file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:
            kept = f"; completed epochs are in {workdir.metrics_path}" if workdir else ""
            print(f"{parser.prog}: interrupted{kept}", file=sys.stderr)
            return 130
        except Exception as e:  # a bug, not bad input: still one line, the traceback on request
            return internal_error(parser.prog, e)
    if not trainer.is_primary:
        return 0
    print(f"test accuracy {100 * summary['test_accuracy']:.2f}%  test loss {summary['test_loss']:.4f}  "
          f"({summary['steps']} steps, {summary['train_samples_per_s']:,.0f} train samples/s); "
          f"summary in {workdir.summary_path}")
    return 0
