"""Per-op timing behind benchmarks/FINDINGS.md: every convolution of the five models at its recipe's
batch size, each part (forward, input gradient, weight gradient) in every implementation the tiers
choose from (flax_impl/convolutions.py) and as PyTorch computes it; each 2x2 max-pool; then every
tier's whole training step. Run: `python -m benchmarks.profile_ops [--models lenet ...] [--reps N]
[--one-thread]`. Prints Markdown tables of milliseconds: the minimum of N timed repetitions after a
warm-up, the candidates of a row timed in turn (interleaved), so that a change in the machine's load
reaches them all alike. Every JAX program is compiled with the tiers' XLA options (YNNPACK's
convolutions off) but the "ynn" column's. --one-thread runs XLA, oneDNN and PyTorch on one thread each
(how the per-layer tables of flax_impl/kernels.py were measured: a 2-core machine shared with other
work gives each framework about one core).
"""

from __future__ import annotations

import os
import sys
import time

from cnn_parity.commands import OneLineParser, positive_int, report_errors
from cnn_parity.recipes import MODELS

PROG = "python -m benchmarks.profile_ops"
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _times(fns: dict, reps: int) -> dict[str, float]:
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


def _layer_arrays(model: str, layer: str):
    import jax.numpy as jnp
    import numpy as np

    from cnn_parity.recipes import load_recipe
    from flax_impl.kernels import geometry

    cin, cout, size, padding, side = geometry(model, layer)
    batch = load_recipe(model).batch_size
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin), np.float32))
    k = jnp.asarray(rng.standard_normal((size, size, cin, cout), np.float32) * 0.1)
    out = side + 2 * padding - size + 1
    dy = jnp.asarray(rng.standard_normal((batch, out, out, cout), np.float32))
    return x, k, dy, padding, f"{model}.{layer} {batch}×{side}²×{cin}→{cout} k{size}" + (f" p{padding}" if padding else "")


def _jax_parts(x, k, dy, padding) -> dict:
    """Every implementation of every part, jitted ({"forward xla": fn, ...})."""
    import jax

    from flax_impl import convolutions as conv
    from flax_impl.kernels import NO_YNN_CONVOLUTIONS, supported_options

    options = supported_options(NO_YNN_CONVOLUTIONS) or None
    jit = lambda f, **kw: jax.jit(f, compiler_options=kw.get("options", options))
    fns = {}
    for name, forward in conv.FORWARD.items():
        if name != "direct" or x.shape[-1] == 1:
            f = jit(lambda x, k, forward=forward: forward(x, k, padding))
            fns[f"forward {name}"] = lambda f=f: f(x, k).block_until_ready()
    f = jit(lambda x, k: conv.xla_convolve(x, k, padding), options=None)
    fns["forward ynn"] = lambda f=f: f(x, k).block_until_ready()
    for name in conv.INPUT_GRADIENT:
        f = jit(lambda dy, k, name=name: conv.input_gradient(conv.FORWARD[name], dy, k, padding))
        fns[f"input {name}"] = lambda f=f: f(dy, k).block_until_ready()
    for name in conv.WEIGHT_GRADIENT:
        if name == "gemm":
            f = jit(lambda x, dy: conv.gemm_weight_gradient(x, dy, padding, k.shape[0], k.shape[1]))
        else:
            f = jit(lambda x, dy, name=name: conv.weight_gradient(conv.FORWARD[name], x, dy, padding))
        fns[f"weight {name}"] = lambda f=f: f(x, dy).block_until_ready()
    return fns


def _torch_parts(x, k, dy, padding) -> dict:
    import numpy as np
    import torch

    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    tk = torch.from_numpy(np.asarray(k).transpose(3, 2, 0, 1).copy())
    tdy = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())

    def forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tk, padding=padding)
    return {"forward torch": forward,
            "input torch": lambda: torch.nn.grad.conv2d_input(tx.shape, tk, tdy, padding=padding),
            "weight torch": lambda: torch.nn.grad.conv2d_weight(tx, tk.shape, tdy, padding=padding)}


def conv_rows(model: str, reps: int) -> list[tuple[str, dict]]:
    from cnn_parity.weights import CONV_GEOMETRY

    rows = []
    for layer in CONV_GEOMETRY[model]:
        x, k, dy, padding, label = _layer_arrays(model, layer)
        rows.append((label, _times({**_jax_parts(x, k, dy, padding), **_torch_parts(x, k, dy, padding)}, reps)))
    return rows


