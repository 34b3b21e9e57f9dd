"""JAX's persistent compilation cache, on by default for every Flax command and the parity suite.

XLA:CPU spends seconds compiling each model's training step (a 20-step smoke run is mostly
compilation); the cache, keyed by the program, the jax/XLA versions and the device, makes every later
run of the same program skip it. Where: `$CNN_PARITY_JAX_CACHE`, default the per-user cache folder's
`jax-compilation-cache`; "off" (or `--no-compile-cache` on the training command) turns it off.
On some CPUs jaxlib rejects its own cached CPU executables on reload and recompiles, which costs
nothing but the cache's benefit (jax-ml/jax#38445).

The cache holds compiled machine code that JAX runs: it is turned off, with one line on stderr, when
its folder (made private to the user if new) is not owned by the user, is writable by others, or
sits below a folder another user could replace it from, all judged on its real path, links resolved
(cnn_parity.files.unsafe_to_load); JAX is given that real path, what was checked.
"""

from __future__ import annotations

import os
import sys

import jax

from cnn_parity.data import cache_dir
from cnn_parity.files import make_private_folder

ENV = "CNN_PARITY_JAX_CACHE"


def folder() -> str | None:
    """The cache folder in effect, None when turned off."""
    path = os.environ.get(ENV, str(cache_dir() / "jax-compilation-cache"))
    return None if not path or path.lower() == "off" else path


def enable() -> str | None:
    """Use the cache from now on (before anything is compiled); returns its folder, or None if off
    (asked for, or refused as unsafe: said in one line on stderr)."""
    path = folder()
    if path is not None:
        try:
            real, reason = make_private_folder(path)
            path = str(real)  # resolved once: what is checked is what JAX is given
        except OSError as e:
            reason = f"cannot create {path} ({e.strerror})"
        if reason:
            print(f"JAX compilation cache off: {reason}", file=sys.stderr)
            return None
        jax.config.update("jax_compilation_cache_dir", path)
        # Every program, however quick to compile: a run's few dozen small ones add up to seconds.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
