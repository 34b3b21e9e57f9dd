"""Training runs launched through the training CLIs themselves (`python -m flax_impl.train`,
`python -m torch_ref.train`, as subprocesses: the same code a user runs), for the commands that
train many runs (reproduce, equivalence). Each run writes its own workdir, and its output goes to its
own log, `<workdir>.log`; an interrupted run resumes from its checkpoints when launched again.

No child outlives its parent: within `supervised_children()` a SIGTERM or SIGINT the parent receives
is passed on to every running child and the parent waits for them before it exits, and each child
asks the kernel for a SIGTERM should its parent die without that chance (SIGKILL). The parent's main
thread never waits without a timeout (`wait_for_child`, `wait_for_future`): the kernel may hand the
signal to any thread, and Python runs the handler in the main thread only once that thread runs again."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, Sequence

from cnn_parity.errors import RunError, UsageError
from cnn_parity.files import read_json, write_bytes_atomic
from cnn_parity.frameworks import command_module
from cnn_parity.recipes import MODELS, Recipe, load_recipe
from cnn_parity.workdir import read_metrics

CHECKPOINT_EVERY = 2000
# `--quick` (reproduce, equivalence): a smoke run of this many training steps per run.
QUICK_STEPS = 20
# What a finished run's record is: everything its analysis reads, and no weights.
RECORD_FILES = ("config.json", "metrics.jsonl", "summary.json")

# Run as the child: set PR_SET_PDEATHSIG (Linux; it survives exec) so that the kernel sends the child
# SIGTERM when its parent dies, then become the training CLI. A parent that died before the prctl
# took effect is caught by the parent-pid check. (Done here and not in Popen's preexec_fn, which is
# unsafe in a process with threads: the launcher starts runs from worker threads.)
_ORPHAN_GUARD = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit(143)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


# How often a waiting main thread wakes to run a stop signal's handler that another thread received.
WAKE_EVERY_S = 0.5


def wait_for_child(child: subprocess.Popen) -> int:
    """The child's exit status, waited for in slices so that a stop signal is handled meanwhile."""
    while True:
        try:
            return child.wait(timeout=WAKE_EVERY_S)
        except subprocess.TimeoutExpired:
            continue


def wait_for_future(future: concurrent.futures.Future) -> None:
    """Until the future is done, in slices so that a stop signal is handled meanwhile."""
    while not future.done():
        concurrent.futures.wait([future], timeout=WAKE_EVERY_S)


class _Children:
    """The running training children, and whether the parent is stopping (then none is started)."""

    def __init__(self):
        self.lock = threading.RLock()  # a signal handler may run while its own thread holds it
        self.running: set[subprocess.Popen] = set()
        self.stopping = False

    def signal_all(self, signum: int) -> None:
        with self.lock:
            self.stopping = True
            for child in self.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signum)  # the child leads its own process group


_children = _Children()


class Stopped(KeyboardInterrupt):
    """The parent received SIGTERM or SIGINT; every child was told and has been waited for."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


@contextlib.contextmanager
def supervised_children() -> Iterator[None]:
    """Within: SIGTERM or SIGINT stops starting runs, passes the signal to every running child (a
    training CLI checkpoints after its current steps and stops) and raises Stopped in the
    main thread; a second signal kills the children. Use around the code that waits for the runs (its
    worker threads wait for their children), so they are reaped before the command exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handle(signum, frame):
        received.append(signum)
        _children.signal_all(signum if len(received) == 1 else signal.SIGKILL)
        if len(received) == 1:
            raise Stopped(signum)

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    _children.stopping = False
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def add_quick_flag(parser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_STEPS} steps per run")


# A study's recipes of the user's own (--config: model name → recipe file) and shortened length (--epochs):
# every run of that model gets them, and whatever reads a run's length reads them here.
_CONFIGS: dict[str, Path] = {}
_EPOCHS: dict[str, int] = {}


def use_recipe(config: Path | None, epochs: int | None, models: Sequence[str]) -> list[str]:
    """The models a study trains: `models`, or the one of the recipe file `config` (a pair of the user's
    own, or a built-in model's recipe of theirs); each shortened to `epochs` if given."""
    if config is not None:
        recipe = load_recipe(config=config)
        _CONFIGS[recipe.model] = Path(config).resolve()
        models = [recipe.model]
    for model in models:
        if epochs is not None:
            _EPOCHS[model] = epochs
    return list(models)


def recipe(model: str) -> Recipe:
    """The recipe a study trains `model` with: its --config, or the built-in one; --epochs applied."""
    overrides = {"epochs": _EPOCHS[model]} if model in _EPOCHS else None
    return load_recipe(config=_CONFIGS[model], overrides=overrides) if model in _CONFIGS else \
        load_recipe(model, overrides=overrides)


def shortened(model: str) -> bool:
    return model in _EPOCHS


