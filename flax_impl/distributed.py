"""Data parallelism with `jax.sharding`: one `Mesh` with a "data" axis over the devices in use, the
global batch sharded along it, parameters, optimiser state and the data set replicated. The train
step is the single-device `train_step` under `jax.jit`; XLA's SPMD partitioner inserts the gradient
all-reduce. The global batch is the recipe's batch whatever the device count, and dropout keys are
split the same way (JAX's threefry RNG is partitionable), so N devices compute what one does, up to
the order of floating-point sums.

Multi-host: every host runs the same command with `--coordinator HOST:PORT --num-processes P
--process-id I` (jax.distributed.initialize); the mesh then spans every process's devices
(docs/multi-device.md).
"""

from __future__ import annotations

import os

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnn_parity.errors import UsageError

DATA_AXIS = "data"


def configure_cpu(threads: int | None, devices: int | None) -> None:
    """Before JAX starts its backends: XLA:CPU's intra-op threads (`threads`; None: one per core), and,
    for `devices` > 1 in one process, that many CPU devices (the cores split between them), unless
    XLA_FLAGS already sets a count. What a GPU run does is unchanged."""
    flags = os.environ.get("XLA_FLAGS", "")
    if threads is not None:
        os.environ["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                                   f"intra_op_parallelism_threads={threads}").strip()
    if devices is not None and devices > 1 and "xla_force_host_platform_device_count" not in flags:
        jax.config.update("jax_num_cpu_devices", devices)


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-process JAX run (before any other JAX call); nothing to do for one process."""
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not any(given):
        return
    if not all(given):
        raise UsageError("multi-host runs need all of --coordinator, --num-processes and --process-id")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh over `devices` devices in all (default: every device of every process), the first
    devices / P local ones of each of the P processes."""
    by_process: dict[int, list[jax.Device]] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    local = len(by_process[jax.process_index()])
    if devices is not None and devices % len(by_process):
        raise UsageError(f"--devices {devices} does not split evenly over {len(by_process)} processes")
    count = local if devices is None else devices // len(by_process)
    if count > local:
        raise UsageError(f"--devices {devices}: this process sees only {local} {jax.default_backend()} device(s)"
                         + (f" of the {count} it would need" if len(by_process) > 1 else ""))
    return Mesh(np.array([d for p in sorted(by_process) for d in by_process[p][:count]]), (DATA_AXIS,))


def any_process(flag: bool) -> bool:
    """Whether `flag` is true in any process of a multi-process run (every process calls this at the
    same point)."""
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def synchronous_dispatch(mesh: Mesh) -> bool:
    """Whether each multi-device program must finish before the next is dispatched. On XLA:CPU two
    in-flight data-parallel steps deadlock in the all-reduce rendezvous ("Expected 2 threads to
    join"), then abort; waiting for each one avoids it, at the cost of one host sync per dispatch (of
    flax_impl/train.py's STEPS_PER_DISPATCH steps). Reproduction, and the versions it was seen with:
    benchmarks/cpu_collective_hang.py (benchmarks/FINDINGS.md, section 13)."""
    return mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(mesh: Mesh, batch_size: int, what: str) -> None:
    if batch_size % mesh.size:
        raise UsageError(f"{what} {batch_size} does not split evenly over {mesh.size} devices")


def host_value(array: jax.Array) -> np.ndarray:
    """A replicated array's value on this host (works when other processes hold copies too)."""
    return np.asarray(array.addressable_data(0))


def host_tree(tree: Any) -> Any:
    return jax.tree.map(host_value, tree)
