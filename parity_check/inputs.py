"""The example inputs of a check, from the command line: parsed and checked before either framework is
imported (numpy and safetensors only), so that a bad argument costs no import time.

    --input-shape 8,3,32,32                 one Gaussian float input, torch layout
    --input [NAME=]SPEC                     repeatable; positional in order, or the keyword NAME
      8,3,32,32   or  randn:8,3,32,32       Gaussian floats (--seed)
      ids:2,16:1000  (or ids:2,16:vocab=1000)  integer token ids in [0, 1000)
      ones:2,16   /  zeros:2,16             int64 masks
      file:x.npy  /  file:batch.npz:KEY  /  file:batch.safetensors:KEY   an array from a file
    --inputs PKG.MOD:FN                     a function returning an array, a tuple (positional) or a
                                            dict (keyword) of arrays
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from cnn_parity.errors import UsageError

# The check keeps each layer's inputs and outputs in float32 and float64 on both sides, and several
# copies for the alone and random-seed comparisons: an input may take at most this share of the free memory.
MEMORY_SHARE = 1 / 64


@dataclass
class InputSpec:
    name: str | None  # None: positional
    kind: str  # randn, ids, ones, zeros, file
    shape: tuple[int, ...] = ()
    vocab: int = 0
    path: str = ""
    key: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}=" if self.name else ""


def parse_shape(text: str, flag: str = "--input-shape") -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n <= 0 for n in shape):
        raise UsageError(f"{flag} {text!r}: expected positive integers separated by commas, e.g. 8,3,32,32")
    return shape


def parse_input(text: str) -> InputSpec:
    name, eq, spec = text.partition("=")
    if not eq or not re.fullmatch(r"[A-Za-z_]\w*", name) or spec.startswith(("vocab",)):
        name, spec = None, text
    flag = f"--input {text!r}"
    kind, colon, rest = spec.partition(":")
    if not colon and re.fullmatch(r"[\d,]+", spec):
        return InputSpec(name, "randn", parse_shape(spec, flag))
    if kind in ("randn", "ones", "zeros"):
        return InputSpec(name, kind, parse_shape(rest, flag))
    if kind == "ids":
        shape_text, _, vocab_text = rest.partition(":")
        vocab_text = vocab_text.removeprefix("vocab=")
        if not vocab_text.isdigit() or int(vocab_text) <= 0:
            raise UsageError(f"{flag}: token ids need a vocabulary size, e.g. ids:2,16:1000")
        return InputSpec(name, "ids", parse_shape(shape_text, flag), vocab=int(vocab_text))
    if kind == "file":
        path, _, key = rest.partition(":") if not re.match(r"^[A-Za-z]:\\", rest) else (rest, "", "")
        if not path:
            raise UsageError(f"{flag}: expected file:PATH[:KEY]")
        return InputSpec(name, "file", path=path, key=key or None)
    raise UsageError(f"{flag}: expected a shape (8,3,32,32), randn:SHAPE, ids:SHAPE:VOCAB, ones:SHAPE, zeros:SHAPE "
                     "or file:PATH[:KEY]")


def check_memory(specs: list[InputSpec], available: int | None = None) -> None:
    """Refuse inputs the check could not hold (before anything is allocated)."""
    if available is None:
        import psutil  # noqa: PLC0415 (only where inputs are given by shape)

        available = psutil.virtual_memory().available
    for spec in specs:
        if spec.kind == "file":
            continue
        need = math.prod(spec.shape) * 8
        if need > MEMORY_SHARE * available:
            raise UsageError(f"--input {spec.label}{spec.kind}:{','.join(map(str, spec.shape))} is {need / 2**30:.3g} GiB "
                             f"in float64, and a check holds many copies of every activation: more than the "
                             f"{available / 2**30:.3g} GiB of free memory allow; use a smaller input")


def read_array(spec: InputSpec) -> np.ndarray:
    """The array a file: spec names (.npy, or .npz / .safetensors with KEY or a single array)."""
    path, flag = spec.path, f"--input {spec.label}file:{spec.path}"
    if not os.path.isfile(path):
        raise UsageError(f"{flag}: no such file")
    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        elif path.endswith(".safetensors"):
            from safetensors.numpy import load_file  # noqa: PLC0415

            arrays = load_file(path)
        else:
            raise UsageError(f"{flag}: expected a .npy, .npz or .safetensors file")
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 (any unreadable file is bad input)
        raise UsageError(f"{flag}: cannot read it ({type(e).__name__}: {e})") from None
    if spec.key is None:
        if len(arrays) != 1:
            raise UsageError(f"{flag}: it holds {len(arrays)} arrays ({', '.join(sorted(arrays)[:5])}): name one, "
                             f"file:{path}:KEY")
        return next(iter(arrays.values()))
    if spec.key not in arrays:
        raise UsageError(f"{flag}:{spec.key}: no array {spec.key!r} in it (it holds {', '.join(sorted(arrays)[:5])})")
    return arrays[spec.key]


def make_inputs(specs: list[InputSpec], seed: int) -> dict[str, np.ndarray]:
    """The inputs by name: positional ones '0', '1', ... in order, keyword ones by their NAME."""
    rng = np.random.default_rng(seed)
    out, position = {}, 0
    for spec in specs:
        if spec.kind == "randn":
            value = rng.standard_normal(spec.shape).astype(np.float32)
        elif spec.kind == "ids":
            value = rng.integers(0, spec.vocab, spec.shape, dtype=np.int64)
        elif spec.kind in ("ones", "zeros"):
            value = (np.ones if spec.kind == "ones" else np.zeros)(spec.shape, np.int64)
        else:
            value = read_array(spec)
        if spec.name is None:
            out[str(position)] = value
            position += 1
        elif spec.name in out:
            raise UsageError(f"--input {spec.name}= is given twice")
        else:
            out[spec.name] = value
    return out


def from_callable(result) -> dict[str, np.ndarray]:
    """What an --inputs function returned, as named arrays."""
    def array(v, where):
        try:
            value = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"--inputs: {where} is not an array ({type(e).__name__})") from None
        if value.dtype == object or value.dtype.kind not in "iubf":
            raise UsageError(f"--inputs: {where} is not a numeric array (dtype {value.dtype})")
        return value
    if isinstance(result, dict):
        return {str(k): array(v, f"input {k!r}") for k, v in result.items()}
    if isinstance(result, (tuple, list)):
        return {str(i): array(v, f"input {i}") for i, v in enumerate(result)}
    return {"0": array(result, "the result")}
