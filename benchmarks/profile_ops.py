"""Per-op timing behind benchmarks/FINDINGS.md: every convolution and pooling of the five models at
their training batch size, forward and forward+backward, as XLA's convolution, as im2col + GEMM
(flax_impl/kernels.py, conv_impl="gemm"), through oneDNN (flax_impl/onednn_conv.py, where it builds) and as
PyTorch's (oneDNN) conv2d; then the whole training step split into its parts. Run:
`python -m benchmarks.profile_ops [--models lenet ...] [--reps N]`. Prints a Markdown table; the minimum
of N timed repetitions after a warm-up, the candidates of a row timed in turn (interleaved), so that
a change in the machine's load reaches them all alike.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from flax_impl import onednn_conv
from flax_impl.convolutions import gemm_convolve as gemm_conv
from flax_impl.kernels import max_pool_2x2
from cnn_parity.commands import OneLineParser, positive_int, report_errors
from cnn_parity.recipes import MODELS, load_recipe
from cnn_parity.weights import CONV_GEOMETRY, LAYERS, conv_output_side


def _times(fns, reps):
    """{label: ms} for {label: fn}: the minimum over `reps` runs of each (the machine is shared: the
    minimum is the least disturbed run), the functions called in turn."""
    for fn in fns.values():
        fn()
    times = {label: float("inf") for label in fns}
    for _ in range(reps):
        for label, fn in fns.items():
            tick = time.perf_counter()
            fn()
            times[label] = min(times[label], time.perf_counter() - tick)
    return {label: t * 1e3 for label, t in times.items()}


def _jax_impls(*impls):
    """`impls`, less "onednn" where the extension does not build."""
    return [impl for impl in impls if impl != "onednn" or onednn_conv.status()[0]]


def xla_conv(x, k, b, pad):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def gemm_conv_bias(x, k, b, pad):
    return gemm_conv(x, k, pad) + b


def onednn_conv_bias(x, k, b, pad):
    return onednn_conv.conv(x, k, pad) + b


CONVS = {"xla": xla_conv, "gemm": gemm_conv_bias, "onednn": onednn_conv_bias}


def conv_rows(model, reps):
    import torch
    rows = []
    batch = load_recipe(model).batch_size
    for name, cin, cout, kernel in LAYERS[model]:
        if not kernel:
            continue
        side, pad, _ = CONV_GEOMETRY[model][name]
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((batch, side, side, cin), np.float32))
        k = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout), np.float32) * 0.1)
        b = jnp.zeros((cout,), jnp.float32)
        fns = {}
        for label in _jax_impls(*CONVS):
            f = CONVS[label]
            fwd = jax.jit(f, static_argnums=3)
            grad = jax.jit(jax.grad(lambda x, k, b, f=f: jnp.sum(f(x, k, b, pad) ** 2), argnums=(0, 1, 2)))
            fns[f"{label}_fwd"] = lambda fwd=fwd: fwd(x, k, b, pad).block_until_ready()
            fns[f"{label}_fwdbwd"] = lambda grad=grad: jax.block_until_ready(grad(x, k, b))
        tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
        tk = torch.from_numpy(np.asarray(k).transpose(3, 2, 0, 1).copy()).requires_grad_()
        tb = torch.zeros(cout, requires_grad=True)
        conv = lambda: torch.nn.functional.conv2d(tx, tk, tb, padding=pad)

        def torch_fwd():
            with torch.no_grad():
                conv()
        fns["torch_fwd"] = torch_fwd
        fns["torch_fwdbwd"] = lambda: torch.autograd.grad(conv().pow(2).sum(), (tx, tk, tb))
        out = _times(fns, reps)
        rows.append((f"{model}.{name} {batch}×{side}²×{cin}→{cout} k{kernel}", out))
    return rows


def pool_rows(model, reps):
    import flax.linen as nn
    import torch
    batch = load_recipe(model).batch_size
    channels = {name: out for name, _, out, _ in LAYERS[model]}
    shapes = [(conv_output_side(model, name), channels[name])
              for name, (_, _, pooled) in CONV_GEOMETRY[model].items() if pooled]
    rows = []
    for side, c in shapes:
        x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, side, side, c), np.float32))
        fns = {}
        for label, f in (("xla", lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))), ("gemm", max_pool_2x2)):
            fwd = jax.jit(f)
            grad = jax.jit(jax.grad(lambda x, f=f: jnp.sum(f(x) ** 2)))
            fns[f"{label}_fwd"] = lambda fwd=fwd: fwd(x).block_until_ready()
            fns[f"{label}_fwdbwd"] = lambda grad=grad: grad(x).block_until_ready()
        tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()

        def torch_fwd():
            with torch.no_grad():
                torch.nn.functional.max_pool2d(tx, 2)
        fns["torch_fwd"] = torch_fwd
        fns["torch_fwdbwd"] = lambda: torch.autograd.grad(torch.nn.functional.max_pool2d(tx, 2).pow(2).sum(), tx)
        out = _times(fns, reps)
        rows.append((f"{model} maxpool {batch}×{side}²×{c}", out))
    return rows


def step_rows(model, reps):
    """The products' training steps (Flax with each conv_impl, PyTorch's), and their forward alone."""
    from flax_impl.train import create_train_state, train_step
    recipe = load_recipe(model)
    b = recipe.batch_size
    x = jnp.asarray(np.random.default_rng(0).random((b, 28, 28, 1), np.float32))
    y = jnp.asarray(np.random.default_rng(1).integers(0, 10, b), jnp.int32)
    fns = {}
    step, rng = jax.jit(train_step), jax.random.key(0)
    for label in _jax_impls(*CONVS):
        state = create_train_state(recipe, jax.random.key(0), conv_impl=label)
        fwd = jax.jit(lambda p, apply_fn=state.apply_fn: apply_fn({"params": p}, x, train=False))
        fns[f"{label}_fwd"] = lambda fwd=fwd, state=state: fwd(state.params).block_until_ready()
        fns[f"{label}_fwdbwd"] = lambda state=state: jax.block_until_ready(
            step(state, {"image": x, "label": y}, rng))
    import torch
    from torch_ref import train as torch_train
    from torch_ref.models import create_model
    m = create_model(model)
    opt = torch_train.make_optimizer(m.parameters(), recipe.optimizer)
    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    ty = torch.from_numpy(np.asarray(y)).long()

    def torch_fwd():
        with torch.no_grad():
            m(tx)
    fns["torch_fwd"] = torch_fwd
    fns["torch_fwdbwd"] = lambda: torch_train.train_step(m, opt, tx, ty)
    return [(f"{model} whole step (fwdbwd = step incl. update)", _times(fns, reps))]


PROG = "python -m benchmarks.profile_ops"


def main(argv=None) -> int:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), metavar="MODEL",
                   help=f"any of: {', '.join(MODELS)} (default: all)")
    p.add_argument("--reps", type=positive_int, default=20, help="timed repetitions per op (default 20)")
    args = p.parse_args(argv)

    def body() -> int:
        cols = [f"{impl}_{part}" for part in ("fwd", "fwdbwd") for impl in ("xla", "gemm", "onednn", "torch")]
        print("| op (ms, min) | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for model in args.models:
            rows = (conv_rows(model, args.reps) + pool_rows(model, args.reps) if model != "mlp" else []) \
                + step_rows(model, args.reps)
            for label, out in rows:
                print(f"| {label} | " + " | ".join(f"{out[c]:.2f}" if c in out else "–" for c in cols) + " |",
                      flush=True)
        return 0
    return report_errors(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
