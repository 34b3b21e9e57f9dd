"""The benchmark's measurement: the interleaved rounds that time the candidates' worker processes
(benchmarks/worker.py): a warm-up trial each, then `repeats` rounds in rotated order. `bench_model`
returns one record per candidate; what the records mean: benchmarks/README.md."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import flops
from benchmarks.candidates import framework_of
from benchmarks.machine import others_cpu_seconds
from benchmarks.ratios import median
from benchmarks.worker import Candidate, Worker

# A candidate whose first timed trial took longer than this is timed in one round only (keeps a full run
# within bounds when one candidate is pathologically slow, e.g. XLA convolutions under lax.scan).
SLOW_TRIAL_S = 25.0


@dataclasses.dataclass
class Trials:
    """What the rounds measured of one candidate: per timed round (train seconds, CPU seconds,
    examples), (eval seconds, examples), the load average and the share of the machine's CPU other
    processes used during the training trial; and its warm-up trial's (train, eval) seconds."""

    train: list = dataclasses.field(default_factory=list)
    eval: list = dataclasses.field(default_factory=list)
    load: list = dataclasses.field(default_factory=list)
    others_cpu: list = dataclasses.field(default_factory=list)
    first: tuple | None = None


def start_workers(model, variants, data_dir, log_dir, shared, cache_root: Path) -> tuple[list, list]:
    """(workers, candidates): every worker started at once (set-up is not what is measured); with
    `shared` (--quick), one worker per framework. A fresh compilation cache per Flax worker, so that
    its first compilations are cold."""
    groups = ([[p for p in variants if framework_of(p) == fw] for fw in ("flax", "torch")] if shared
              else [[p] for p in variants])
    workers = [Worker(model, g, data_dir, log_dir, quick=shared,
                      compile_cache=cache_root / "+".join(g) if framework_of(g[0]) == "flax" else None)
               for g in groups if g]
    candidates = []
    for worker in workers:
        setup = worker.ask(None)
        for variant in worker.variants:
            candidate = Candidate(worker, variant)
            candidate.info = setup.get(variant, setup) if "error" not in setup else setup
            candidate.error = candidate.info.get("error")
            candidates.append(candidate)
    return workers, candidates


def _trial(candidate, epoch, steps, evaluate: bool) -> tuple[dict, dict, float]:
    """One trial: `steps` training steps of epoch `epoch`, then (if `evaluate`) a full evaluation;
    with the CPU seconds other processes used meanwhile."""
    before, tick = others_cpu_seconds(), time.perf_counter()
    train = candidate.ask(("train", candidate.variant, epoch, steps))
    others = others_cpu_seconds(own=train.get("cpu_seconds", 0.0)) - before
    wall = time.perf_counter() - tick
    evaluation = candidate.ask(("eval", candidate.variant)) if evaluate else {"seconds": float("nan"), "examples": 0}
    return train, evaluation, max(0.0, others) / (wall * (os.cpu_count() or 1))


def run_rounds(model, candidates, steps, repeats, shared, progress) -> dict[str, Trials]:
    """The warm-up round, then `repeats` timed rounds, the candidates' order rotated each round; each
    trial a fresh epoch."""
    trials = {c.variant: Trials() for c in candidates}
    for epoch, r in enumerate([None, *range(repeats)], start=1):  # None: the warm-up round
        order = candidates if r is None else candidates[r % len(candidates):] + candidates[:r % len(candidates)]
        for c in order:
            done = trials[c.variant]
            if c.error or (r is not None and done.train and done.train[0][0] > SLOW_TRIAL_S):
                continue
            # --quick: the warm-up compiles training only; evaluation runs once
            train, evaluation, others = _trial(c, epoch, steps, evaluate=not (r is None and shared))
            if c.error:
                progress(f"  {model:12s} {c.variant:16s} ERROR {c.error}")
                continue
            if r is None:
                done.first = (train["seconds"], evaluation["seconds"])
            else:
                done.train.append((train["seconds"], train["cpu_seconds"], train["examples"]))
                done.eval.append((evaluation["seconds"], evaluation["examples"]))
                done.load.append(train["load"])
                done.others_cpu.append(others)
            progress(f"  {model:12s} {c.variant:16s} {'warm-up' if r is None else f'round {r + 1}'}: "
                     f"train {train['examples'] / train['seconds']:9.0f} samples/s "
                     f"({1e3 * train['seconds'] / steps:.2f} ms/step, CPU {1e3 * train['cpu_seconds'] / steps:.2f}), "
                     f"eval {evaluation['examples'] / evaluation['seconds']:9.0f} samples/s; others' CPU {100 * others:.0f} %")
    return trials


def close_workers(workers, candidates) -> tuple[dict, dict]:
    """(1-example step seconds of the Flax per-step loops, peak RSS MB per candidate), then the
    workers stopped. The tiny steps run after the timed rounds: they train on 1-example batches."""
    tiny = {c.variant: c.ask(("tiny", c.variant)).get("tiny_step_s")
            for c in candidates if framework_of(c.variant) == "flax" and not c.error}
    rss = {}
    for worker in workers:
        peak = worker.close()
        for variant in worker.variants:
            rss[variant] = peak if len(worker.variants) == 1 else None  # a shared process's RSS is no one candidate's
    return tiny, rss


