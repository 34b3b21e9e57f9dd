"""`--paired` runs of one recipe in both frameworks, compared with `python -m cnn_parity.compare`: they
share their initial weights and batch order, and agree to float rounding."""

from __future__ import annotations

import json

from cnn_parity.plot import pairing

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
    ((epoch),) = compared["epochs"]
    assert abs(epoch["train_loss"][2]) <= LOSS_BOUND
    assert max(compared["weights_max_abs_diff"].values()) <= WEIGHT_BOUND
    printed = module_command("cnn_parity.compare", "flax", "torch", cwd=tmp_path)
    assert "shared init + order" in printed.stdout and "final weights: max |A - B|" in printed.stdout
    assert_one_line_error(module_command("cnn_parity.compare", "flax", "missing", cwd=tmp_path), 2, "holds no run")


def test_plots_say_what_runs_share():
    assert pairing({"init_rng": "shared", "shuffle_rng": "shared"}) == "shared init + order"
    assert pairing({"init_rng": "shared", "shuffle_rng": "framework"}) == "shared init"
    assert pairing({"init_rng": "framework", "shuffle_rng": "framework"}) == "own init and order"
