"""Convolutions through oneDNN, the CPU library PyTorch's own convolutions run on, as XLA FFI calls
(conv_impl="onednn" in flax_impl/models.py).

`conv(x, kernel, padding)` computes what `models.gemm_conv` computes (stride 1, NHWC / HWIO, float32,
zero padding on every side) with oneDNN's direct convolutions for the forward pass and both
gradients (flax_impl/onednn_conv.cc). The extension is compiled on first use with g++ against the
system's oneDNN (Debian: `apt-get install libdnnl-dev g++`) into the per-user cache folder,
`$XDG_CACHE_HOME/cnn_parity/onednn-conv/<hash>/`, keyed by the source, the jaxlib version and the
compiler command, so that a changed source or jaxlib gets a fresh build.

Under `jax.vmap` each FFI call runs once per batch element (vmap_method="sequential"); the
models never vmap a convolution, so nothing faster is needed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from cnn_parity.data import cache_dir
from cnn_parity.errors import UsageError

SOURCE = Path(__file__).with_name("onednn_conv.cc")
LIBRARY_NAME = "libonednn_conv.so"
INSTALL_HINT = "apt-get install libdnnl-dev g++"
# FFI target name -> the handler symbol onednn_conv.cc exports.
TARGETS = {"onednn_conv_forward": "OnednnConvForward", "onednn_conv_backward_data": "OnednnConvBackwardData",
           "onednn_conv_backward_weights": "OnednnConvBackwardWeights"}


def compile_command(source: Path, output: Path) -> list[str]:
    return ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", f"-I{jax.ffi.include_dir()}",
            str(source), "-o", str(output), "-ldnnl"]


def library_path() -> Path:
    """Where the build of the current source, jaxlib and compiler command lives."""
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(jaxlib.__version__.encode())
    key.update(" ".join(compile_command(Path("SOURCE"), Path("OUTPUT"))).encode())
    return cache_dir() / "onednn-conv" / key.hexdigest()[:16] / LIBRARY_NAME


def build(output: Path) -> None:
    """Compile the extension into `output`: into a temporary name first, then renamed, so that a
    concurrent process loads the old file or the whole new one. OSError (no g++) or RuntimeError
    (the compiler's first error line) on failure."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        done = subprocess.run(compile_command(SOURCE, partial), capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
            raise RuntimeError(errors[0].strip() if errors else f"g++ exited with {done.returncode}")
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


@functools.lru_cache(maxsize=None)
def available() -> tuple[bool, str]:
    """(True, the library's path) once the extension is built, loaded and its FFI targets registered
    in this process; else (False, why not). Builds on the first call that finds no build."""
    path = library_path()
    try:
        if not path.is_file():
            build(path)
        library = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as e:
        return False, f"cannot build or load {path.name} ({e})"
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return True, str(path)


def require() -> None:
    """UsageError unless the extension is available (selecting conv_impl="onednn")."""
    ok, reason = available()
    if not ok:
        raise UsageError(f"conv_impl onednn needs oneDNN and g++ (`{INSTALL_HINT}`): {reason}")


def _call(target: str, result_shape: tuple[int, ...], *operands: jax.Array, padding: int) -> jax.Array:
    require()
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(result_shape, jnp.float32), vmap_method="sequential")(
        *operands, padding=np.int64(padding))


def _forward(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    n, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    return _call("onednn_conv_forward", (n, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1, cout), x, kernel,
                 padding=padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """Stride-1 2-D convolution of float32 `x` (NHWC) with `kernel` (HWIO), zero-padded by `padding`
    on every side, no bias; both gradients are oneDNN's backward-data and backward-weights primitives."""
    return _forward(x, kernel, padding)


def _conv_forward(x, kernel, padding):
    return _forward(x, kernel, padding), (x, kernel)


def _conv_backward(padding, residuals, dy):
    x, kernel = residuals
    dx = _call("onednn_conv_backward_data", x.shape, dy, kernel, padding=padding)
    dkernel = _call("onednn_conv_backward_weights", kernel.shape, x, dy, padding=padding)
    return dx, dkernel


conv.defvjp(_conv_forward, _conv_backward)