def second_run_compile_s(model, variant, steps, data_dir, log_dir, cache: Path, shared) -> float | None:
    """Compile seconds of `variant` in a second process that finds the first one's programs in the
    persistent cache: its warm-up trial minus a steady one, training and evaluation."""
    worker = Worker(model, [variant], data_dir, log_dir, quick=shared, compile_cache=cache, log_suffix="-second-run")
    try:
        setup = worker.ask(None)
        if "error" in setup or "error" in setup.get(variant, {}):
            return None
        trials = []
        for epoch in (1, 2):
            train, evaluation = worker.ask(("train", variant, epoch, steps)), worker.ask(("eval", variant))
            if "error" in train or "error" in evaluation:
                return None
            trials.append((train["seconds"], evaluation["seconds"]))
        (train_warm, eval_warm), (train, evaluation) = trials
        return max(0.0, train_warm - train) + max(0.0, eval_warm - evaluation)
    finally:
        worker.close()


def second_runs(model, candidates, steps, data_dir, log_dir, cache_root: Path, shared, progress) -> dict:
    """The trainer default's compile seconds in a second process (its first run's cache filled)."""
    found = {}
    for c in candidates:
        if framework_of(c.variant) == "flax" and c.info.get("trainer_default") and not c.error:
            group = c.variant if not shared else "+".join(x.variant for x in candidates if framework_of(x.variant) == "flax")
            found[c.variant] = second_run_compile_s(model, c.variant, steps, data_dir, log_dir, cache_root / group, shared)
            seconds = found[c.variant]
            progress(f"  {model:12s} {c.variant:16s} second run (compilation cache filled): "
                     f"compile {'—' if seconds is None else format(seconds, '.2f')} s")
    return found


def bench_model(model, variants, steps, repeats, data_dir, log_dir, peak_gflops, progress, shared):
    """Every candidate of `model` timed (module docstring); one record each."""
    # A temporary folder for the Flax workers' compilation caches, removed with the model's workers (it
    # holds nothing a reader of the report needs).
    cache_root = Path(tempfile.mkdtemp(prefix=f"cnn-parity-bench-{model}-"))
    try:
        workers, candidates = start_workers(model, variants, data_dir, log_dir, shared, cache_root)
        try:
            trials = run_rounds(model, candidates, steps, repeats, shared, progress)
            tiny, rss = close_workers(workers, candidates)
        finally:
            for worker in workers:
                worker.kill()
        second_run = second_runs(model, candidates, steps, data_dir, log_dir, cache_root, shared, progress)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    measured = {"tiny": tiny, "rss": rss, "second_run": second_run, "steps": steps, "peak_gflops": peak_gflops}
    return [record(model, c, trials[c.variant], measured) for c in candidates]


def record(model, candidate, trials: Trials, measured: dict) -> dict:
    """The record of one candidate (benchmarks/README.md defines each field)."""
    info, variant, steps = candidate.info or {}, candidate.variant, measured["steps"]
    train_flops = flops.train_flops(model)
    rec = {"model": model, "framework": framework_of(variant), "variant": variant, "batch_size": info.get("batch_size"),
           "trainer_default": bool(info.get("trainer_default")), "train_samples_per_s": None,
           "eval_samples_per_s": None, "epoch_s": None, "compile_s": None,
           "compile_s_second_run": measured["second_run"].get(variant), "peak_rss_mb": measured["rss"].get(variant),
           "flops_per_sample": train_flops, "gemm_peak_fraction": None, "tiny_step_s": measured["tiny"].get(variant)}
    if candidate.error:
        rec["error"] = candidate.error
    if not trials.train:
        rec["error"] = rec.get("error") or "no timed trial"
        return rec
    train_rates = [examples / seconds for seconds, _, examples in trials.train]
    step_s = median([seconds / steps for seconds, _, _ in trials.train])
    eval_s = median([seconds for seconds, _ in trials.eval])
    first_train, first_eval = trials.first
    rec.update({
        "train_samples_per_s": median(train_rates),
        "eval_samples_per_s": median([examples / seconds for seconds, examples in trials.eval]),
        "train_ms_per_step": 1e3 * step_s,
        "train_cpu_ms_per_step": 1e3 * median([cpu / steps for _, cpu, _ in trials.train]),
        # One epoch end to end: its training steps (data pipeline included) and a full evaluation.
        "epoch_s": info["steps_per_epoch"] * step_s + eval_s,
        "epoch_measured": steps >= info["steps_per_epoch"],
        # Warm-up trial minus a steady one, training and evaluation (--quick: training only).
        "compile_s": max(0.0, first_train - step_s * steps) + (max(0.0, first_eval - eval_s) if first_eval == first_eval else 0.0),
        "first_train_trial_s": first_train,
        "train_samples_per_s_all": train_rates,
        "train_cpu_ms_per_step_all": [1e3 * cpu / steps for _, cpu, _ in trials.train],
        "eval_samples_per_s_all": [examples / seconds for seconds, examples in trials.eval],
        "train_spread": (max(train_rates) - min(train_rates)) / median(train_rates),
        "loadavg_1m_during": trials.load,
        "others_cpu_fraction_during": trials.others_cpu,
        "steps_per_trial": steps,
        "rounds": len(train_rates),
        "steps_per_epoch": info["steps_per_epoch"],
        "setup_s": info.get("setup_s"),
        "device": info.get("device"),
    })
    if measured["peak_gflops"]:
        rec["gemm_peak_fraction"] = rec["train_samples_per_s"] * train_flops / (measured["peak_gflops"] * 1e9)
    return rec
