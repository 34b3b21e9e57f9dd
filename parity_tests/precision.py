"""Framework settings for parity runs: full float32, both frameworks on CPU, one torch thread.

Nothing is configured on import: `configure()` is called by conftest.py (pytest) and report.py.
"""

from __future__ import annotations

import os
import platform

import jax
import torch

from flax_impl import compilation_cache


def configure() -> None:
    """Full float32 in both frameworks (no TF32 / bf16 passes), both on CPU, single-threaded torch.

    Precision: on CPU, XLA and PyTorch already compute float32 dots and convolutions in float32;
    these settings matter on GPU, where JAX's default matmul precision and PyTorch's cuDNN
    convolutions use TF32 on Ampere and later (10-bit mantissa, ~1e-3 relative error), which would
    swamp every bound. See parity_tests/README.md.

    Threads: one intra-op thread for torch. Its OpenMP pool spins while waiting; next to XLA's own
    pool on a 2-core machine (plus any other load) that made a lenet step 30x slower (440 ms vs
    14 ms measured). One thread also makes torch's reductions run in one fixed order.

    Compilation cache: the Flax commands' persistent one (flax_impl/compilation_cache.py), so that
    repeated runs skip XLA's seconds of compilation per model.
    """
    jax.config.update("jax_default_matmul_precision", "highest")
    # Like with like: torch runs on CPU here, so JAX does too, even where it sees a GPU.
    jax.config.update("jax_default_device", jax.devices("cpu")[0])
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.set_num_threads(1)
    compilation_cache.enable()


def device_description() -> dict[str, str]:
    """Where and with which settings the measurements ran (the report's "Measured on" line)."""
    jax_device = jax.config.jax_default_device or jax.devices()[0]
    return {
        "jax": f"{jax_device.platform} ({jax_device.device_kind})",
        "torch": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "machine": platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "torch_tf32": str(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
    }
