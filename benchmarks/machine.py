"""What the benchmark measures of the machine itself: each framework's f32 GEMM peak (benchmarks/gemm.py,
each in a process of its own) and how much of the CPU other processes use."""

from __future__ import annotations

import multiprocessing
import time

from benchmarks import gemm

GEMM_TIMEOUT_S = 300
# Share of the machine's CPU other processes may use, before the run or during a trial, for the
# figures to be read as an idle machine's.
IDLE_BUSY_FRACTION = 0.1


def _measure_in_child(connection, framework: str, quick: bool) -> None:
    try:
        connection.send(gemm.measure(framework, quick))
    except Exception as e:  # a broken framework must not stop the benchmark
        connection.send({"error": f"{type(e).__name__}: {e}"})


def measure_gemm(quick: bool) -> dict:
    """Each framework's best f32 GEMM rate, measured in a fresh process (spawned: it imports only
    that framework); the roofline is the larger of the two."""
    results = {}
    context = multiprocessing.get_context("spawn")
    for framework in ("jax", "torch"):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_measure_in_child, args=(sender, framework, quick), daemon=True)
        child.start()
        sender.close()
        try:
            results[framework] = (receiver.recv() if receiver.poll(GEMM_TIMEOUT_S)
                                  else {"error": f"timed out after {GEMM_TIMEOUT_S} s"})
        except EOFError:
            results[framework] = {"error": "the measuring process died"}
        child.kill()
        child.join()
        receiver.close()
    peaks = [r["peak_gflops"] for r in results.values() if "peak_gflops" in r]
    return {"by_framework": results, "peak_gflops": max(peaks) if peaks else None}


def busy_cpu_fraction(seconds: float = 3.0) -> float:
    """Fraction of the machine's CPU others use over `seconds` (load averages include the
    benchmark's own threads, so they cannot say whether the machine was idle)."""
    import psutil

    return psutil.cpu_percent(interval=seconds) / 100


def others_cpu_seconds(own: float = 0.0) -> float:
    """CPU seconds the whole machine has been busy since boot, less `own` and this process's:
    the difference of two readings around a trial whose worker used `own` CPU seconds is what other
    processes used meanwhile."""
    import psutil

    times = psutil.cpu_times()._asdict()
    # Linux counts guest time inside user and nice; steal (the hypervisor running others) is counted.
    busy = sum(times.get(field, 0.0) for field in ("user", "nice", "system", "irq", "softirq", "steal"))
    return busy - own - time.process_time()
