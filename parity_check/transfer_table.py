"""The checked weight transfer of a pair as data, for the training CLIs, which import one framework
each: for every Flax variable, the positions in the torch model's canonical tensors (its state_dict,
flattened and joined in order) its values come from. Found by running the check's own transfer on
tensors that hold their positions, so the table is exactly what was checked; every conversion the
trainers can use is such a gather (a transpose, a reshape, a flip, a row permutation), one to one.
Rules that combine tensors (an LSTM's two summed biases) are not, and such a pair is refused here."""

from __future__ import annotations

import copy

import jax
import numpy as np

from cnn_parity.errors import UsageError
from parity_check.compare import transfer
from parity_check.flax_side import flat

# float32 holds every integer up to 2**24 exactly: the positions travel through the Flax variables' dtype.
MAX_ELEMENTS = 2**24


def gather_table(pair) -> tuple[dict[str, np.ndarray], list[tuple[str, tuple[int, ...]]]]:
    """(Flax variable path → int64 positions, [(canonical name, shape)] in position order) of a checked
    pair whose weights went torch → Flax; the pair is left as it was."""
    canonical = pair.torch.state()
    layout = [(name, tuple(array.shape)) for name, array in canonical.items()]
    total = sum(int(np.prod(shape)) for _, shape in layout)
    if total > MAX_ELEMENTS:
        raise UsageError(f"the pair has {total:,} weights; the training CLIs convert at most {MAX_ELEMENTS:,}")
    positions, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape))
        positions[name] = np.arange(offset, offset + size, dtype=np.float64).reshape(shape)
        offset += size
    saved_torch, saved_flax = canonical, copy.deepcopy(pair.flax.variables)
    try:
        pair.flax.variables = jax.tree.map(lambda a: np.full(np.shape(a), np.nan, np.asarray(a).dtype)
                                           if np.asarray(a).dtype.kind == "f" else a, pair.flax.variables)
        pair.torch.load_state(positions)
        transfer(pair.mapping, pair.torch, pair.flax, "torch_to_flax")
        table = {path: np.asarray(value) for path, value in flat(pair.flax.variables).items()
                 if path not in pair.flax.rng_keys and np.asarray(value).dtype.kind == "f"}
    finally:
        pair.torch.load_state(saved_torch)
        pair.flax.variables = saved_flax
    _check_one_to_one(table, total)
    return {path: value.astype(np.int64) for path, value in table.items()}, layout


def _check_one_to_one(table: dict[str, np.ndarray], total: int) -> None:
    untouched = [path for path, value in table.items() if np.isnan(value).any()]
    if untouched:
        raise UsageError(f"Flax variable {untouched[0]} takes no torch weight: the training CLIs cannot convert this pair")
    values = np.concatenate([value.ravel() for value in table.values()]) if table else np.zeros(0)
    combined = [path for path, value in table.items() if not np.array_equal(value, np.round(value))]
    if combined or not np.array_equal(np.sort(values), np.arange(total)):
        where = combined[0] if combined else "its variables"
        raise UsageError(f"the transfer into {where} combines or repeats torch weights (an LSTM's summed biases, a "
                         "tied weight): the training CLIs convert one-to-one transfers only")
