"""The machine's peak f32 GEMM rate, measured through JAX or through PyTorch (`measure`, which
benchmarks/machine.py runs in a process of its own for each): the best GFLOP/s over square sizes, each
the best of several timed repetitions. The roofline used by the report is the larger of the two: the
fastest f32 matrix multiply this machine demonstrably runs.
"""

from __future__ import annotations

import time


def _best(fn, flops, reps):
    fn()  # warm-up / compile
    best = float("inf")
    for _ in range(reps):
        tick = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - tick)
    return flops / best / 1e9


def measure(framework: str, quick: bool = False) -> dict:
    sizes = (1024, 2048) if quick else (512, 1024, 2048, 3072)
    reps = 3 if quick else 7
    results = {}
    for n in sizes:
        flops = 2 * n**3
        if framework == "jax":
            import jax
            import jax.numpy as jnp
            a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
            b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
            f = jax.jit(lambda x, y: x @ y)
            results[n] = _best(lambda: f(a, b).block_until_ready(), flops, reps)
            device = str(jax.devices()[0].platform)
        else:
            import torch
            dev = "cuda" if torch.cuda.is_available() else "cpu"
            a = torch.randn(n, n, device=dev)
            b = torch.randn(n, n, device=dev)
            sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

            def run():
                a @ b
                sync()
            results[n] = _best(run, flops, reps)
            device = dev
    return {"framework": framework, "device": device, "gflops_by_size": results,
            "peak_gflops": max(results.values())}
