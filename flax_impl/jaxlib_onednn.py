"""The oneDNN convolution that ships inside jaxlib, as a JAX primitive: `convolve(x, kernel, padding)`.

XLA:CPU runs a custom call to target `__onednn$convolution` with `xla::cpu::OneDnnOpThunk`, which calls
oneDNN's direct convolution (forward propagation) on the buffers as XLA lays them out. XLA's own
passes never emit that call in the PyPI build; the primitive here is lowered to it, so the
convolution runs with no C++ of this project's and no system package. What the call computes is
described by its backend config, a `BackendConfig` protocol buffer (field `onednn_conv_config`, XLA's
xla/service/cpu/onednn_config.proto) in JSON: which dimension of each operand is batch, feature and
spatial, and the window. That encoding is XLA's internal business and has changed between XLA
revisions (indices stored 1-based and paddings and dilations offset by one in some, raw in others);
a config a revision does not read as meant makes oneDNN throw inside XLA, which ends the process.

Hence the self-test (`status`): before a process first uses the primitive, a child process compiles
it for convolutions shaped like those the models run and compares each with `lax.conv` in float32; a
failed lowering, a crash or a wrong value there makes `status` say why, and the trainer fall back to
the pure-JAX convolutions (flax_impl/train.py, resolve_conv_impl) with one line on stderr. The test
runs once per process and costs about a second; nothing is cached between processes (nor can the
programs holding the call be: XLA:CPU does not serialize them for JAX's persistent compilation cache).

Only the forward convolution is reached this way (oneDNN's backward primitives are not): the
gradients are forward convolutions too (flax_impl/convolutions.py). float32 only; stride 1, no
dilation, one group, the same zero padding on every side; NHWC input, HWIO kernel, NHWC output. No
batching rule: the models never vmap a convolution (jax.vmap over one says so).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo
from jax.interpreters import mlir

TARGET = "__onednn$convolution"

# XLA:CPU (jaxlib 0.10.2) cannot serialize a program holding this call (std::bad_alloc), so JAX's
# persistent compilation cache keeps none of them: such a program compiles in every process. JAX says
# so in a warning at each compilation; known, it says nothing more.
warnings.filterwarnings("ignore", message=r"Error writing persistent compilation cache entry for '[^']*': "
                                          r"MemoryError: std::bad_alloc", category=UserWarning)

# max |Δ| / max |lax.conv| above which the self-test fails: float32 rounding of differently ordered sums
# measures ≤ 2e-7 on every case below (jaxlib 0.10.2); a misread layout or window is O(1).
SELF_TEST_REL = 1e-5
# (batch, input side, input channels, output channels, kernel, padding): the kinds of convolution the
# tiers ask for (flax_impl/convolutions.py): a 1-channel first layer, a padded one, the input gradient
# of a 6-channel layer (16 → 6, padded by kernel - 1), and a weight gradient (the batch as channels,
# a kernel as large as the output's side).
SELF_TEST_CASES = ((4, 12, 1, 6, 5, 0), (3, 9, 6, 16, 5, 0), (2, 7, 32, 64, 3, 1), (3, 8, 16, 6, 5, 4),
                   (6, 12, 5, 16, 8, 0))
SELF_TEST_TIMEOUT_S = 300
SELF_TEST_CODE = "from flax_impl.jaxlib_onednn import _self_test; _self_test()"  # what the child runs


def backend_config(padding: int, kernel_size: tuple[int, int]) -> str:
    """The custom call's `BackendConfig` (JSON) for an NHWC × HWIO → NHWC convolution, stride 1,
    undilated, `padding` zeros on every side. Dimension indices, paddings and dilations are written
    raw, as the XLA revision in jaxlib 0.10.2 reads them (its own rewriter writes them so)."""
    spatial = {"batch_dim": 0, "feature_dim": 3, "spatial_dims": [1, 2]}
    return json.dumps({"onednn_conv_config": {
        "dims": 4, "feature_groups": 1,
        "input": {"dims": 4, "data": spatial},
        "kernel": {"dims": 4, "filter": {"input_feature_dim": 2, "output_feature_dim": 3, "spatial_dims": [0, 1]}},
        "output": {"dims": 4, "data": spatial},
        "window": {"size": list(kernel_size), "pad_left": [padding] * 2, "pad_right": [padding] * 2,
                   "strides": [1, 1], "window_dilations": [1, 1]}}})


_convolution = Primitive("onednn_convolution")


@_convolution.def_abstract_eval
def _shape(x, kernel, *, padding):
    n, h, w, _ = x.shape
    kh, kw, _, out = kernel.shape
    return jax.core.ShapedArray((n, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1, out), x.dtype)


def _lowering(ctx, x, kernel, *, padding):
    (result,) = ctx.avals_out
    row_major = ir.DenseIntElementsAttr.get(np.array([3, 2, 1, 0], np.int64), type=ir.IndexType.get())
    call = stablehlo.CustomCallOp(
        [mlir.aval_to_ir_type(ctx.module_context, result)], [x, kernel], call_target_name=TARGET,
        has_side_effect=False, backend_config=ir.StringAttr.get(backend_config(padding, ctx.avals_in[1].shape[:2])),
        api_version=ir.IntegerAttr.get(ir.IntegerType.get_signless(32), 1),  # the original (legacy) API
        called_computations=ir.ArrayAttr.get([]), operand_layouts=ir.ArrayAttr.get([row_major, row_major]),
        result_layouts=ir.ArrayAttr.get([row_major]))
    return call.results


mlir.register_lowering(_convolution, _lowering, platform="cpu")


@functools.lru_cache(maxsize=None)
def _compiled(padding: int):
    return jax.jit(lambda x, kernel: _convolution.bind(x, kernel, padding=padding))


@_convolution.def_impl
def _eager(x, kernel, *, padding):  # outside jax.jit: compiled on its own, as JAX runs any primitive
    return _compiled(padding)(x, kernel)


def convolve(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """Stride-1 convolution of float32 `x` (NHWC) with `kernel` (HWIO), `padding` zeros on every side,
    through jaxlib's oneDNN (no gradient of its own: flax_impl/convolutions.py gives it one)."""
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise TypeError(f"jaxlib's oneDNN convolution computes float32, not {x.dtype} × {kernel.dtype}")
    return _convolution.bind(x, kernel, padding=int(padding))


