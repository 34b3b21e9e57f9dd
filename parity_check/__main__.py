"""`python -m parity_check`: check a torch model against its Flax port. Exit status: 0 when they agree
within the bounds, 1 when they diverge, 2 for bad input (one line on stderr: an argument, a model that
cannot be built or run, weights without a counterpart), 3 for an error inside the checker itself.

The arguments are checked before either framework is imported."""

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
from parity_check.inputs import InputSpec, check_memory, from_callable, make_inputs, parse_input, parse_shape

PROG = "python -m parity_check"
INTERNAL_ERROR = 3  # 1 means "the models diverge"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Check a PyTorch model against its Flax (Linen, NNX or Hugging Face Flax) "
                      "port: weight mapping, every weight accounted for, per-layer comparison, the first diverging "
                      "layer and its likely cause. Exit 0: agree; 1: diverge; 2: bad input; 3: an error in the checker.")
    p.add_argument("--torch", required=True, metavar="PKG.MOD:ATTR",
                   help="a torch.nn.Module class taking no arguments, or a function returning the model")
    p.add_argument("--flax", required=True, metavar="PKG.MOD:ATTR",
                   help="a Linen module class / function (variables created here), an NNX class taking only rngs "
                        "(given nnx.Rngs(0)) / a function building an NNX model, or a Hugging Face Flax model")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--input-shape", metavar="N,C,H,W", help="one Gaussian float input of this shape, torch's layout")
    given.add_argument("--input", action="append", metavar="[NAME=]SPEC",
                       help="an input (repeatable; NAME= makes it a keyword argument): a shape or randn:SHAPE "
                            "(Gaussian floats), ids:SHAPE:VOCAB (token ids), ones:SHAPE / zeros:SHAPE (int64 masks), "
                            "file:PATH[:KEY] (.npy, .npz, .safetensors)")
    given.add_argument("--inputs", metavar="PKG.MOD:FN",
                       help="a function returning the inputs: an array, a tuple (positional) or a dict (keyword)")
    p.add_argument("--flax-layout", choices=("channels_last", "same"), default="channels_last",
                   help="how the Flax side takes float inputs of rank >= 3 (default channels_last: NCHW becomes NHWC; "
                        "same: as torch does, e.g. a (N, T, D) sequence or a Hugging Face Flax model)")
    p.add_argument("--weights", metavar="FILE.safetensors",
                   help="weights in torch's state_dict names and layouts (canonical form), loaded into the torch model")
    p.add_argument("--flax-weights", metavar="FILE",
                   help="the Flax model's own variables (.msgpack from flax.serialization, or .safetensors / .npz with "
                        "'/'-joined paths such as params/Conv_0/kernel): your conversion, checked as it is with "
                        "--direction none")
    p.add_argument("--save-weights", metavar="FILE.safetensors",
                   help="write the weights both sides computed with, in canonical form (loadable with --weights)")
    p.add_argument("--save-transfer", metavar="FILE.safetensors",
                   help="write the checked torch → Flax weight transfer as a gather table (what the training CLIs "
                        "convert a pair's weights with; one-to-one transfers only)")
    p.add_argument("--init-seed", type=int, metavar="N",
                   help="seed torch's generator with N before building the torch model (its initial weights: what a "
                        "paired run of a pair starts from, with --save-weights)")
    p.add_argument("--direction", choices=("torch_to_flax", "flax_to_torch", "none"), default=None,
                   help="which side's weights both use (default torch_to_flax; none with --flax-weights: each side "
                        "keeps its own)")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the random example inputs (default 0)")
    p.add_argument("--json", metavar="OUT.json", help="also write the full report as JSON")
    return p


def split_spec(spec: str, flag: str) -> tuple[str, str]:
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise UsageError(f"{flag} {spec!r}: expected PKG.MOD:ATTR")
    return module_name, attr


