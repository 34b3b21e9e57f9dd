"""`--paired` runs of one recipe in both frameworks, compared with `python -m cnn_parity.compare`: they
share their initial weights and batch order, and agree to float rounding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnn_parity.plot import pairing
from cnn_parity.weights import load_safetensors, save_safetensors

from .lifecycle import SHORT, module_command, train
from .test_cli import assert_one_line_error

# Measured here (mlp, SGD, 5 steps of batch 2,000): train loss 4.8e-8 apart, final weights 1.5e-8. Bounds: the
# float32 rounding of a few steps, three orders of magnitude below a different draw or batch.
LOSS_BOUND, WEIGHT_BOUND = 1e-6, 1e-6


def test_paired_runs_compare_to_float_rounding(data_dir, tmp_path):
    for framework in ("flax", "torch"):
        result = train(framework, tmp_path / framework, *SHORT, "--max-steps", "5", "--paired", data_dir=data_dir)
        assert result.returncode == 0, result.stderr
    result = module_command("cnn_parity.compare", "flax", "torch", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    compared = json.loads(result.stdout)
    assert [run["shares"] for run in compared["runs"]] == ["shared init + order"] * 2
    ((epoch),) = compared["epochs"]  # the partial epoch both stopped in, at the same step
    assert epoch["epoch"] == "1 (partial, 5 steps)" and abs(epoch["train_loss"][2]) <= LOSS_BOUND
    assert max(compared["weights_max_abs_diff"].values()) <= WEIGHT_BOUND
    assert compared["verdict"]["within_bounds"] and compared["flags"] == []
    printed = module_command("cnn_parity.compare", "flax", "torch", cwd=tmp_path)
    assert "shared init + order" in printed.stdout and "final weights: max |A - B|" in printed.stdout
    assert "verdict: within the paired-run bounds" in printed.stdout
    assert_one_line_error(module_command("cnn_parity.compare", "flax", "missing", cwd=tmp_path), 2, "holds no run")
    # Weights float32 holds but whose difference it does not (+-3e38): strict JSON all the same (no Infinity).
    for framework, sign in (("flax", 1), ("torch", -1)):
        for path in (tmp_path / framework).rglob("model.safetensors"):  # the final weights and the checkpoint's
            model, arrays, metadata = load_safetensors(path)
            save_safetensors(path, model, {k: np.full_like(v, sign * 3e38) for k, v in arrays.items()}, metadata)
    result = module_command("cnn_parity.compare", "flax", "torch", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    compared = json.loads(result.stdout, parse_constant=_not_json)
    assert max(compared["weights_max_abs_diff"].values()) == pytest.approx(6e38, rel=1e-6)


def _not_json(constant: str):
    raise AssertionError(f"compare --json printed {constant}, which is not JSON")


def test_plots_say_what_runs_share():
    assert pairing({"init_rng": "shared", "shuffle_rng": "shared"}) == "shared init + order"
    assert pairing({"init_rng": "shared", "shuffle_rng": "framework"}) == "shared init"
    assert pairing({"init_rng": "framework", "shuffle_rng": "framework"}) == "own init and order"


def test_runs_of_other_recipes_are_refused_and_other_lengths_flagged(data_dir, tmp_path):
    runs = {"a": ("--max-steps", "30"), "adam": ("--max-steps", "30", "--set", "optimizer=adam"),
            "b64": ("--max-steps", "30", "--batch-size", "1000"), "longer": ("--max-steps", "35")}
    for name, flags in runs.items():
        assert train("torch", tmp_path / name, *SHORT, "--epochs", "2", *flags, data_dir=data_dir).returncode == 0
    for other, what in (("adam", "optimizer"), ("b64", "batch_size")):
        result = module_command("cnn_parity.compare", "a", other, cwd=tmp_path)
        assert_one_line_error(result, 2, "are runs of different recipes", what)
    compared = json.loads(module_command("cnn_parity.compare", "a", "longer", "--json", cwd=tmp_path).stdout)
    assert compared["flags"] == ["the runs stopped at different steps (30 vs 35): only the epochs both completed "
                                 "are compared"]
    assert [row["epoch"] for row in compared["epochs"]] == [1]


def test_the_paired_bounds_hold_the_project_s_paired_runs_with_room():
    """PAIRED_BOUNDS against the paired runs they were measured on (the equivalence pilot)."""
    import numpy as np

    from cnn_parity.compare import PAIRED_BOUNDS

    from .test_cli import REPO

    models = json.loads((REPO / "reports" / "equivalence" / "report.json").read_text())["models"]
    worst_loss = worst_accuracy = 0.0
    for entry in models.values():
        paired = entry["paired"]
        flax, torch = (np.array(paired["train_loss"][f]) for f in ("flax", "torch"))
        worst_loss = max(worst_loss, float(np.abs(flax / torch - 1).max()))
        accuracy = (np.array(paired["test_accuracy_pp"][f]) for f in ("flax", "torch"))
        worst_accuracy = max(worst_accuracy, float(np.abs(np.subtract(*accuracy)).max()))
    assert 0.015 < worst_loss <= PAIRED_BOUNDS["train_loss_relative"] / 2
    assert 0.5 < worst_accuracy <= PAIRED_BOUNDS["test_accuracy_pp"] / 1.9
