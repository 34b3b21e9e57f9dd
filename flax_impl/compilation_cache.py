"""JAX's persistent compilation cache, on by default for every Flax command and the parity suite.

XLA:CPU spends seconds compiling each model's training step (a 20-step smoke run is mostly
compilation); the cache, keyed by the program, the jax/XLA versions and the device, makes every later
run of the same program skip it. Where: `$CNN_PARITY_JAX_CACHE`, default the per-user cache folder's
`jax-compilation-cache`; "off" (or `--no-compile-cache` on the training command) turns it off.
On some CPUs jaxlib rejects its own cached CPU executables on reload and recompiles, which costs
nothing but the cache's benefit (jax-ml/jax#38445).
"""

from __future__ import annotations

import os

import jax

from cnn_parity.data import cache_dir

ENV = "CNN_PARITY_JAX_CACHE"


def folder() -> str | None:
    """The cache folder in effect, None when turned off."""
    path = os.environ.get(ENV, str(cache_dir() / "jax-compilation-cache"))
    return None if not path or path.lower() == "off" else path


def enable() -> str | None:
    """Use the cache from now on (before anything is compiled); returns its folder, or None if off."""
    path = folder()
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", path)
        # Every program, however quick to compile: a run's few dozen small ones add up to seconds.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
