"""The benchmark's measurement: the interleaved rounds that time the candidates' worker processes
(benchmarks/worker.py): a warm-up trial each, then `repeats` rounds in rotated order. Returns one
record per candidate; what the records mean: benchmarks/README.md."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from benchmarks import flops
from benchmarks.candidates import framework_of
from benchmarks.ratios import median
from benchmarks.worker import Candidate, Worker

# A candidate whose first timed trial took longer than this is timed in one round only (keeps a full run
# within ~15 minutes when one candidate is pathologically slow, e.g. XLA convolutions under lax.scan).
SLOW_TRIAL_S = 25.0


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
            train, evaluate = worker.ask(f"train {variant} {epoch} {steps}"), worker.ask(f"eval {variant}")
            if "error" in train or "error" in evaluate:
                return None
            trials.append((train["seconds"], evaluate["seconds"]))
        (train_warm, eval_warm), (train, evaluate) = trials
        return max(0.0, train_warm - train) + max(0.0, eval_warm - evaluate)
    finally:
        worker.close()


def bench_model(model, variants, steps, repeats, data_dir, log_dir, peak_gflops, progress, shared):
    # All workers start at once (set-up is not what is measured); with `shared`, one per framework.
    groups = ([[p for p in variants if framework_of(p) == fw] for fw in ("flax", "torch")] if shared
              else [[p] for p in variants])
    # A fresh compilation cache per Flax worker, so its first compilations are cold; a temporary folder,
    # removed with the model's workers (it holds nothing a reader of DIR needs).
    cache_root = Path(tempfile.mkdtemp(prefix=f"cnn-parity-bench-{model}-"))
    caches = {tuple(g): cache_root / "+".join(g) for g in groups if g and framework_of(g[0]) == "flax"}
    workers = [Worker(model, g, data_dir, log_dir, quick=shared, compile_cache=caches.get(tuple(g))) for g in groups if g]
    candidates = []
    for w in workers:
        setup = w.ask(None)
        for p in w.variants:
            c = Candidate(w, p)
            c.info = setup.get(p, setup) if "error" not in setup else setup
            c.error = c.info.get("error")
            candidates.append(c)
    trials = {c.variant: {"train": [], "eval": [], "load": []} for c in candidates}
    first = {}
    epoch = 1
    for r in [None] + list(range(repeats)):  # None: the warm-up round
        order = candidates if r is None else candidates[r % len(candidates):] + candidates[:r % len(candidates)]
        for c in order:
            if c.error:
                continue
            done = trials[c.variant]["train"]
            if r is not None and done and done[0][0] > SLOW_TRIAL_S:
                continue
            t = c.ask(f"train {c.variant} {epoch} {steps}")
            if r is None and shared:  # --quick: the warm-up compiles training only; eval runs once
                e = {"seconds": float("nan"), "examples": 0}
            else:
                e = c.ask(f"eval {c.variant}") if not c.error else {}
            if c.error:
                progress(f"  {model:12s} {c.variant:16s} ERROR {c.error}")
                continue
            if r is None:
                first[c.variant] = (t["seconds"], e["seconds"])
            else:
                trials[c.variant]["train"].append((t["seconds"], t["examples"]))
                trials[c.variant]["eval"].append((e["seconds"], e["examples"]))
                trials[c.variant]["load"].append(t["load"])
            progress(f"  {model:12s} {c.variant:16s} {'warm-up' if r is None else f'round {r + 1}'}: "
                     f"train {t['examples'] / t['seconds']:9.0f} samples/s, eval {e['examples'] / e['seconds']:9.0f} samples/s"
                     f"  ({t['seconds']:.2f} s + {e['seconds']:.2f} s)")
        epoch += 1
    # After the timed rounds (it trains on 1-example batches): per-step overhead of the Flax loops.
    tiny = {c.variant: c.ask(f"tiny {c.variant}").get("tiny_step_s")
            for c in candidates if framework_of(c.variant) == "flax" and not c.error}
    rss = {}
    for w in workers:
        peak = w.close()
        for p in w.variants:
            rss[p] = peak if len(w.variants) == 1 else None  # a shared process's RSS is no one candidate's
    second_run = {}
    for c in candidates:
        if framework_of(c.variant) == "flax" and c.info.get("trainer_default") and not c.error:
            cache = next(folder for group, folder in caches.items() if c.variant in group)
            second_run[c.variant] = second_run_compile_s(model, c.variant, steps, data_dir, log_dir, cache, shared)
            progress(f"  {model:12s} {c.variant:16s} second run (compilation cache filled): "
                     f"compile {'—' if second_run[c.variant] is None else format(second_run[c.variant], '.2f')} s")
    shutil.rmtree(cache_root, ignore_errors=True)
    records = []
    train_flops = flops.train_flops(model)
    for w in candidates:
        rec = {"model": model, "framework": framework_of(w.variant), "variant": w.variant,
               "batch_size": (w.info or {}).get("batch_size"),
               "trainer_default": bool((w.info or {}).get("trainer_default")), "train_samples_per_s": None,
               "eval_samples_per_s": None, "epoch_s": None, "compile_s": None,
               "compile_s_second_run": second_run.get(w.variant), "peak_rss_mb": rss.get(w.variant),
               "flops_per_sample": train_flops, "gemm_peak_fraction": None, "tiny_step_s": tiny.get(w.variant)}
        tr = trials[w.variant]
        if w.error and not tr["train"]:
            rec["error"] = w.error
            records.append(rec)
            continue
        if w.error:
            rec["error"] = w.error
        train_rates = [ex / s for s, ex in tr["train"]]
        eval_rates = [ex / s for s, ex in tr["eval"]]
        step_s = median([s / steps for s, _ in tr["train"]])
        eval_s = median([s for s, _ in tr["eval"]])
        spe = w.info["steps_per_epoch"]
        rec.update({
            "train_samples_per_s": median(train_rates),
            "eval_samples_per_s": median(eval_rates),
            # One epoch end to end: its training steps (data pipeline included) and a full evaluation.
            "epoch_s": spe * step_s + eval_s,
            "epoch_measured": steps >= spe,
            # Warm-up trial minus a steady one, training and evaluation (--quick: training only).
            "compile_s": max(0.0, first[w.variant][0] - median([s for s, _ in tr["train"]]))
                         + (max(0.0, first[w.variant][1] - eval_s) if first[w.variant][1] == first[w.variant][1] else 0.0),
            "first_train_trial_s": first[w.variant][0],
            "train_samples_per_s_all": train_rates,
            "eval_samples_per_s_all": eval_rates,
            "train_spread": (max(train_rates) - min(train_rates)) / median(train_rates),
            "loadavg_1m_during": tr["load"],
            "steps_per_trial": steps,
            "rounds": len(train_rates),
            "steps_per_epoch": spe,
            "setup_s": w.info.get("setup_s"),
            "device": w.info.get("device"),
        })
        if peak_gflops:
            rec["gemm_peak_fraction"] = rec["train_samples_per_s"] * train_flops / (peak_gflops * 1e9)
        records.append(rec)
    return records
