"""Side-by-side Flax / PyTorch benchmarks of the five recipes.

    python -m benchmarks.run [--models lenet mlp ...] [--variants ...] [--quick] --out DIR

For each model, every candidate variant runs in its own worker process (benchmarks/worker.py), all of
them alive at once and driven in turn: a warm-up trial each (its excess over a steady trial is the
compile / first-step time), then `--repeats` rounds in which the candidates' order rotates, each
trial being `--steps` training steps followed by a full test-set evaluation. Reported: medians over
rounds, with min-max spread. Writes DIR/bench.json, DIR/bench.md, DIR/bench.png; prints the table.
See benchmarks/README.md for the definitions of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnn_parity.recipes import MODELS
from benchmarks import flops
from benchmarks.candidates import VARIANTS, framework_of
from cnn_parity.markdown import replace_marked_block
from cnn_parity.workdir import machine_info

REPO = Path(__file__).resolve().parent.parent

# Training steps per timed trial (full mode): about 1-3 s of work each on a 2-core CPU.
FULL_STEPS = {"mlp": 600, "cnn_base": 12, "cnn_2layer": 25, "lenet": 120, "fashion_cnn": 120}
# A candidate whose first timed trial took longer than this is timed in one round only (keeps a full run
# within ~15 minutes when one candidate is pathologically slow, e.g. XLA convolutions under lax.scan).
SLOW_TRIAL_S = 25.0
QUICK_STEPS = 3
WORKER_TIMEOUT_S = 900
# The README block `--update-readme` regenerates.
README_MARKER = "benchmark-goals"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv):
    p = _Parser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL", help=f"any of: {', '.join(MODELS)}")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="VARIANT",
                   help=f"any of: {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke run: a few steps, one round (CI)")
    p.add_argument("--repeats", type=int, help="timed rounds per candidate (default 3; 1 with --quick)")
    p.add_argument("--steps", type=int, help="training steps per trial (default: per model; 4 with --quick)")
    p.add_argument("--data-dir", help="folder holding <dataset>/ (default: the project's search order)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--update-readme", metavar="PATH",
                   help=f"replace the '{README_MARKER}' block of this Markdown file with the goals table")
    args = p.parse_args(argv)
    for m in args.models:
        if m not in MODELS:
            raise UsageError(f"unknown model {m!r}; choose from: {', '.join(MODELS)}")
    for q in args.variants:
        if q not in VARIANTS:
            raise UsageError(f"unknown variant {q!r}; choose from: {', '.join(VARIANTS)}")
    if args.repeats is not None and args.repeats < 1:
        raise UsageError(f"--repeats must be positive, got {args.repeats}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be positive, got {args.steps}")
    if args.update_readme:  # checked now, not after a long run
        try:
            text = Path(args.update_readme).read_text()
        except OSError as e:
            raise UsageError(f"--update-readme {args.update_readme}: {e.strerror or e}") from None
        if f"<!-- {README_MARKER}:begin -->" not in text or f"<!-- {README_MARKER}:end -->" not in text:
            raise UsageError(f"--update-readme {args.update_readme} has no '<!-- {README_MARKER}:begin/end -->' block")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-").close()
    except OSError as e:
        raise UsageError(f"--out {out} is not writable: {e.strerror or e}") from None
    return args


# ----------------------------------------------------------------------------------------------
# Workers.

class Worker:
    """A worker process hosting one or more candidates of one model and one framework."""

    def __init__(self, model, variants, data_dir, log_dir: Path, quick=False, compile_cache: Path | None = None,
                 log_suffix=""):
        """`compile_cache`: the JAX persistent compilation cache folder a Flax worker uses, as the
        training CLI uses its own."""
        self.model, self.variants = model, list(variants)
        self.log_path = log_dir / f"{model}-{'+'.join(self.variants)}{log_suffix}.log"
        cmd = [sys.executable, "-m", "benchmarks.worker", "--model", model, "--variants", *self.variants]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        if quick:
            cmd.append("--quick")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        env["CNN_PARITY_JAX_CACHE"] = str(compile_cache) if compile_cache else "off"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        self.dead = None  # why the process is gone, once it is

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return {"error": f"timed out after {timeout:.0f} s"}
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                return {"error": f"worker exited with status {self.proc.returncode}: {self._tail()}"}
            if line.startswith("@@ "):
                return json.loads(line[3:])

    def _tail(self):
        self._log.flush()
        try:
            lines = [l.strip() for l in self.log_path.read_text().splitlines() if l.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def ask(self, command, timeout=WORKER_TIMEOUT_S):
        if self.dead:
            return {"error": self.dead}
        if command is not None:
            try:
                self.proc.stdin.write(command + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        answer = self._read(timeout)
        if "error" in answer and self.proc.poll() is not None:
            self.dead = answer["error"]
        return answer

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        answer = self.ask("quit", timeout=60)
        self.kill()
        self._log.close()
        return answer.get("peak_rss_mb")


class Candidate:
    def __init__(self, worker: Worker, variant: str):
        self.worker, self.variant = worker, variant
        self.info, self.error = {}, None

    def ask(self, command):
        if self.error:
            return {"error": self.error}
        answer = self.worker.ask(command)
        if "error" in answer:
            self.error = answer["error"]
        return answer


# ----------------------------------------------------------------------------------------------
# Machine.

def measure_gemm(quick: bool) -> dict:
    results = {}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for fw in ("jax", "torch"):
        cmd = [sys.executable, "-m", "benchmarks.gemm", fw] + (["--quick"] if quick else [])
        try:
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            results[fw] = json.loads(done.stdout.strip().splitlines()[-1])
        except Exception as e:  # a broken framework must not stop the benchmark
            results[fw] = {"error": f"{type(e).__name__}: {e}"}
    peaks = [r["peak_gflops"] for r in results.values() if "peak_gflops" in r]
    return {"by_framework": results, "peak_gflops": max(peaks) if peaks else None}


IDLE_BUSY_FRACTION = 0.1


def busy_cpu_fraction(seconds: float = 3.0) -> float:
    """Fraction of the machine's CPU time others use over `seconds` (load averages include the
    benchmark's own threads, so they cannot say whether the machine was idle)."""
    import psutil

    return psutil.cpu_percent(interval=seconds) / 100


