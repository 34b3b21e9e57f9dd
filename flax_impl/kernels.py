"""How the models convolve and max-pool: the `Kernels` a model is built with (flax_impl/models.py,
models_nnx.py), one per convolution tier, named by the `conv_impl` a run records. Every tier computes
the same function with the same parameters (the parity suite holds each to the same bounds against
PyTorch); what differs is the kernels that run:
  "xla"           `lax.conv_general_dilated` and `nn.max_pool` (reduce_window): stock Flax, XLA's own
                  convolutions (cuDNN / the accelerator's kernels); the default off the CPU.
  "gemm"          pure JAX: im2col + one matrix product per convolution, differentiated by autodiff.
  "canonical"     pure JAX: XLA:CPU's convolution kernel for the forward pass and both gradients, each
                  gradient written as a canonical forward convolution (a custom VJP, which keeps them on
                  that kernel inside the trainer's compiled loop), YNNPACK's convolutions turned off for
                  the program; some layers use im2col where that measured faster (CANONICAL_LAYERS).
  "jaxlib-onednn" jaxlib's own oneDNN convolution (flax_impl/jaxlib_onednn.py, a custom call XLA:CPU
                  runs, no code of ours compiled) for the forward pass and the input gradient, each
                  layer's weight gradient as measured fastest (JAXLIB_ONEDNN_LAYERS); the CPU default
                  wherever its start-up self-test passes (flax_impl/train.py, resolve_conv_impl).
  "onednn"        opt-in: every convolution and both gradients through oneDNN's own forward and
                  backward primitives, via the native extension built by `python -m flax_impl.onednn_conv
                  build` (flax_impl/onednn_conv.py; Debian's libdnnl). CPU only.
  "none"          what a model without convolutions (mlp) records: it neither convolves nor pools.
Every tier but "xla" pools as a reshape + max with its own VJP (`max_pool_2x2`). A tier's
`compiler_options` are passed to every program that runs its model (training and evaluation;
flax_impl/train.py), never to others, and the user's XLA_FLAGS are left alone.
Which tier a run uses is chosen once, where the trainer is built (flax_impl/train.py, resolve_conv_impl).
Measurements behind every choice here: benchmarks/FINDINGS.md, section 14.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_parity.weights import CONV_GEOMETRY, LAYERS
from flax_impl import onednn_conv
from flax_impl.convolutions import Formulation, formulation, gemm_convolve

# The option that turns YNNPACK's convolutions off: XLA:CPU (jaxlib 0.10.2) hands every convolution to
# YNNPACK by default, 4-10x slower than its own kernel for these layers. Set per program (jax.jit's
# compiler_options), it replaces XLA's default list of YNNPACK fusions, which in this jaxlib is
# individual dots, reductions and individual convolutions: the first two are kept.
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
NO_YNN_CONVOLUTIONS = ((YNN_FUSION_OPTION, "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"),)


@dataclasses.dataclass(frozen=True)
class Kernels:
    """A convolution tier: `name` (the conv_impl a run records), `convolve(x, kernel, padding)` for a
    stride-1 NHWC × HWIO convolution (None: nn.Conv's own `lax.conv_general_dilated`), `pool` a 2x2
    max-pool with stride 2, and the XLA options every program running it is compiled with."""

    name: str
    convolve: Callable[[jax.Array, jax.Array, int], jax.Array] | None
    pool: Callable[[jax.Array], jax.Array]
    compiler_options: tuple[tuple[str, str], ...] = ()

    @functools.cached_property
    def conv_general_dilated(self) -> Callable | None:
        """`lax.conv_general_dilated` as nn.Conv / nnx.Conv call it, computed by `convolve`."""
        return None if self.convolve is None else _conv_general_dilated(self.convolve, self.name)

    def conv_keywords(self) -> dict[str, Any]:
        """The conv_general_dilated keyword of nn.Conv / nnx.Conv ({}: XLA's own)."""
        return {} if self.convolve is None else {"conv_general_dilated": self.conv_general_dilated}

    def jit_options(self) -> dict[str, str] | None:
        """compiler_options for jax.jit: this tier's, less any this jaxlib rejects (said once)."""
        return supported_options(self.compiler_options) or None

    def __repr__(self) -> str:
        return f"Kernels({self.name!r})"


def _conv_general_dilated(convolve, name: str):
    """`lax.conv_general_dilated` as nn.Conv calls it, computed by `convolve(x, kernel, padding)`, for
    the stride-1, undilated, symmetrically padded NHWC/HWIO convolutions these models have (anything
    else is a programming error)."""

    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1, precision=None, **unused):
        (top, bottom), (left, right) = padding
        if (tuple(window_strides) != (1, 1) or feature_group_count != 1 or not top == bottom == left == right
                or any(d not in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))):
            raise NotImplementedError(f"conv_impl {name}: only stride 1, no dilation, equal padding")
        return convolve(lhs, rhs, top)

    return conv_general_dilated


