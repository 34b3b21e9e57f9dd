"""Convolutions through oneDNN, the CPU library PyTorch's own convolutions run on, as XLA FFI calls:
the opt-in `--conv-impl onednn` (flax_impl/kernels.py). The default never loads it.

`conv(x, kernel, padding)` computes what `kernels.gemm_conv` computes (stride 1, NHWC / HWIO, float32,
zero padding on every side) with oneDNN's direct convolutions for the forward pass and both
gradients (flax_impl/onednn_conv.cc, shipped inside the package).

Install (once per oneDNN and jaxlib version), then train with `--conv-impl onednn`:

    apt-get install libdnnl-dev g++          # Debian/Ubuntu: oneDNN 2.x headers + library, a compiler
    python -m flax_impl.onednn_conv build    # compiles the extension into the per-user cache

Why Debian's libdnnl-dev and not a PyPI wheel: docs/onednn.md. The build goes to
`$XDG_CACHE_HOME/cnn_parity/onednn-conv/<oneDNN version>-<hash>/`, keyed by the source, the jaxlib
version, the oneDNN runtime's version and the compiler command, so an upgrade of any of them needs a
fresh build (and says so), never loads a stale one. One build at a time (a lock in that folder); a
failed build is recorded there and reported by every later load, with the fix, until the build
command succeeds. Nothing is loaded from a folder or file another user could have written, judged on
the real path with every link resolved (cnn_parity.files.unsafe_to_load), nor a library whose SHA-256
differs from the one its build recorded: a truncated or replaced file is refused, with the command
that rebuilds it. The library is loaded from the very bytes that were hashed (copied into an
anonymous in-memory file), so a file swapped on disk after the check is never what runs.

Threads: oneDNN runs each call on its own OpenMP team (OMP_NUM_THREADS, else one thread per core),
inside the XLA:CPU thread that runs the FFI call and waits for it; XLA's intra-op pool has as many
threads. A training step's convolutions run one after another, so the two pools take turns; only
programs run concurrently from several Python threads could oversubscribe the cores (not measured
yet). Cap oneDNN with OMP_NUM_THREADS if that matters.

Under `jax.vmap` each FFI call runs once per batch element (vmap_method="sequential"); the
models never vmap a convolution, so nothing faster is needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import hashlib
import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from cnn_parity.data import cache_dir
from cnn_parity.errors import CnnParityError
from cnn_parity.files import make_private_folder, unsafe_to_load, write_bytes_atomic

SOURCE_NAME = "onednn_conv.cc"
LIBRARY_NAME = "libonednn_conv.so"
MANIFEST_NAME = "build.json"  # written last: the build's SHA-256; no manifest, no build
FAILED_NAME = "build-failed.txt"
BUILD_COMMAND = "python -m flax_impl.onednn_conv build"
INSTALL_HINT = "apt-get install libdnnl-dev g++"
# FFI target name -> the handler symbol onednn_conv.cc exports.
TARGETS = {"onednn_conv_forward": "OnednnConvForward", "onednn_conv_backward_data": "OnednnConvBackwardData",
           "onednn_conv_backward_weights": "OnednnConvBackwardWeights"}


class Unavailable(CnnParityError):
    """The extension cannot be built or loaded here; the message says why and what fixes it."""


def source() -> bytes:
    """onednn_conv.cc as installed with the package (package data, so a wheel install can build it)."""
    return importlib.resources.files("flax_impl").joinpath(SOURCE_NAME).read_bytes()


class _Version(ctypes.Structure):  # dnnl_version_t
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


@functools.lru_cache(maxsize=None)
def onednn_version() -> str | None:
    """The version of the oneDNN runtime library the dynamic linker finds (what the extension links),
    e.g. "2.6.3"; None if there is none."""
    name = ctypes.util.find_library("dnnl")
    if name is None:
        return None
    function = ctypes.CDLL(name).dnnl_version
    function.restype = ctypes.POINTER(_Version)
    v = function().contents
    return f"{v.major}.{v.minor}.{v.patch}"


def compile_command(source_path: Path, output: Path) -> list[str]:
    return ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", f"-I{jax.ffi.include_dir()}",
            str(source_path), "-o", str(output), "-ldnnl"]


def build_folder(version: str) -> Path:
    """Where the build for oneDNN `version`, this source, jaxlib and compiler command lives."""
    key = hashlib.sha256(source())
    for part in (jaxlib.__version__, version, " ".join(compile_command(Path("SOURCE"), Path("OUTPUT")))):
        key.update(b"\0" + part.encode())
    return Path(os.path.realpath(cache_dir() / "onednn-conv" / f"{version}-{key.hexdigest()[:16]}"))


def _require_version() -> str:
    version = onednn_version()
    if version is None:
        raise Unavailable(f"no oneDNN library (libdnnl) found; fix: `{INSTALL_HINT}`, then `{BUILD_COMMAND}`")
    return version


def _check_private(path: Path) -> None:
    try:
        reason = unsafe_to_load(path)
    except OSError as e:
        raise Unavailable(f"cannot check {path} ({e.strerror}); rebuild: `{BUILD_COMMAND}`") from None
    if reason:
        raise Unavailable(f"refusing to build or load the oneDNN extension: {reason}")


@contextlib.contextmanager
def _build_lock(folder: Path):
    """Held while one process builds into `folder`; the others wait, then find its build."""
    with open(os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _recorded_build(folder: Path) -> tuple[str, bytes] | None:
    """(SHA-256, bytes) of the library in `folder` if it is the one its build recorded, else None."""
    try:
        recorded = json.loads((folder / MANIFEST_NAME).read_text())["sha256"]
        data = (folder / LIBRARY_NAME).read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (recorded, data) if hashlib.sha256(data).hexdigest() == recorded else None


# The in-memory files libraries were loaded from, kept open: dlopen knows a library by its path, and a
# closed descriptor's number (so its /proc/self/fd path) would be reused for the next one, which dlopen
# would then take for the library already loaded.
_LOADED_FROM: list[int] = []
# The SHA-256 of the library whose handlers this process registered: XLA keeps the first registration
# of a target for the process's life and refuses another library's.
_REGISTERED: list[str] = []


def _open_bytes(data: bytes) -> ctypes.CDLL:
    """A shared library loaded from exactly `data` (an anonymous in-memory file): the bytes that were
    hashed are the bytes that run, whatever happens to the file on disk meanwhile."""
    fd = os.memfd_create(LIBRARY_NAME, os.MFD_CLOEXEC)
    _LOADED_FROM.append(fd)
    os.write(fd, data)
    return ctypes.CDLL(f"/proc/self/fd/{fd}")


def build(report=print) -> Path:
    """Compile the extension for the installed oneDNN into its cache folder (made private to this
    user), record the library's SHA-256, and return the library's path; `report` gets one line
    saying what is run. A build already there and intact is kept (a process that waited on the lock
    finds the one it waited for). Unavailable (recorded for later loads) if the compiler fails."""
    version = _require_version()
    folder = build_folder(version)
    try:
        _, reason = make_private_folder(folder)
    except OSError as e:
        raise Unavailable(f"cannot make {folder} ({e.strerror})") from None
    if reason:
        raise Unavailable(f"refusing to build or load the oneDNN extension: {reason}")
    library, partial = folder / LIBRARY_NAME, folder / f".{LIBRARY_NAME}.{os.getpid()}.tmp"
    with _build_lock(folder):
        if found := _recorded_build(folder):
            report(f"already built: {library} (oneDNN {version}, sha256 {found[0][:16]}…)")
            return library
        source_path = folder / SOURCE_NAME
        write_bytes_atomic(source_path, source())
        command = compile_command(source_path, partial)
        report(f"compiling the oneDNN convolution extension against oneDNN {version}: {' '.join(command)}")
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except OSError as e:  # no g++
            done = subprocess.CompletedProcess(command, 127, "", f"error: cannot run {command[0]}: {e.strerror}")
        try:
            if done.returncode != 0:
                errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
                why = errors[0].strip() if errors else f"g++ exited with {done.returncode}"
                write_bytes_atomic(folder / FAILED_NAME, why.encode())
                raise Unavailable(f"the build failed ({why}); fix: `{INSTALL_HINT}`, then `{BUILD_COMMAND}`")
            digest = hashlib.sha256(partial.read_bytes()).hexdigest()
            os.replace(partial, library)
        finally:
            partial.unlink(missing_ok=True)
        manifest = {"sha256": digest, "onednn": version, "jaxlib": jaxlib.__version__, "command": command}
        write_bytes_atomic(folder / MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
        (folder / FAILED_NAME).unlink(missing_ok=True)
    _load.cache_clear()  # a load that failed before this build may succeed now
    report(f"built {library} (sha256 {digest[:16]}…)")
    return library


@functools.lru_cache(maxsize=None)
def _load() -> tuple[Path | None, str]:
    """(the library's path, "") once loaded and its FFI targets registered; else (None, why not):
    a process reports a failure once, and does not retry."""
    try:
        return _load_verified(), ""
    except Unavailable as e:
        return None, str(e)


def _load_verified() -> Path:
    version = _require_version()
    folder = build_folder(version)
    library, manifest = folder / LIBRARY_NAME, folder / MANIFEST_NAME
    if folder.is_dir():  # before reading anything in it
        _check_private(folder)
    if not manifest.is_file():
        if (folder / FAILED_NAME).is_file():
            why = (folder / FAILED_NAME).read_text().strip()
            raise Unavailable(f"its build failed ({why}); fix: `{INSTALL_HINT}`, then `{BUILD_COMMAND}`")
        raise Unavailable(f"not built for oneDNN {version} and jaxlib {jaxlib.__version__}; build it: `{BUILD_COMMAND}`")
    for path in (manifest, library):
        _check_private(path)
    found = _recorded_build(folder)
    if found is None:
        raise Unavailable(f"{library} is not the library its build recorded (SHA-256 differs, or either is "
                          f"unreadable: truncated or replaced); rebuild: `{BUILD_COMMAND}`")
    if _REGISTERED == [found[0]]:
        return library
    try:
        handle = _open_bytes(found[1])
        symbols = {target: getattr(handle, symbol) for target, symbol in TARGETS.items()}
    except (OSError, AttributeError) as e:
        raise Unavailable(f"cannot load {library} ({e}); rebuild: `{BUILD_COMMAND}`") from None
    if _REGISTERED:
        raise Unavailable(f"{library} is not the build this process loaded before (its handlers stay "
                          "registered until the process ends): start a new process")
    for target, symbol in symbols.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
    _REGISTERED.append(found[0])
    return library


def load() -> Path:
    """Load the built extension (never builds) and register its FFI targets, once per process;
    Unavailable, with the fix, where it is not built or not safe to load."""
    library, why = _load()
    if library is None:
        raise Unavailable(why)
    return library


def status() -> tuple[bool, str]:
    """(True, the library's path) if `load` succeeds; else (False, why not)."""
    library, why = _load()
    return (True, str(library)) if library is not None else (False, why)


def _call(target: str, result_shape: tuple[int, ...], *operands: jax.Array, padding: int) -> jax.Array:
    load()
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


def main(argv=None) -> int:
    from cnn_parity.commands import OneLineParser, report_errors

    parser = OneLineParser(prog="python -m flax_impl.onednn_conv",
                           description="The opt-in oneDNN convolutions (--conv-impl onednn) of the Flax trainer.")
    parser.add_argument("action", choices=("build", "check"),
                        help=f"build: compile {SOURCE_NAME} with g++ against the installed oneDNN "
                             f"(`{INSTALL_HINT}`) into the per-user cache and record its SHA-256; "
                             "check: load the build and say where it is (exit 1 if it cannot be)")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.action == "build":
            build()
        print(f"oneDNN convolutions: {load()} (oneDNN {onednn_version()})")
        return 0

    return report_errors(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
