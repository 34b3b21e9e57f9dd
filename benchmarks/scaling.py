"""Data-parallel scaling: train samples/s against device count, Flax (jax.sharding over a mesh) and
PyTorch (DDP under torchrun), at the recipe's global batch.

    python -m benchmarks.scaling [--models lenet ...] [--devices 1 2] [--steps N] [--quick] --out DIR

Each (model, framework, device count) runs in fresh processes: Flax as one process over N devices
(on a CPU-only machine N simulated host devices, XLA_FLAGS=--xla_force_host_platform_device_count),
PyTorch as N torchrun processes (gloo on CPU, nccl on GPU). A warm-up dispatch of STEPS_PER_DISPATCH
steps, then `--steps` timed steps through the trainers' own train_epoch. Writes DIR/scaling.json,
DIR/scaling.md and prints the table. Simulated CPU devices share the machine's cores, so on a CPU
the table shows the cost of the collectives, not a speed-up. Flax convolves with conv_impl
"canonical", the trainer's CPU default on several devices, at every device count (its oneDNN tiers
train on one device only: resolve_conv_impl in flax_impl/train.py), so that a ratio is the mesh's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cnn_parity.commands import OneLineParser, positive_int, report_errors
from cnn_parity.errors import RunError, UsageError
from cnn_parity.recipes import MODELS, load_recipe
from cnn_parity.trainer import CHECK_EVERY
from cnn_parity.files import write_json_atomic

WARMUP_STEPS = CHECK_EVERY  # one chunk: Flax's first dispatch of STEPS_PER_DISPATCH steps, which compiles
PROG = "python -m benchmarks.scaling"


def _time_trainer(trainer, steps: int, sync) -> float:
    from benchmarks.candidates import train_to_step

    progress = train_to_step(trainer, 1, WARMUP_STEPS)
    sync()
    warmup_examples, tick = progress.examples_seen, time.perf_counter()
    progress = train_to_step(trainer, 1, WARMUP_STEPS + steps, progress)
    sync()
    return (progress.examples_seen - warmup_examples) / (time.perf_counter() - tick)


def worker(framework: str, model: str, devices: int, steps: int) -> None:
    recipe = load_recipe(model)
    if framework == "flax":
        import jax

        from flax_impl import distributed
        from flax_impl.train import FlaxTrainer

        trainer = FlaxTrainer(recipe, conv_impl="canonical", mesh=distributed.make_mesh(devices))
        rate = _time_trainer(trainer, steps, lambda: jax.block_until_ready(trainer.state))
    else:
        import torch

        from torch_ref import distributed
        from torch_ref.train import TorchTrainer

        trainer = TorchTrainer(recipe, world=distributed.initialize())
        sync = torch.cuda.synchronize if trainer.torch_device.type == "cuda" else (lambda: None)
        rate = _time_trainer(trainer, steps, sync)
        distributed.shutdown()
    if trainer.is_primary:
        print("@@ " + json.dumps({"train_samples_per_s": rate, "device": trainer.device}), flush=True)


def failure_reason(stderr: str) -> str:
    """The line that says why a worker failed: its own one-line error, else the last exception line
    that is not torchrun's summary (whose closing line is a rule of '=' signs)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(f"{PROG}: error:")]
    exceptions = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt): ", line)
                  and "ChildFailedError" not in line]
    return (ours or exceptions or lines or ["(no output)"])[-1]


def measure(framework: str, model: str, devices: int, steps: int, max_devices: int, out: Path) -> dict:
    args = ["--worker", framework, "--models", model, "--devices", str(devices), "--steps", str(steps)]
    env = dict(os.environ)  # torchrun itself sets OMP_NUM_THREADS=1 per process when N > 1
    if framework == "flax":
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={max_devices}"
        command = [sys.executable, "-m", "benchmarks.scaling", *args]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        command = [torchrun, "--standalone", f"--nproc_per_node={devices}", "-m", "benchmarks.scaling", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line[3:] for line in result.stdout.splitlines() if line.startswith("@@ ")]
    if result.returncode != 0 or not lines:
        log = out / f"{framework}-{model}-{devices}.log"
        log.write_text(result.stdout + result.stderr)
        raise RunError(f"{framework} {model} on {devices} device(s) failed (exit {result.returncode}): "
                       f"{failure_reason(result.stderr)} (whole output: {log})")
    return {"model": model, "framework": framework, "devices": devices, "batch_size": load_recipe(model).batch_size,
            **json.loads(lines[-1])}


def table(records: list[dict]) -> str:
    rows = ["| model | framework | devices | global batch | train samples/s | × 1 device |", "|---|---|---:|---:|---:|---:|"]
    for r in records:
        base = next(b for b in records if b["model"] == r["model"] and b["framework"] == r["framework"])
        rows.append(f"| {r['model']} | {r['framework']} | {r['devices']} | {r['batch_size']} | "
                    f"{r['train_samples_per_s']:,.0f} | {r['train_samples_per_s'] / base['train_samples_per_s']:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet"], metavar="MODEL")
    p.add_argument("--devices", nargs="+", type=positive_int, default=[1, 2], metavar="N")
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--quick", action="store_true", help="smoke run: 20 timed steps")
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", choices=("flax", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.models[0], args.devices[0], args.steps)
        return 0

    def body() -> int:
        unknown = [m for m in args.models if m not in MODELS]
        if unknown:
            raise UsageError(f"unknown model {unknown[0]!r}; choose from: {', '.join(MODELS)}")
        if args.out is None:
            raise UsageError("--out DIR is required")
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot write to {args.out}: {e.strerror or e}") from None
        steps = 20 if args.quick else args.steps
        records = [measure(f, m, d, steps, max(args.devices), args.out)
                   for m in args.models for f in ("flax", "torch") for d in sorted(args.devices)]
        write_json_atomic(args.out / "scaling.json", records)
        (args.out / "scaling.md").write_text(table(records) + "\n")
        print(table(records))
        return 0

    return report_errors(p.prog, body)


if __name__ == "__main__":
    sys.exit(main())