def _self_test() -> None:
    """The child's side of `status`: one line of JSON on stdout, the worst relative difference from
    lax.conv over SELF_TEST_CASES (a crash or a lowering error reaches the parent as such)."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for batch, side, cin, cout, size, padding in SELF_TEST_CASES:
        x = jnp.asarray(rng.standard_normal((batch, side, side, cin), np.float32))
        kernel = jnp.asarray(rng.standard_normal((size, size, cin, cout), np.float32))
        got = jax.jit(convolve, static_argnums=2)(x, kernel, padding)
        want = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(padding, padding)] * 2, precision="highest",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        worst = max(worst, float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))))
    print(json.dumps({"worst_relative_difference": worst}), flush=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


@functools.lru_cache(maxsize=None)
def status() -> tuple[bool, str]:
    """(True, what the self-test measured) if jaxlib's oneDNN convolution lowers, runs and matches
    `lax.conv` here; else (False, why not). Decided once per process, in a child process, on the CPU."""
    if jax.default_backend() != "cpu":
        return False, f"it runs on the CPU only; JAX's backend here is {jax.default_backend()}"
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    command = [sys.executable, "-c", SELF_TEST_CODE]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=SELF_TEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"its self-test did not finish in {SELF_TEST_TIMEOUT_S} s"
    except OSError as e:
        return False, f"its self-test could not start ({e.strerror})"
    if done.returncode != 0:
        return False, f"its self-test failed (exit status {done.returncode}: {_last_line(done.stderr)})"
    try:
        worst = float(json.loads(_last_line(done.stdout))["worst_relative_difference"])
    except (ValueError, KeyError, TypeError):
        return False, f"its self-test said nothing readable ({_last_line(done.stdout) or 'no output'})"
    if not worst <= SELF_TEST_REL:
        return False, f"its self-test found it computing something else than lax.conv (relative difference {worst:.2g})"
    return True, f"self-test passed (worst relative difference from lax.conv {worst:.1e})"