def _recipe_flags(model: str) -> list[str]:
    return [*(["--config", str(_CONFIGS[model])] if model in _CONFIGS else []),
            *(["--epochs", str(_EPOCHS[model])] if model in _EPOCHS else [])]


def check_models_and_seeds(models: Sequence[str], seeds: Sequence[int]) -> None:
    """A command's --models and --seeds: known models, distinct non-negative seeds."""
    unknown = [m for m in models if m not in MODELS and m not in _CONFIGS]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r}; choose from: {', '.join(MODELS)} (or --config a recipe file)")
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError("seeds must be distinct and non-negative")


def run_complete(workdir: Path, epochs: int | None = None, steps: int | None = None) -> bool:
    """Whether the run (or run record) in `workdir` finished: its summary shows `epochs` epochs, or
    `steps` steps. A summary that is damaged (cut short by a kill, or not a summary) is named on stderr,
    once, and counts as not finished, so a study that runs resumes the run, which rewrites it."""
    summary = workdir / "summary.json"
    if not summary.exists():
        return False
    try:
        done = json.loads(summary.read_bytes())
        return done["steps"] == steps if steps is not None else done["epochs"] == epochs
    except (OSError, ValueError, KeyError, TypeError) as e:
        if summary not in _NAMED_DAMAGED:
            _NAMED_DAMAGED.add(summary)
            print(f"{summary} is damaged ({type(e).__name__}: {e}): its run counts as not finished, and a study "
                  "that runs it runs it again", file=sys.stderr)
        return False


_NAMED_DAMAGED: set[Path] = set()  # the damaged summaries named so far (a study asks more than once)


def epoch_records(workdir: Path) -> list[dict]:
    """The epoch records a study analyses: the run's complete epochs, and for a run that --max-steps
    ended inside an epoch (a --quick smoke run) that epoch's figures from its summary."""
    records = read_metrics(workdir)
    partial = read_json(workdir / "summary.json").get("partial_epoch")
    return records + [partial] if partial else records


def finished(workdir: Path, epochs: int, quick: bool) -> bool:
    """Whether the run in `workdir` finished its `epochs` epochs, or in --quick its QUICK_STEPS steps."""
    return run_complete(workdir, steps=QUICK_STEPS) if quick else run_complete(workdir, epochs)


def keep_record(workdir: Path, record: Path) -> None:
    """Copy a finished run's RECORD_FILES from `workdir` to `record`, each atomically and its summary
    last, so a record is complete exactly when run_complete says so, whenever the copy is killed (a run
    that ended inside its first epoch has no metrics.jsonl). Its log stays with the workdir: progress
    bars make it megabytes."""
    if record.resolve() == workdir.resolve():
        return
    record.mkdir(parents=True, exist_ok=True)
    (record / "summary.json").unlink(missing_ok=True)  # incomplete until the new one is in
    for name in RECORD_FILES:
        if (workdir / name).exists():
            write_bytes_atomic(record / name, (workdir / name).read_bytes())


def log_path(workdir: Path) -> Path:
    return workdir.parent / f"{workdir.name}.log"


def _failure(log: Path, start: int) -> str:
    """The last line this attempt wrote to its log that is not a progress bar."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    lines = [line.strip() for chunk in text.splitlines() for line in chunk.split("\r")]
    lines = [line for line in lines if line and "it/s]" not in line and "s/it]" not in line]
    return lines[-1] if lines else "(no output)"


def train(workdir: Path, framework: str, model: str, seed: int, flags: Sequence[str] = (),
          data_dir: str | None = None, env: dict[str, str] | None = None) -> None:
    """Train `model` with `framework` and `seed` into `workdir` (resuming it if it exists), passing
    the extra CLI `flags`; raise RunError, quoting the run's own log, if it fails."""
    command = ["-m", command_module(framework, "train"), "--model", model, "--seed", str(seed),
               "--workdir", str(workdir), "--checkpoint-every", str(CHECKPOINT_EVERY), *_recipe_flags(model), *flags]
    if data_dir:
        command += ["--data-dir", data_dir]
    if workdir.exists():
        command.append("--resume")
    workdir.parent.mkdir(parents=True, exist_ok=True)
    log = log_path(workdir)
    with open(log, "a") as out:
        start = out.tell()
        with _children.lock:
            if _children.stopping:
                raise RunError(f"{model} {framework} seed {seed} not started: stopping")
            child = subprocess.Popen([sys.executable, "-c", _ORPHAN_GUARD, str(os.getpid()), *command], stdout=out,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True)
            _children.running.add(child)
        try:
            try:
                returncode = wait_for_child(child)
            except BaseException:  # Stopped, in a command that trains from its main thread
                wait_for_child(child)  # the signal was passed on to the child: let it checkpoint and exit
                raise
        finally:
            with _children.lock:
                _children.running.discard(child)
    if returncode != 0:
        raise RunError(f"{model} {framework} seed {seed} failed (exit {returncode}): {_failure(log, start)} [log: {log}]")
