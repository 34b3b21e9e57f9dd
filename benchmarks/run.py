"""Side-by-side Flax / PyTorch benchmarks of the five recipes.

    python -m benchmarks.run [--models lenet mlp ...] [--variants ...] [--quick] --out DIR

For each model, every candidate variant runs in its own worker process (benchmarks/worker.py), all of
them alive at once and driven in turn: a warm-up trial each (its excess over a steady trial is the
compile / first-step time), then `--repeats` rounds in which the candidates' order rotates, each
trial being `--steps` training steps followed by a full test-set evaluation. Reported: medians over
rounds, with min-max spread, and each Flax variant's ratio to PyTorch eager with its interval over the
rounds, read in the Flax tiers (stock Flax and the convolution tiers: benchmarks/ratios.py), with each
trial's milliseconds per step in wall time and in the training process's CPU time. A run whose
machine is busy is flagged (a warning before it starts, busy rounds marked in the tables) and, with
--update-readme, refused before it starts: the README's table is an idle machine's. Writes
DIR/bench.json, DIR/bench.md, DIR/bench.png; prints the tables. This file is the command line; the
machine's measurements: benchmarks/machine.py; the rounds: benchmarks/rounds.py; the worker processes:
benchmarks/worker.py; the ratios: benchmarks/ratios.py; tables
and chart: benchmarks/tables.py. See benchmarks/README.md for the definitions of every figure.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import flops, ratios
from benchmarks.candidates import VARIANTS
from benchmarks.machine import IDLE_BUSY_FRACTION, busy_cpu_fraction, measure_gemm
from benchmarks.rounds import bench_model
from benchmarks.tables import fmt, goals_table, markdown_table, summary_lines, write_chart
from cnn_parity.commands import OneLineParser, positive_int
from cnn_parity.errors import UsageError
from cnn_parity.provenance import machine_info
from cnn_parity.recipes import MODELS
from cnn_parity.specs import spec
from cnn_parity.markdown import replace_marked_block

# Training steps per timed trial (full mode): each recipe file's [checks] benchmark_steps.
FULL_STEPS = {model: spec(model).benchmark_steps for model in MODELS}
QUICK_STEPS = 3
# The README block `--update-readme` regenerates.
README_MARKER = "benchmark-goals"
PROG = "python -m benchmarks.run"


def parse_args(argv):
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), metavar="MODEL",
                   help=f"any of: {', '.join(MODELS)}")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="VARIANT",
                   help=f"any of: {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke run: a few steps, one round (CI)")
    p.add_argument("--repeats", type=positive_int, help="timed rounds per candidate (default 3; 1 with --quick)")
    p.add_argument("--steps", type=positive_int,
                   help=f"training steps per trial (default: per model; {QUICK_STEPS} with --quick)")
    p.add_argument("--data-dir", help="folder holding <dataset>/ (default: the project's search order)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--update-readme", metavar="PATH",
                   help=f"replace the '{README_MARKER}' block of this Markdown file with the goals table")
    args = p.parse_args(argv)
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


def others_max(records) -> float:
    """The largest share of the machine's CPU other processes used during any timed trial."""
    return max((share for r in records for share in r.get("others_cpu_fraction_during") or []), default=0.0)


def start_meta(args, repeats) -> dict:
    return {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "quick": args.quick, "repeats": repeats,
            "loadavg_start": os.getloadavg(), "cpu_busy_before_start": busy_cpu_fraction(),
            "machine": machine_info(), "command": " ".join(sys.argv)}


def measure(args, meta, repeats, out: Path, log) -> list[dict]:
    """The GEMM peak, then every model's candidates; bench.json is rewritten after each model."""
    log(f"measuring peak f32 GEMM ({'quick' if args.quick else 'full'}) ...")
    meta["gemm"] = measure_gemm(args.quick)
    log(f"  peak f32 GEMM: {fmt(meta['gemm']['peak_gflops'], '.0f')} GFLOP/s "
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
    return records


def header(meta, records, repeats) -> str:
    m = meta["machine"]
    return (f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_count')} logical CPUs, {m.get('memory_gib', '?')} GiB"
            f"{', GPUs: ' + ', '.join(m['gpus']) if m.get('gpus') else ', no GPU'}; {m['platform']}.  \n"
            f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.  \n"
            f"Peak f32 GEMM: {fmt(meta['gemm']['peak_gflops'], '.0f')} GFLOP/s. CPU busy before the run "
            f"{100 * meta['cpu_busy_before_start']:.0f} %; load average at start "
            f"{meta['loadavg_start'][0]:.2f}, at end {meta['loadavg_end'][0]:.2f}; other processes' share of the "
            f"CPU during the trials at most {100 * others_max(records):.0f} %. "
            f"{'QUICK smoke run. ' if meta['quick'] else ''}{repeats} timed round(s); run took {meta['wall_s']:.0f} s.")


def write_report(records, meta, out: Path, repeats, update_readme, log) -> None:
    """bench.json, bench_meta.json, bench.md, bench.png (and the README's block); the tables printed."""
    from benchmarks.flops import layer_flops
    meta["flops"] = {m: {"train_per_sample": flops.train_flops(m), "forward_per_sample": flops.forward_flops(m),
                         "layers_forward": dict(layer_flops(m))} for m in dict.fromkeys(r["model"] for r in records)}
    ratios.annotate(records)
    (out / "bench.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "bench_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    table, summary, goals = markdown_table(records, meta), summary_lines(records), goals_table(records)
    (out / "bench.md").write_text(f"# Benchmarks ({meta['started']})\n\n{header(meta, records, repeats)}\n\n{table}\n\n"
                                  + "\n".join(f"- {s}" for s in summary) + f"\n\n## Against the goals\n\n{goals}\n")
    try:
        write_chart(records, out / "bench.png", meta)
    except Exception as e:  # the chart is a convenience; the tables are the report
        log(f"chart not written: {type(e).__name__}: {e}")
    if update_readme:
        replace_marked_block(update_readme, README_MARKER, goals)
    print("\n\n".join([table, goals, "\n".join(summary)]))
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'} in {meta['wall_s']:.0f} s")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    out = Path(args.out)
    repeats = args.repeats or (1 if args.quick else 3)
    started = time.time()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    meta = start_meta(args, repeats)
    if meta["cpu_busy_before_start"] > IDLE_BUSY_FRACTION:
        busy = f"{100 * meta['cpu_busy_before_start']:.0f} % of its CPU busy before the run"
        if args.update_readme:
            print(f"{PROG}: error: the machine is not idle ({busy}); the README's table is an idle machine's: "
                  "rerun when nothing else runs, or leave out --update-readme", file=sys.stderr)
            return 1
        log(f"warning: the machine is not idle ({busy}): timings will be low and PyTorch's OpenMP threads can "
            "stall far more than XLA's; each row's CPU ms per step and busy rounds say how much")
    records = measure(args, meta, repeats, out, log)
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = time.time() - started
    write_report(records, meta, out, repeats, args.update_readme, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