def load_attr(spec: str, flag: str, call: bool = True):
    """The object PKG.MOD:ATTR names, called when it is a class or function (and `call`)."""
    module_name, attr = split_spec(spec, flag)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 (any failure of the user's module is bad input here)
        raise UsageError(f"{flag} {spec}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    target = getattr(module, attr, None)
    if target is None:
        raise UsageError(f"{flag} {spec}: {module_name} has no attribute {attr!r}")
    if not callable(target) or not call:
        return target
    try:
        return target()
    except TypeError as e:
        if isinstance(target, type) and _is_nnx_module(target):
            return _nnx_with_rngs(target, spec, flag)
        raise UsageError(f"{flag} {spec}: cannot build the model without arguments ({e})") from None
    except Exception as e:  # noqa: BLE001 (the user's constructor failing is bad input, not the checker's fault)
        raise UsageError(f"{flag} {spec}: building the model raised {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"{flag} {spec}: building the model raised {type(e).__name__}: {_first_line(e)}") from None


def load_torch_weights(path: str) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except OSError as e:
        raise UsageError(f"cannot read weights {path}: {e.strerror or e}") from None
    except (SafetensorError, ValueError) as e:
        raise UsageError(f"{path} is not a readable .safetensors file ({e})") from None


def load_flax_weights(path: str) -> dict:
    """A Flax variables tree from .msgpack, .safetensors or .npz ('/'-joined paths)."""
    try:
        if path.endswith(".msgpack"):
            from flax import serialization  # noqa: PLC0415

            with open(path, "rb") as f:
                tree = serialization.msgpack_restore(f.read())
            if not isinstance(tree, dict):
                raise UsageError(f"--flax-weights {path}: not a tree of variables")
            return tree
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file  # noqa: PLC0415

            arrays = load_file(path)
        elif path.endswith(".npz"):
            import numpy as np  # noqa: PLC0415

            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        else:
            raise UsageError(f"--flax-weights {path}: expected a .msgpack, .safetensors or .npz file")
    except UsageError:
        raise
    except OSError as e:
        raise UsageError(f"cannot read --flax-weights {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 (an unreadable file is bad input)
        raise UsageError(f"--flax-weights {path}: cannot read it ({type(e).__name__}: {e})") from None
    tree: dict = {}
    for key, value in arrays.items():
        *parents, leaf = key.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def write_new(path: str, data: str | bytes, flag: str) -> None:
    """Write a file the command makes; never over one that exists."""
    if os.path.exists(path):
        raise UsageError(f"{flag} {path} exists; it is left as it is (choose a new name)")
    try:
        write_bytes_atomic(path, data.encode() if isinstance(data, str) else data)
    except OSError as e:
        raise UsageError(f"cannot write {flag} {path}: {e.strerror or e}") from None


def validate(args) -> list[InputSpec]:
    """Everything that can be checked without the frameworks: input specs, files, flags that go together."""
    split_spec(args.torch, "--torch")
    split_spec(args.flax, "--flax")
    specs = [InputSpec(None, "randn", parse_shape(args.input_shape))] if args.input_shape else \
        [parse_input(text) for text in args.input or []]
    if args.inputs:
        split_spec(args.inputs, "--inputs")
    check_memory(specs)
    for spec in specs:
        if spec.kind == "file" and not os.path.isfile(spec.path):
            raise UsageError(f"--input {spec.label}file:{spec.path}: no such file")
    for flag, path in (("--weights", args.weights), ("--flax-weights", args.flax_weights), ("--mapping", args.mapping)):
        if path and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    direction = args.direction or ("none" if args.flax_weights else "torch_to_flax")
    if args.weights and direction == "flax_to_torch":
        raise UsageError("--weights are loaded into the torch model, whose weights then go to Flax: drop --direction")
    if args.flax_weights and direction == "torch_to_flax":
        raise UsageError("--flax-weights are the Flax side's own: torch's would overwrite them; use --direction none "
                         "(the default with --flax-weights) or flax_to_torch")
    if args.train_steps and not (args.torch_optimizer and args.optax):
        raise UsageError("a training comparison needs both --torch-optimizer and --optax")
    for flag in ("save_mapping", "json", "save_weights", "save_transfer"):
        path = getattr(args, flag)
        if path and os.path.exists(path):
            raise UsageError(f"--{flag.replace('_', '-')} {path} exists; it is left as it is (choose a new name)")
    args.direction = direction
    return specs


def settings(args) -> dict:
    """What the command line chose, for the JSON report."""
    return {"torch": args.torch, "flax": args.flax, "seed": args.seed, "direction": args.direction,
            "input_specs": args.input or ([args.input_shape] if args.input_shape else [f"--inputs {args.inputs}"])}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors(PROG, lambda: _check(args), internal_exit=INTERNAL_ERROR, file_error_exit=2)


def _check(args) -> int:
    specs = validate(args)  # before any framework is imported
    import torch  # noqa: PLC0415

    from parity_check.check import check_pair  # noqa: PLC0415
    from parity_check.mapping import MappingError  # noqa: PLC0415
    from parity_tests import precision  # noqa: PLC0415

    precision.configure()
    if args.init_seed is not None:
        torch.manual_seed(args.init_seed)
    torch_model = load_attr(args.torch, "--torch")
    if not isinstance(torch_model, torch.nn.Module):
        raise UsageError(f"--torch {args.torch} gives a {type(torch_model).__name__}, not a torch.nn.Module")
    flax_model = load_attr(args.flax, "--flax")
    if args.inputs:
        function = load_attr(args.inputs, "--inputs", call=False)
        try:
            inputs = from_callable(function() if callable(function) else function)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 (the user's function failing is bad input)
            raise UsageError(f"--inputs {args.inputs} raised {type(e).__name__}: {_first_line(e)}") from None
    else:
        inputs = make_inputs(specs, args.seed)
    variables = load_flax_weights(args.flax_weights) if args.flax_weights else None
    try:
        report = check_pair(torch_model, flax_model, inputs, variables=variables, direction=args.direction,
                            mapping=args.mapping, bounds=args.bounds, flax_layout=args.flax_layout, train=args.train,
                            grads=args.grads, train_steps=args.train_steps or 0, torch_optimizer=args.torch_optimizer,
                            optax_optimizer=args.optax,
                            torch_weights=load_torch_weights(args.weights) if args.weights else None, seed=args.seed,
                            transfer_table=bool(args.save_transfer))
    except MappingError as e:
        if args.json:  # what was not transferred, per side, for a program to read
            write_new(args.json, json.dumps({"passed": None, "error": str(e), "not_transferred": e.not_transferred,
                                             "settings": settings(args)}, indent=1) + "\n", "--json")
        if args.save_mapping:
            write_new(args.save_mapping, e.skeleton, "--save-mapping")
            raise UsageError(f"{e}; skeleton written to {args.save_mapping}") from None
        print(e.skeleton, end="")
        raise
    except MemoryError:
        raise UsageError("the check ran out of memory: use a smaller input") from None
    report.settings |= settings(args)
    print(report.summary())
    if args.save_mapping:
        write_new(args.save_mapping, report.mapping.to_toml(), "--save-mapping")
    if args.json:
        write_new(args.json, json.dumps(report.to_json(), indent=1) + "\n", "--json")
    if args.save_weights or args.save_transfer:
        from safetensors.numpy import save  # noqa: PLC0415

        metadata = {"format": "cnn_parity_check", "torch": args.torch, "flax": args.flax}
        if args.save_weights:
            write_new(args.save_weights, save(report.canonical_weights, metadata=metadata), "--save-weights")
        if args.save_transfer and report.passed:
            table, layout = report.transfer_table
            write_new(args.save_transfer, save(table, metadata=metadata | {"canonical": json.dumps(layout)}),
                      "--save-transfer")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
