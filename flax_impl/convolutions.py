"""Ways to compute a stride-1 NHWC × HWIO convolution and its two gradients, and a convolution
assembled from one way for each (`formulation`), for the convolution tiers of flax_impl/kernels.py.

Every gradient is written as a *forward* convolution in the canonical NHWC / HWIO layout, so that it
runs on the same kernel as a forward pass wherever it sits:
  input gradient   the output gradient padded by kernel - 1 - padding, convolved with the kernel
                   flipped in both spatial axes and its input and output channels swapped;
  weight gradient  the padded input with batch and channels swapped (C as the batch, N as the
                   channels) convolved with the output gradient as the kernel (N as its input
                   channels), giving (C, kh, kw, O), transposed to HWIO.
Autodiff of `lax.conv` writes both as convolutions with other dimension labels, which XLA:CPU puts
back on its convolution kernel only at a program's top level: inside `lax.fori_loop` (the trainer's
chunks) they stay generic loop nests (jax-ml/jax#12868; benchmarks/FINDINGS.md, section 2).

Each part has these implementations:
  "xla"     `lax.conv_general_dilated`: XLA:CPU's convolution kernel (with YNNPACK's convolutions
            turned off for the program: flax_impl/kernels.py, NO_YNN_CONVOLUTIONS);
  "onednn"  jaxlib's own oneDNN convolution (flax_impl/jaxlib_onednn.py; float32 only: any other
            dtype, e.g. the parity suite's float64 trajectory, takes "xla");
  "gemm"    forward: im2col and one matrix product (`gemm_convolve`); weight gradient: the
            transposed patch matrix times the output gradient (as an input gradient, im2col of the
            widely padded output gradient measured 1.5-2x slower than "xla": not offered);
  "direct"  forward only, one input channel: the kh·kw shifted input windows, each times its row of
            the kernel, summed (no patch matrix, no convolution kernel).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from flax_impl import jaxlib_onednn

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
Convolution = Callable[[jax.Array, jax.Array, int], jax.Array]  # (x, kernel, padding) -> y


def xla_convolve(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(padding, padding)] * 2, dimension_numbers=DIMENSIONS)


def onednn_convolve(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    if x.dtype == kernel.dtype == jnp.float32:
        return jaxlib_onednn.convolve(x, kernel, padding)
    return xla_convolve(x, kernel, padding)


def padded(x: jax.Array, padding: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


# Channels from which one channel-axis concatenate of the kh·kw shifted slices builds the patches
# fastest: each slice then copies runs of >= 64 bytes (16 float32, a cache line). With fewer channels
# those runs are a few bytes, and two stacks on a new axis are faster (XLA:CPU fuses each stack of
# <= 8 operands into one loop; it leaves a 25-operand concatenate unfused). Measured per layer,
# forward + backward: benchmarks/FINDINGS.md, section 6.
CONCATENATE_FROM_CHANNELS = 16


def patches(x: jax.Array, kh: int, kw: int, ho: int, wo: int) -> jax.Array:
    """The (N·ho·wo, kh·kw·C) patch matrix of the (already padded) `x`, in the (i, j, c) order of an
    HWIO kernel's rows; how it is assembled depends on C (above), its values do not."""
    n, _, _, c = x.shape
    if c >= CONCATENATE_FROM_CHANNELS:
        stacked = jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    else:
        columns = jnp.stack([x[:, :, j:j + wo, :] for j in range(kw)], axis=3)  # (n, h, wo, kw, c)
        stacked = jnp.stack([columns[:, i:i + ho] for i in range(kh)], axis=3)  # (n, ho, wo, kh, kw, c)
    return stacked.reshape(n * ho * wo, kh * kw * c)


def gemm_convolve(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """Stride-1 convolution (NHWC input, HWIO kernel) as one matrix product (im2col). Under
    autodiff the slices' transposes are pads and adds that XLA fuses, and both gradients are
    matrix products."""
    kh, kw, cin, cout = kernel.shape
    x = padded(x, padding)
    n, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    return jnp.dot(patches(x, kh, kw, ho, wo), kernel.reshape(kh * kw * cin, cout)).reshape(n, ho, wo, cout)


def direct_convolve(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """A one-input-channel convolution as kh·kw multiply-adds of shifted windows, in one fused loop."""
    kh, kw, cin, _ = kernel.shape
    if cin != 1:
        raise ValueError(f"the direct convolution takes one input channel, not {cin}")
    x = padded(x, padding)
    _, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    terms = [x[:, i:i + ho, j:j + wo, :] * kernel[i, j, 0, :] for i in range(kh) for j in range(kw)]
    return functools.reduce(jnp.add, terms)


def input_gradient(convolve: Convolution, dy: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """dL/dx as a forward convolution: `dy` padded by kernel - 1 - padding, with the flipped,
    I/O-swapped kernel."""
    kh = kernel.shape[0]
    return convolve(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), kh - 1 - padding)


def weight_gradient(convolve: Convolution, x: jax.Array, dy: jax.Array, padding: int) -> jax.Array:
    """dL/dkernel as a forward convolution of the activations with batch and channels swapped
    (C, H, W, N), the output gradient as the kernel (Ho, Wo, N, O): (C, kh, kw, O), then HWIO."""
    return convolve(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), padding).transpose(1, 2, 0, 3)


def gemm_weight_gradient(x: jax.Array, dy: jax.Array, padding: int, kh: int, kw: int) -> jax.Array:
    """dL/dkernel as the transposed patch matrix times the output gradient."""
    n, ho, wo, cout = dy.shape
    cin = x.shape[-1]
    matrix = patches(padded(x, padding), kh, kw, ho, wo)
    return jnp.dot(matrix.T, dy.reshape(n * ho * wo, cout)).reshape(kh, kw, cin, cout)


FORWARD: dict[str, Convolution] = {"xla": xla_convolve, "onednn": onednn_convolve, "gemm": gemm_convolve,
                                   "direct": direct_convolve}
INPUT_GRADIENT = ("xla", "onednn")
WEIGHT_GRADIENT = ("xla", "onednn", "gemm")


class Formulation(NamedTuple):
    """How one convolution layer computes its forward pass and each gradient (names above)."""

    forward: str
    input_gradient: str
    weight_gradient: str

    def __str__(self) -> str:
        return f"forward {self.forward}, input gradient {self.input_gradient}, weight gradient {self.weight_gradient}"


@functools.lru_cache(maxsize=None)
def formulation(parts: Formulation) -> Convolution:
    """The convolution (x, kernel, padding) -> y computing its forward pass and gradients as `parts`
    says (a `jax.custom_vjp`: autodiff never sees how the forward pass is computed)."""
    if parts.forward not in FORWARD or parts.input_gradient not in INPUT_GRADIENT or \
            parts.weight_gradient not in WEIGHT_GRADIENT:
        raise ValueError(f"no such formulation: {parts}")
    forward = FORWARD[parts.forward]
    input_convolve = FORWARD[parts.input_gradient]

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def convolution(x, kernel, padding):
        return forward(x, kernel, padding)

    def forward_pass(x, kernel, padding):
        return forward(x, kernel, padding), (x, kernel)

    def backward_pass(padding, residuals, dy):
        x, kernel = residuals
        kh, kw = kernel.shape[:2]
        dx = input_gradient(input_convolve, dy, kernel, padding)
        if parts.weight_gradient == "gemm":
            dkernel = gemm_weight_gradient(x, dy, padding, kh, kw)
        else:
            dkernel = weight_gradient(FORWARD[parts.weight_gradient], x, dy, padding)
        return dx, dkernel

    convolution.defvjp(forward_pass, backward_pass)
    return convolution
