"""`python -m parity_check`: check a torch model against its Flax port. Exit 0 when they agree
within the bounds, 1 when they diverge, 2 for bad input (one line on stderr)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Sequence

from cnn_parity.commands import OneLineParser, positive_int, report_errors
from cnn_parity.errors import UsageError
from cnn_parity.files import write_bytes_atomic

PROG = "python -m parity_check"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Check a PyTorch model against its Flax (Linen or NNX) port: weight "
                      "mapping, per-layer comparison, the first diverging layer and its likely cause.")
    p.add_argument("--torch", required=True, metavar="PKG.MOD:ATTR",
                   help="a torch.nn.Module class taking no arguments, or a function returning the model")
    p.add_argument("--flax", required=True, metavar="PKG.MOD:ATTR",
                   help="a Linen module class / function (variables created here), or an NNX class taking only rngs "
                        "(given nnx.Rngs(0)) / a function building an NNX model")
    p.add_argument("--input-shape", required=True, metavar="N,C,H,W", help="the example input's shape, in torch's layout")
    p.add_argument("--flax-layout", choices=("channels_last", "same"), default="channels_last",
                   help="how the Flax side takes the input (default channels_last: NCHW becomes NHWC)")
    p.add_argument("--weights", metavar="FILE.safetensors",
                   help="weights in torch's state_dict names and layouts (canonical form), loaded into the torch model")
    p.add_argument("--save-weights", metavar="FILE.safetensors",
                   help="write the weights both sides computed with, in canonical form (loadable with --weights)")
    p.add_argument("--direction", choices=("torch_to_flax", "flax_to_torch"), default="torch_to_flax",
                   help="which side's weights both use (default torch_to_flax)")
    p.add_argument("--mapping", metavar="FILE.toml", help="an explicit weight mapping (overrides inference)")
    p.add_argument("--save-mapping", metavar="FILE.toml",
                   help="write the mapping used (or, when inference fails, the skeleton to complete)")
    p.add_argument("--bounds", choices=("calibrated", "fixed"), default="calibrated",
                   help="per-layer bounds calibrated against float32-vs-float64 rounding (default), or the fixed ones")
    p.add_argument("--train", action="store_true", help="compare in train mode (default: eval mode)")
    p.add_argument("--grads", action="store_true", help="also compare parameter gradients, in backward order")
    p.add_argument("--train-steps", type=positive_int, metavar="N", help="also train N steps on both sides and compare")
    p.add_argument("--torch-optimizer", metavar="NAME:k=v,...", help="e.g. adam:lr=1e-3 (torch.optim.Adam)")
    p.add_argument("--optax", metavar="NAME:k=v,...", help="e.g. adam:learning_rate=1e-3 (optax.adam)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Gaussian example input (default 0)")
    p.add_argument("--json", metavar="OUT.json", help="also write the full report as JSON")
    return p


def load_attr(spec: str, flag: str):
    """The object PKG.MOD:ATTR names, called when it is a class or function."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise UsageError(f"{flag} {spec!r}: expected PKG.MOD:ATTR")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 (any failure of the user's module is bad input here)
        raise UsageError(f"{flag} {spec}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    target = getattr(module, attr, None)
    if target is None:
        raise UsageError(f"{flag} {spec}: {module_name} has no attribute {attr!r}")
    if not callable(target):
        return target
    try:
        return target()
    except TypeError as e:
        if isinstance(target, type) and _is_nnx_module(target):
            return _nnx_with_rngs(target, spec, flag)
        raise UsageError(f"{flag} {spec}: cannot build the model without arguments ({e})") from None


def _is_nnx_module(cls: type) -> bool:
    from flax import nnx

    return issubclass(cls, nnx.Module)


def _nnx_with_rngs(cls: type, spec: str, flag: str):
    """An NNX class whose only required argument is its rngs: built with nnx.Rngs(0)."""
    from flax import nnx

    try:
        return cls(rngs=nnx.Rngs(0))
    except TypeError as e:
        raise UsageError(f"{flag} {spec}: cannot build the model from rngs alone ({e})") from None


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n <= 0 for n in shape):
        raise UsageError(f"--input-shape {text!r}: expected positive integers separated by commas, e.g. 8,3,32,32")
    return shape


def load_torch_weights(path: str) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except OSError as e:
        raise UsageError(f"cannot read weights {path}: {e.strerror or e}") from None
    except (SafetensorError, ValueError) as e:
        raise UsageError(f"{path} is not a readable .safetensors file ({e})") from None


def write_new(path: str, data: str | bytes, flag: str) -> None:
    """Write a file the command makes; never over one that exists."""
    if os.path.exists(path):
        raise UsageError(f"{flag} {path} exists; it is left as it is (choose a new name)")
    try:
        write_bytes_atomic(path, data.encode() if isinstance(data, str) else data)
    except OSError as e:
        raise UsageError(f"cannot write {flag} {path}: {e.strerror or e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(PROG, lambda: _check(args))


def _check(args) -> int:
    import torch

    from parity_tests import precision
    from parity_check.check import check_pair
    from parity_check.examples import example_input
    from parity_check.mapping import MappingError

    shape = parse_shape(args.input_shape)
    if args.weights and args.direction == "flax_to_torch":
        raise UsageError("--weights are loaded into the torch model, whose weights then go to Flax: drop --direction")
    for flag in ("save_mapping", "json", "save_weights"):
        path = getattr(args, flag)
        if path and os.path.exists(path):
            raise UsageError(f"--{flag.replace('_', '-')} {path} exists; it is left as it is (choose a new name)")
    precision.configure()
    torch_model = load_attr(args.torch, "--torch")
    if not isinstance(torch_model, torch.nn.Module):
        raise UsageError(f"--torch {args.torch} gives a {type(torch_model).__name__}, not a torch.nn.Module")
    flax_model = load_attr(args.flax, "--flax")
    try:
        report = check_pair(torch_model, flax_model, example_input(shape, args.seed), direction=args.direction,
                            mapping=args.mapping, bounds=args.bounds, flax_layout=args.flax_layout, train=args.train,
                            grads=args.grads, train_steps=args.train_steps or 0, torch_optimizer=args.torch_optimizer,
                            optax_optimizer=args.optax,
                            torch_weights=load_torch_weights(args.weights) if args.weights else None)
    except MappingError as e:
        if args.save_mapping:
            write_new(args.save_mapping, e.skeleton, "--save-mapping")
            raise UsageError(f"{e}; skeleton written to {args.save_mapping}") from None
        print(e.skeleton, end="")
        raise
    print(report.summary())
    if args.save_mapping:
        write_new(args.save_mapping, report.mapping.to_toml(), "--save-mapping")
    if args.json:
        write_new(args.json, json.dumps(report.to_json(), indent=1) + "\n", "--json")
    if args.save_weights:
        from safetensors.numpy import save

        metadata = {"format": "cnn_parity_check", "torch": args.torch, "flax": args.flax}
        write_new(args.save_weights, save(report.canonical_weights, metadata=metadata), "--save-weights")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
