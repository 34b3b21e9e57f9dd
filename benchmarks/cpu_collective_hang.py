"""Minimal reproduction: data-parallel steps over simulated CPU devices deadlock in XLA:CPU's
all-reduce rendezvous when several steps are in flight (JAX's asynchronous dispatch), on a machine
with as few cores as simulated devices; waiting for each step before dispatching the next avoids it.

`run(devices, steps, sync)` in a fresh process (it sets the device count before importing JAX):
with sync=False it hangs, then aborts (SIGABRT); with sync=True it completes
(tests/test_distributed.py runs that one in a spawned process).

Observed with jax/jaxlib 0.10.2 on a 2-core x86-64 VM: "This thread has been waiting for `all reduce
RendezvousKey{...}` for 20 seconds and may be stuck. Expected 2 threads to join the rendezvous", then
abort after 40 s. Imports only JAX and NumPy.
"""

from __future__ import annotations

import os
import time


def run(devices: int = 2, steps: int = 300, sync: bool = False) -> str:
    """`steps` data-parallel steps over `devices` simulated CPU devices, each waited for before the next
    is dispatched if `sync`; what happened, in one line. Call it in a process that has not imported JAX."""
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    # A 2-layer MLP on a batch sharded along "data": the gradient needs an all-reduce every step.
    params = jax.device_put({"w1": rng.standard_normal((576, 256), np.float32) * 0.05,
                             "w2": rng.standard_normal((256, 10), np.float32) * 0.05}, replicated)
    x = jax.device_put(rng.standard_normal((128, 576), np.float32), sharded)
    y = jax.device_put(rng.integers(0, 10, 128).astype(np.int32), sharded)

    @jax.jit
    def step(params, x, y):
        def loss(p):
            logits = jnp.maximum(x @ p["w1"], 0) @ p["w2"]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
        value, grads = jax.value_and_grad(loss)(params)
        return jax.tree.map(lambda a, g: a - 0.01 * g, params, grads), value

    tick = time.perf_counter()
    for _ in range(steps):
        params, value = step(params, x, y)
        if sync:
            jax.block_until_ready(value)
    return (f"{steps} steps on {devices} devices ({'sync' if sync else 'async'} dispatch): "
            f"loss {float(value):.4f}, {time.perf_counter() - tick:.1f} s")