def pool_rows(model: str, reps: int) -> list[tuple[str, dict]]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from cnn_parity.recipes import load_recipe
    from cnn_parity.weights import CONV_GEOMETRY, LAYERS, conv_output_side
    from flax_impl.kernels import max_pool_2x2

    batch = load_recipe(model).batch_size
    channels = {name: out for name, _, out, _ in LAYERS[model]}
    rows = []
    for name, (_, _, pooled) in CONV_GEOMETRY[model].items():
        if not pooled:
            continue
        side, c = conv_output_side(model, name), channels[name]
        x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, side, side, c), np.float32))
        fns = {}
        for label, f in (("reduce_window", lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))), ("reshape", max_pool_2x2)):
            fwd, grad = jax.jit(f), jax.jit(jax.grad(lambda x, f=f: jnp.sum(f(x) ** 2)))
            fns[f"forward {label}"] = lambda fwd=fwd: fwd(x).block_until_ready()
            fns[f"forward+backward {label}"] = lambda grad=grad: grad(x).block_until_ready()
        tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
        fns["forward+backward torch"] = lambda: torch.autograd.grad(torch.nn.functional.max_pool2d(tx, 2).pow(2).sum(), tx)
        rows.append((f"{model} max-pool {batch}×{side}²×{c}", _times(fns, reps)))
    return rows


def step_rows(model: str, reps: int) -> list[tuple[str, dict]]:
    """Each tier's training step (the product's train_step, jitted with the tier's options) and PyTorch's."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cnn_parity.recipes import load_recipe
    from cnn_parity.weights import CONV_GEOMETRY
    from flax_impl import kernels
    from flax_impl.train import create_train_state, train_step
    from torch_ref import train as torch_train
    from torch_ref.models import create_model

    recipe = load_recipe(model)
    x = jnp.asarray(np.random.default_rng(0).random((recipe.batch_size, 28, 28, 1), np.float32))
    y = jnp.asarray(np.random.default_rng(1).integers(0, 10, recipe.batch_size), jnp.int32)
    fns = {}
    for tier in _usable_tiers() if CONV_GEOMETRY[model] else ["none"]:
        state = create_train_state(recipe, jax.random.key(0), conv_impl=tier)
        step = jax.jit(train_step, compiler_options=kernels.of(tier).jit_options())
        fns[f"step {tier}"] = lambda state=state, step=step: jax.block_until_ready(step(state, {"image": x, "label": y},
                                                                                        jax.random.key(0)))
    import torch
    m = create_model(model)
    opt = torch_train.make_optimizer(m.parameters(), recipe.optimizer)
    tx, ty = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()), torch.from_numpy(np.array(y)).long()
    fns["step torch"] = lambda: torch_train.train_step(m, opt, tx, ty)
    return [(f"{model} training step (with the update)", _times(fns, reps))]


def _usable_tiers() -> list[str]:
    """The tiers that run here: every one but a oneDNN tier that cannot."""
    from flax_impl import jaxlib_onednn, kernels, onednn_conv

    usable = {"jaxlib-onednn": jaxlib_onednn.status()[0], "onednn": onednn_conv.status()[0]}
    return [tier for tier in kernels.CONV_IMPLS if usable.get(tier, True)]


def _print_table(rows: list[tuple[str, dict]]) -> None:
    columns = list(dict.fromkeys(c for _, out in rows for c in out))
    print("| op (ms, min) | " + " | ".join(columns) + " |")
    print("|---" + "|---:" * len(columns) + "|")
    for label, out in rows:
        print(f"| {label} | " + " | ".join(f"{out[c]:.2f}" if c in out else "–" for c in columns) + " |", flush=True)
    print()


def main(argv=None) -> int:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), metavar="MODEL",
                   help=f"any of: {', '.join(MODELS)} (default: all)")
    p.add_argument("--reps", type=positive_int, default=20, help="timed repetitions per op (default 20)")
    p.add_argument("--one-thread", action="store_true", help="XLA, oneDNN and PyTorch on one thread each")
    args = p.parse_args(argv)
    if args.one_thread:  # before JAX, oneDNN or PyTorch start their thread pools
        if "jax" in sys.modules:
            raise SystemExit(f"{PROG}: error: --one-thread must be set before JAX is imported")
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAGS}".strip()
        os.environ["OMP_NUM_THREADS"] = "1"

    def body() -> int:
        import torch
        if args.one_thread:
            torch.set_num_threads(1)
        print(f"load average {os.getloadavg()[0]:.2f}; {'one thread per framework' if args.one_thread else 'default threads'}\n")
        for model in args.models:
            for rows in ((conv_rows(model, args.reps), pool_rows(model, args.reps)) if model != "mlp" else ()):
                _print_table(rows)
            _print_table(step_rows(model, args.reps))
        print(f"load average {os.getloadavg()[0]:.2f}")
        return 0
    return report_errors(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
