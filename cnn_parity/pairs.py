"""A model pair of the user's own (a recipe's `[pair]`): importing its models, checking them against
each other before anything trains them, and carrying weights between them, framework-neutral.

The check is the model checker itself (`python -m parity_check`, run as a command: this package
imports neither framework), on a batch of the recipe's input shape. A pair that diverges is refused
with the checker's verdict. A pair that agrees leaves its transfer table (for every Flax variable, the
positions of its values in the torch model's canonical tensors: parity_check/transfer_table.py), which
the Flax side converts its weights with, to and from the canonical form every checkpoint and export
holds (torch's state_dict names and layouts); and, for a paired run, torch's initial weights at the
recipe's seed, which both frameworks start from.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnn_parity.errors import UsageError
from cnn_parity.files import unsafe_to_load

CHECKER = "parity_check"  # the module `python -m` runs


def locate(spec: str, flag: str) -> None:
    """UsageError unless `PKG.MOD:ATTR`'s module is found, in a file (judged by its real path) no other
    user could have written; imports nothing."""
    module_name = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as e:
        raise UsageError(f"{flag} {spec}: cannot find {module_name} ({e})") from None
    if found is None:
        raise UsageError(f"{flag} {spec}: no module {module_name} (is its folder on PYTHONPATH, or the current one?)")
    if found.origin and os.path.exists(found.origin) and (why := unsafe_to_load(found.origin)):
        raise UsageError(f"{flag} {spec}: refusing to import it: {why}")


def import_attr(spec: str, flag: str):
    """The object `PKG.MOD:ATTR` names (`locate`d first)."""
    locate(spec, flag)
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 (any failure of the user's module is bad input here)
        raise UsageError(f"{flag} {spec}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    if not hasattr(module, attr):
        raise UsageError(f"{flag} {spec}: {module_name} has no attribute {attr!r}")
    return getattr(module, attr)


@dataclass
class TransferTable:
    """The checked torch → Flax transfer of a pair: Flax variable path → positions in the canonical
    tensors, joined in `layout` order ((name, shape) pairs)."""

    positions: dict[str, np.ndarray]
    layout: list[tuple[str, tuple[int, ...]]]

    @classmethod
    def read(cls, path: str | os.PathLike) -> "TransferTable":
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="numpy") as f:
            layout = [(name, tuple(shape)) for name, shape in json.loads(f.metadata()["canonical"])]
            return cls({key: f.get_tensor(key) for key in f.keys()}, layout)

    def to_flax(self, canonical: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Flax variables (path → array) from canonical weights."""
        missing = [name for name, _ in self.layout if name not in canonical]
        if missing:
            raise UsageError(f"the weights are not this pair's: {missing[0]} is missing")
        joined = np.concatenate([np.asarray(canonical[name], np.float32).ravel() for name, _ in self.layout])
        return {path: joined[index] for path, index in self.positions.items()}

    def to_canonical(self, flax: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Canonical weights from Flax variables (path → array)."""
        joined = np.empty(sum(int(np.prod(shape)) for _, shape in self.layout), np.float32)
        for path, index in self.positions.items():
            joined[index] = np.asarray(flax[path], np.float32)
        out, offset = {}, 0
        for name, shape in self.layout:
            size = int(np.prod(shape))
            out[name] = joined[offset:offset + size].reshape(shape)
            offset += size
        return out


@dataclass
class CheckedPair:
    """What checking a pair left: its transfer table, and torch's initial weights at the seed it was
    asked for (a paired run's start), with the check's report."""

    transfer: TransferTable
    initial_weights: dict[str, np.ndarray] | None
    report: dict


def check(pair, input_shape: tuple[int, ...], init_seed: int | None = None) -> CheckedPair:
    """Check the pair on a Gaussian batch of `input_shape` (torch's layout), through the model checker;
    UsageError, with the checker's own last line, where it diverges or cannot run."""
    with tempfile.TemporaryDirectory(prefix="cnn-parity-pair-") as folder:
        files = {"transfer": Path(folder) / "transfer.safetensors", "json": Path(folder) / "check.json",
                 "weights": Path(folder) / "initial.safetensors"}
        command = [sys.executable, "-m", CHECKER, "--torch", pair.torch, "--flax", pair.flax, "--input-shape",
                   ",".join(map(str, input_shape)), "--save-transfer", str(files["transfer"]), "--json", str(files["json"])]
        if init_seed is not None:
            command += ["--init-seed", str(init_seed), "--save-weights", str(files["weights"])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines()
            verdict = next((line for line in reversed(lines) if line.startswith(("FAIL", f"python -m {CHECKER}"))),
                           lines[-1] if lines else f"exit {done.returncode}")
            what = "diverge" if done.returncode == 1 else "cannot be checked"
            raise UsageError(f"the pair {pair.torch} / {pair.flax} {what}, so it is not trained: {verdict} (details: "
                             f"python -m {CHECKER} --torch {pair.torch} --flax {pair.flax} --input-shape "
                             f"{','.join(map(str, input_shape))})")
        from cnn_parity.weights import read_canonical

        return CheckedPair(TransferTable.read(files["transfer"]),
                           read_canonical(files["weights"]) if init_seed is not None else None,
                           json.loads(files["json"].read_text()))


def check_recipe(recipe, data_dir: str | None) -> CheckedPair:
    """A recipe's own pair, checked before it trains or its weights are used (refused where it diverges),
    on a batch of four inputs shaped as the recipe's data; for a paired run, with torch's initial
    weights at the recipe's seed."""
    from cnn_parity.recipe_data import recipe_split

    locate(recipe.pair.torch, "[pair] torch")
    locate(recipe.pair.flax, "[pair] flax")
    images = recipe_split(recipe, "test", data_dir).images
    height, width, channels = (*images.shape[1:3], images.shape[3] if images.ndim == 4 else 1)
    print(f"checking the pair {recipe.pair.torch} / {recipe.pair.flax} (python -m {CHECKER}) ...", file=sys.stderr)
    return check(recipe.pair, (4, channels, height, width), recipe.seed if recipe.init_rng == "shared" else None)