# ----------------------------------------------------------------------------------------------
# Benchmark.

def _median(xs):
    return statistics.median(xs) if xs else None


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
                     f"compile {_fmt(second_run[c.variant], '.2f')} s")
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
        step_s = _median([s / steps for s, _ in tr["train"]])
        eval_s = _median([s for s, _ in tr["eval"]])
        spe = w.info["steps_per_epoch"]
        rec.update({
            "train_samples_per_s": _median(train_rates),
            "eval_samples_per_s": _median(eval_rates),
            # One epoch end to end: its training steps (data pipeline included) and a full evaluation.
            "epoch_s": spe * step_s + eval_s,
            "epoch_measured": steps >= spe,
            # Warm-up trial minus a steady one, training and evaluation (--quick: training only).
            "compile_s": max(0.0, first[w.variant][0] - _median([s for s, _ in tr["train"]]))
                         + (max(0.0, first[w.variant][1] - eval_s) if first[w.variant][1] == first[w.variant][1] else 0.0),
            "first_train_trial_s": first[w.variant][0],
            "train_samples_per_s_all": train_rates,
            "eval_samples_per_s_all": eval_rates,
            "train_spread": (max(train_rates) - min(train_rates)) / _median(train_rates),
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


# ----------------------------------------------------------------------------------------------
# Reports.

def _fmt(x, spec):
    return "—" if x is None else format(x, spec)


def markdown_table(records, meta) -> str:
    lines = ["| model | framework | variant | batch | train samples/s (min–max) | eval samples/s | epoch s | "
             "compile s (first run / cached) | 1-example step ms | peak RSS MB | MFLOP/sample | % GEMM peak | "
             "×eager | ×torchvision-dataloader epoch |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["model"], r["variant"]): r for r in records}
    for r in records:
        eager = by.get((r["model"], "eager"), {}).get("train_samples_per_s")
        seed = by.get((r["model"], "torchvision-dataloader"), {}).get("epoch_s")
        rate = r["train_samples_per_s"]
        if r.get("error") and rate is None:
            lines.append(f"| {r['model']} | {r['framework']} | {r['variant']} | {r['batch_size'] or '—'} | "
                         f"error: {r['error'][:120].replace('|', '/')} | | | | | | | | | |")
            continue
        spread = f"{rate:,.0f} ({min(r['train_samples_per_s_all']):,.0f}–{max(r['train_samples_per_s_all']):,.0f})"
        lines.append(
            f"| {r['model']} | {r['framework']} | {r['variant']} | {r['batch_size']} | {spread} | "
            f"{r['eval_samples_per_s']:,.0f} | {r['epoch_s']:.2f} | {r['compile_s']:.2f}"
            f"{' / ' + _fmt(r['compile_s_second_run'], '.2f') if r.get('compile_s_second_run') is not None else ''} | "
            f"{_fmt(r.get('tiny_step_s') and 1e3 * r['tiny_step_s'], '.2f')} | {_fmt(r['peak_rss_mb'], '.0f')} | "
            f"{r['flops_per_sample'] / 1e6:.2f} | {_fmt(r['gemm_peak_fraction'] and 100 * r['gemm_peak_fraction'], '.1f')} | "
            f"{_fmt(eager and rate / eager, '.2f')} | {_fmt(seed and seed / r['epoch_s'], '.2f')} |")
    return "\n".join(lines)


# NNX variant against its Linen / NNX counterpart: the same loop, or the same step another way.
NNX_COMPARISONS = (("nnx-chunked", "gemm-chunked"), ("nnx-split-loop", "gemm-loop"), ("nnx-jit-loop", "nnx-split-loop"),
                   ("nnx-cached-loop", "nnx-split-loop"))


def _ratio(records, a, b, key):
    values = {r["variant"]: r.get(key) for r in records}
    return values[a] / values[b] if values.get(a) and values.get(b) else None


def summary_lines(records) -> list[str]:
    out = []
    models = list(dict.fromkeys(r["model"] for r in records))
    for m in models:
        rs = [r for r in records if r["model"] == m and r["train_samples_per_s"]]
        flax = [r for r in rs if r["framework"] == "flax"]
        eager = next((r for r in rs if r["variant"] == "eager"), None)
        seed = next((r for r in rs if r["variant"] == "torchvision-dataloader"), None)
        torch_best = max((r for r in rs if r["framework"] == "torch"), key=lambda r: r["train_samples_per_s"], default=None)
        if not flax:
            continue
        best = max(flax, key=lambda r: r["train_samples_per_s"])
        fastest_epoch = min(flax, key=lambda r: r["epoch_s"])
        parts = [f"{m}: best Flax `{best['variant']}`"]
        if eager:
            parts.append(f"{best['train_samples_per_s'] / eager['train_samples_per_s']:.2f}× torch eager train throughput")
        if torch_best:
            parts.append(f"{best['train_samples_per_s'] / torch_best['train_samples_per_s']:.2f}× best torch (`{torch_best['variant']}`)")
        if seed:
            parts.append(f"epoch {seed['epoch_s'] / fastest_epoch['epoch_s']:.2f}× faster than torchvision-dataloader "
                         f"(`{fastest_epoch['variant']}` {fastest_epoch['epoch_s']:.2f} s vs {seed['epoch_s']:.2f} s)")
        if best.get("gemm_peak_fraction") is not None:
            parts.append(f"{100 * best['gemm_peak_fraction']:.1f} % of the GEMM peak")
        out.append("; ".join(parts))
        nnx_parts = [f"`{a}` {_ratio(rs, a, b, 'train_samples_per_s'):.2f}× `{b}` train throughput"
                     for a, b in NNX_COMPARISONS if _ratio(rs, a, b, "train_samples_per_s")]
        nnx_parts += [f"1-example step `{a}` {_ratio(rs, a, b, 'tiny_step_s'):.2f}× `{b}`"
                      for a, b in NNX_COMPARISONS if _ratio(rs, a, b, "tiny_step_s")]
        if nnx_parts:
            out.append(f"{m} NNX: " + "; ".join(nnx_parts))
    return out


def goals_table(records) -> str:
    """Per model, the figures the performance goals are stated in: the best Flax variant and the
    trainer's own against PyTorch eager (train samples/s), the fastest Flax epoch against the
    sources' torchvision DataLoader epoch, and the best Flax variant's fraction of the GEMM peak."""
    lines = ["| model | best Flax variant | ×torch eager (best Flax) | ×torch eager (`python -m flax_impl.train`) | "
             "Flax epoch ×faster than torchvision-dataloader | % GEMM peak (best Flax) | first / cached compile s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for m in dict.fromkeys(r["model"] for r in records):
        rs = {r["variant"]: r for r in records if r["model"] == m and r["train_samples_per_s"]}
        flax = [r for r in rs.values() if r["framework"] == "flax"]
        eager, loader = rs.get("eager"), rs.get("torchvision-dataloader")
        trainer = next((r for r in flax if r.get("trainer_default")), None)
        if not flax or not eager:
            continue
        best = max(flax, key=lambda r: r["train_samples_per_s"])
        epoch = min(r["epoch_s"] for r in flax)
        ratio = lambda r: r and r["train_samples_per_s"] / eager["train_samples_per_s"]
        compile_s = trainer and f"{trainer['compile_s']:.1f} / {_fmt(trainer.get('compile_s_second_run'), '.1f')}"
        lines.append(f"| {m} | `{best['variant']}` | {ratio(best):.2f} | {_fmt(ratio(trainer), '.2f')} | "
                     f"{_fmt(loader and loader['epoch_s'] / epoch, '.2f')} | "
                     f"{_fmt(best['gemm_peak_fraction'] and 100 * best['gemm_peak_fraction'], '.1f')} | {compile_s or '—'} |")
    return "\n".join(lines)


def write_chart(records, path: Path, meta) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in records))
    variants = list(dict.fromkeys(r["variant"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / max(1, len(variants))
    colors = plt.get_cmap("tab10")
    for ax, key, title in ((axes[0], "train_samples_per_s", "train samples/s (log; bars: min–max)"),
                           (axes[1], "epoch_s", "end-to-end epoch s (log; lower is better)")):
        for j, p in enumerate(variants):
            xs, ys, lo, hi = [], [], [], []
            for i, m in enumerate(models):
                r = next((r for r in records if r["model"] == m and r["variant"] == p), None)
                if r and r.get(key):
                    xs.append(i + (j - (len(variants) - 1) / 2) * width)
                    ys.append(r[key])
                    allv = r.get("train_samples_per_s_all") if key == "train_samples_per_s" else None
                    lo.append(r[key] - min(allv) if allv else 0)
                    hi.append(max(allv) - r[key] if allv else 0)
            ax.bar(xs, ys, width, yerr=[lo, hi], label=f"{framework_of(p)} {p}", color=colors(j), capsize=2)
        ax.set_xticks(range(len(models)), models)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{meta['machine'].get('cpu_model', '')} ({meta['machine'].get('cpu_count')} cores); "
                 f"peak f32 GEMM {_fmt(meta['gemm']['peak_gflops'], '.0f')} GFLOP/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"python -m benchmarks.run: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    repeats = args.repeats or (1 if args.quick else 3)
    started = time.time()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "quick": args.quick, "repeats": repeats,
            "loadavg_start": os.getloadavg(), "cpu_busy_before_start": busy_cpu_fraction(),
            "machine": machine_info(), "command": " ".join(sys.argv)}
    if meta["cpu_busy_before_start"] > IDLE_BUSY_FRACTION:
        log(f"warning: the machine is not idle ({100 * meta['cpu_busy_before_start']:.0f} % of its CPU busy before "
            "the run): timings will be low and PyTorch's OpenMP threads can stall far more than XLA's")
    log(f"measuring peak f32 GEMM ({'quick' if args.quick else 'full'}) ...")
    meta["gemm"] = measure_gemm(args.quick)
    log(f"  peak f32 GEMM: {_fmt(meta['gemm']['peak_gflops'], '.0f')} GFLOP/s "
        f"(jax {meta['gemm']['by_framework'].get('jax', {}).get('peak_gflops', 0):.0f}, "
        f"torch {meta['gemm']['by_framework'].get('torch', {}).get('peak_gflops', 0):.0f})")
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)
    records = []
    variants = [p for p in VARIANTS if p in args.variants]
    for model in [m for m in MODELS if m in args.models]:
        steps = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS[model])
        log(f"{model}: {len(variants)} candidates, {steps} steps per trial, {repeats} round(s)")
        records += bench_model(model, variants, steps, repeats, args.data_dir, log_dir,
                               meta["gemm"]["peak_gflops"], log, shared=args.quick)
        (out / "bench.json").write_text(json.dumps(records, indent=2) + "\n")  # partial results so far
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = time.time() - started
    from benchmarks.flops import layer_flops
    meta["flops"] = {m: {"train_per_sample": flops.train_flops(m), "forward_per_sample": flops.forward_flops(m),
                         "layers_forward": dict(layer_flops(m))} for m in args.models}
    (out / "bench.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "bench_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    table = markdown_table(records, meta)
    m = meta["machine"]
    header = (f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_count')} logical CPUs, {m.get('memory_gib', '?')} GiB"
              f"{', GPUs: ' + ', '.join(m['gpus']) if m.get('gpus') else ', no GPU'}; {m['platform']}.  \n"
              f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.  \n"
              f"Peak f32 GEMM: {_fmt(meta['gemm']['peak_gflops'], '.0f')} GFLOP/s. CPU busy before the run "
              f"{100 * meta['cpu_busy_before_start']:.0f} %; load average at start "
              f"{meta['loadavg_start'][0]:.2f}, at end {meta['loadavg_end'][0]:.2f}. "
              f"{'QUICK smoke run. ' if args.quick else ''}{repeats} timed round(s); run took {meta['wall_s']:.0f} s.")
    summary = summary_lines(records)
    goals = goals_table(records)
    md = (f"# Benchmarks ({meta['started']})\n\n{header}\n\n{table}\n\n" + "\n".join(f"- {s}" for s in summary)
          + f"\n\n## Against the goals\n\n{goals}\n")
    (out / "bench.md").write_text(md)
    try:
        write_chart(records, out / "bench.png", meta)
    except Exception as e:
        log(f"chart not written: {type(e).__name__}: {e}")
    if args.update_readme:
        replace_marked_block(args.update_readme, README_MARKER, goals)
    print(table)
    print()
    print(goals)
    print()
    for s in summary:
        print(s)
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'} in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