@functools.lru_cache(maxsize=None)
def supported_options(options: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """`options`, each checked once per process by compiling a small convolution with it on JAX's
    default backend; one this jaxlib rejects (a renamed flag or value) is dropped with one line."""
    kept = {}
    x = jax.ShapeDtypeStruct((1, 4, 4, 1), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, 1, 1), jnp.float32)
    probe = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=(
        "NHWC", "HWIO", "NHWC"))).lower(x, k)
    for key, value in options:
        try:
            probe.compile(compiler_options={key: value})
        except Exception as e:  # XLA's error types are not part of JAX's API
            print(f"XLA option {key}={value} not used: this jaxlib rejects it ({str(e).splitlines()[0][:200]})",
                  file=sys.stderr)
            continue
        kept[key] = value
    return kept


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """nn.max_pool(x, (2, 2), strides=(2, 2)) on NHWC with even H and W, as a reshape and a max."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool_fwd(x):
    return max_pool_2x2(x), x


def _max_pool_bwd(x, g):
    # The whole gradient goes to the first maximum of each window in row-major order, as XLA's
    # select_and_scatter and PyTorch's max_pool2d backward route it (ties included); jnp.max's own
    # gradient would split it between tied maxima.
    n, h, w, c = x.shape
    windows = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
    first = jax.nn.one_hot(jnp.argmax(windows, axis=-1), 4, dtype=x.dtype)
    dx = (first * g[..., None]).reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return (dx.reshape(n, h, w, c),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def flax_max_pool(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


Geometry = tuple[int, int, int, int, int]  # (input channels, output channels, kernel, padding, input side)


def geometry(model: str, layer: str) -> Geometry:
    """The shape of `model`'s convolution `layer`, as a per-layer table is keyed."""
    cin, cout, size = next((cin, cout, size) for name, cin, cout, size in LAYERS[model] if name == layer)
    side, padding, _ = CONV_GEOMETRY[model][layer]
    return cin, cout, size, padding, side


@dataclasses.dataclass(frozen=True, eq=False)
class PerLayer:
    """A convolution that computes each layer as `layers` says (keyed by (model, layer), matched on
    the layer's shape), any other as `default`."""

    default: Formulation
    layers: dict[tuple[str, str], Formulation]

    def parts(self, shape: Geometry) -> Formulation:
        """How a layer of this shape is computed."""
        return {geometry(model, layer): parts for (model, layer), parts in self.layers.items()}.get(shape, self.default)

    def __call__(self, x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
        kh, _, cin, cout = kernel.shape
        return formulation(self.parts((cin, cout, kh, padding, x.shape[1])))(x, kernel, padding)


# Per layer, the fastest of each part, measured with one thread per framework: each part alone at the
# recipe's batch size, then the whole chunked step of each model with the candidates interleaved
# (benchmarks/FINDINGS.md, section 14). A layer not listed (and any other model's) takes the default.
# canonical: im2col forward for the 1-channel first layers and the small second layers of lenet and
# fashion_cnn (XLA's kernel is slowest on few channels); XLA's kernel for everything else.
CANONICAL_DEFAULT = Formulation("xla", "xla", "xla")
_IM2COL_FORWARD = Formulation("gemm", "xla", "xla")
CANONICAL_LAYERS: dict[tuple[str, str], Formulation] = {
    ("lenet", "conv1"): _IM2COL_FORWARD, ("lenet", "conv2"): _IM2COL_FORWARD,
    ("fashion_cnn", "conv1"): _IM2COL_FORWARD, ("fashion_cnn", "conv2"): _IM2COL_FORWARD,
    ("cnn_base", "conv1"): _IM2COL_FORWARD, ("cnn_2layer", "conv1"): _IM2COL_FORWARD,
}
# jaxlib-onednn: oneDNN's forward and input gradient everywhere (a oneDNN forward with a
# one-channel input beat the direct shift-and-add inside the step: XLA fuses the shift-and-add into
# the max-pool's gradient and computes it again there); the weight gradient through XLA's kernel,
# except where oneDNN's (lenet.conv2, cnn_base.conv3) or im2col's (cnn_2layer.conv1) measured faster.
JAXLIB_ONEDNN_DEFAULT = Formulation("onednn", "onednn", "xla")
JAXLIB_ONEDNN_LAYERS: dict[tuple[str, str], Formulation] = {
    ("lenet", "conv2"): Formulation("onednn", "onednn", "onednn"),
    ("cnn_base", "conv3"): Formulation("onednn", "onednn", "onednn"),
    ("cnn_2layer", "conv1"): Formulation("onednn", "onednn", "gemm"),
}


def _extension_or_gemm(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """oneDNN's convolution in float32, the only dtype the extension computes; im2col in any other
    (the parity suite's float64 trajectory)."""
    if x.dtype == kernel.dtype == jnp.float32:
        return onednn_conv.conv(x, kernel, padding)
    return gemm_convolve(x, kernel, padding)


XLA = Kernels("xla", None, flax_max_pool)
GEMM = Kernels("gemm", gemm_convolve, max_pool_2x2, NO_YNN_CONVOLUTIONS)
CANONICAL = Kernels("canonical", PerLayer(CANONICAL_DEFAULT, CANONICAL_LAYERS), max_pool_2x2, NO_YNN_CONVOLUTIONS)
JAXLIB_ONEDNN = Kernels("jaxlib-onednn", PerLayer(JAXLIB_ONEDNN_DEFAULT, JAXLIB_ONEDNN_LAYERS), max_pool_2x2,
                        NO_YNN_CONVOLUTIONS)
ONEDNN = Kernels("onednn", _extension_or_gemm, max_pool_2x2, NO_YNN_CONVOLUTIONS)
NONE = Kernels("none", None, flax_max_pool)

TIERS = {k.name: k for k in (XLA, GEMM, CANONICAL, JAXLIB_ONEDNN, ONEDNN)}
CONV_IMPLS = tuple(TIERS)  # the tiers a model with convolutions can be built with


def of(conv_impl: str) -> Kernels:
    """The tier named `conv_impl` (one of CONV_IMPLS, or "none")."""
    if conv_impl == "none":
        return NONE
    if conv_impl not in TIERS:
        raise ValueError(f"a model convolves with one of {CONV_IMPLS}, not {conv_impl!r}")
    return TIERS[conv_impl]
