"""What the benchmark measures of the machine itself: each framework's f32 GEMM peak (benchmarks/gemm.py,
in its own process) and whether others are using the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.worker import REPO


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
