"""`python -m parity_check`: exit 0 when the pair agrees, 1 when it diverges, 2 with one line for
bad input; the JSON report and the mapping files it writes. Run in-process (main(argv))."""

from __future__ import annotations

import json

import flax.linen as nn
import numpy as np
import pytest
import torch

from parity_check.__main__ import main
from parity_check.examples import LinenMLPBlock

EX = "parity_check.examples"
RESNET = ["--torch", f"{EX}:torch_resnet", "--input-shape", "4,3,32,32"]
MLP = ["--torch", f"{EX}:torch_mlp_block", "--input-shape", "8,24"]


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_clean_pair_exits_0_and_writes_json_and_mapping(tmp_path, capsys):
    code, out, err = run(RESNET + ["--flax", f"{EX}:nnx_resnet", "--json", str(tmp_path / "r.json"),
                                   "--save-mapping", str(tmp_path / "m.toml")], capsys)
    assert code == 0, err
    assert "PASS" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is True and report["first_divergence"] is None
    assert len(report["layers"]) == len(report["mapping"]) == 13
    # the saved mapping, passed back, is used as it is
    code, out, err = run(RESNET + ["--flax", f"{EX}:nnx_resnet", "--mapping", str(tmp_path / "m.toml")], capsys)
    assert code == 0 and "13 by file" in out, err


def test_planted_mistake_exits_1_with_first_divergence_in_json(tmp_path, capsys):
    code, out, _ = run(RESNET + ["--flax", f"{EX}:linen_resnet_same_padding", "--json", str(tmp_path / "r.json")], capsys)
    assert code == 1 and "cause: same_padding" in out
    d = json.loads((tmp_path / "r.json").read_text())["first_divergence"]
    assert {k: d[k] for k in ("torch_name", "flax_path", "kind", "cause")} == {
        "torch_name": "layer2.0.conv1", "flax_path": "LinenBlock_1/Conv_0", "kind": "forward", "cause": "same_padding"}
    assert d["max_abs_diff"] > 0.1 and d["hint"]


@pytest.mark.parametrize("argv, message", [
    (RESNET + ["--flax", "no_such_package.models:Net"], "cannot import no_such_package.models"),
    (RESNET + ["--flax", f"{EX}:NNXBlock"], "cannot build the model from rngs alone"),
    (RESNET + ["--flax", f"{EX}:LinenBlock"], "cannot build the model without arguments"),
    (RESNET + ["--flax", f"{EX}:nothing_here"], "has no attribute 'nothing_here'"),
    (["--torch", f"{EX}:torch_resnet", "--flax", f"{EX}:nnx_resnet", "--input-shape", "4,3,x"], "--input-shape"),
    (["--torch", f"{EX}:torch_resnet", "--flax", f"{EX}:linen_resnet", "--input-shape", "4,5,32,32"], "rejects its input"),
    (MLP + ["--flax", f"{EX}:linen_resnet"], "rejects its input"),
    (RESNET + ["--flax", f"{EX}:nnx_resnet", "--train-steps", "2"], "needs both --torch-optimizer and --optax"),
])
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1


class TwoDense(nn.Module):
    """A port that lost layers: two Dense where the torch MLP block has six Linears and two LayerNorms."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.Dense(32)(x))


def test_unmapped_layers_exit_2_with_a_skeleton_to_complete(tmp_path, capsys):
    """Layers left without a counterpart: one line naming every weight not transferred, per side, and the
    skeleton mapping file written where asked, with the one pair the data flow found (embed: the Dense
    that reads the input, Dense_1, as Linen numbers them in construction order)."""
    code, _, err = run(MLP + ["--flax", f"{__name__}:TwoDense", "--save-mapping", str(tmp_path / "skeleton.toml")],
                       capsys)
    assert code == 2 and "weights not transferred" in err and len(err.strip().splitlines()) == 1, err
    assert "torch norm1.weight, norm1.bias" in err and "Flax Dense_0/bias, Dense_0/kernel" in err, err
    skeleton = (tmp_path / "skeleton.toml").read_text()
    assert '"embed" = "Dense_1"' in skeleton and '"fc1" = ""' in skeleton and "[layers]" in skeleton


class MLPBlockWithExtraLayer(LinenMLPBlock):
    """The Linen MLP block with a Dense the torch model lacks."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10, name="extra")(super().__call__(x, train))


def test_flax_layers_without_torch_counterpart_exit_2(capsys):
    code, out, err = run(MLP + ["--flax", f"{__name__}:MLPBlockWithExtraLayer"], capsys)
    assert code == 2 and "weights not transferred (no counterpart found): Flax extra/bias, extra/kernel" in err, err
    assert "# Flax layers not yet mapped: extra (dense)" in out


def test_weights_file_is_loaded_into_the_torch_model(tmp_path, capsys):
    """Canonical weights (torch names and layouts) replace the torch model's; a file that does not fit is one line."""
    from safetensors.numpy import save_file

    from parity_check import examples as ex

    torch.manual_seed(1)
    other = {k: v.numpy() for k, v in ex.randomise_norms(ex.TorchMLPBlock(), seed=1).state_dict().items()}
    save_file(other, str(tmp_path / "w.safetensors"))
    code, out, err = run(MLP + ["--flax", f"{EX}:nnx_mlp_block", "--weights", str(tmp_path / "w.safetensors")], capsys)
    assert code == 0, err
    save_file({"embed.weight": other["embed.weight"]}, str(tmp_path / "part.safetensors"))
    code, _, err = run(MLP + ["--flax", f"{EX}:nnx_mlp_block", "--weights", str(tmp_path / "part.safetensors")], capsys)
    assert code == 2 and "do not fit the torch model" in err


def test_flax_weights_saved_in_canonical_form_load_back_into_torch(tmp_path, capsys):
    """--direction flax_to_torch --save-weights writes the Flax model's weights in canonical form;
    passed back with --weights (into torch, then to Flax) the pair still agrees."""
    saved = tmp_path / "flax.safetensors"
    code, _, err = run(MLP + ["--flax", f"{EX}:nnx_mlp_block", "--direction", "flax_to_torch",
                              "--save-weights", str(saved)], capsys)
    assert code == 0, err
    from safetensors.numpy import load_file

    from parity_check import examples as ex

    weights = load_file(str(saved))
    assert set(weights) == set(ex.TorchMLPBlock().state_dict())
    assert not np.array_equal(weights["embed.weight"], ex.torch_mlp_block().embed.weight.detach().numpy())
    code, _, err = run(MLP + ["--flax", f"{EX}:nnx_mlp_block", "--weights", str(saved)], capsys)
    assert code == 0, err


def test_existing_output_files_are_left_alone(tmp_path, capsys):
    existing = tmp_path / "r.json"
    existing.write_text("mine")
    code, _, err = run(RESNET + ["--flax", f"{EX}:nnx_resnet", "--json", str(existing)], capsys)
    assert code == 2 and "exists" in err and existing.read_text() == "mine"


def test_regenerate_examples_replaces_an_examples_output(tmp_path, capsys):
    from parity_tests import docs

    page = tmp_path / "page.md"
    page.write_text(f"```\n$ python -m parity_check --torch {EX}:torch_resnet \\\n    --flax {EX}:LinenBlock "
                    "--input-shape 4,3,32,32\nstale output\n(exit status 0)\n```\n")
    assert docs.main(["worked-examples", str(page)]) == 0
    lines = page.read_text().splitlines()
    assert "cannot build the model without arguments" in lines[3] and lines[4:] == ["(exit status 2)", "```"]


# --- inputs, weights files, exit codes --------------------------------------------------------------------

SEQUENCE = ["--torch", f"{EX}:torch_sequence_net", "--flax", f"{EX}:LinenSequenceNet"]


class TorchMasked(torch.nn.Module):
    """Two inputs, the second a keyword: features and an int mask that zeroes some rows."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x, mask=None):
        return self.fc(x) * mask.unsqueeze(-1)


class LinenMasked(nn.Module):
    @nn.compact
    def __call__(self, x, mask=None):
        return nn.Dense(3, name="fc")(x) * mask[..., None]


def masked_inputs():
    return {"x": np.ones((2, 4, 6), np.float32), "mask": np.array([[1, 1, 0, 0], [1, 1, 1, 0]])}


def test_token_ids_and_keyword_inputs(capsys):
    code, out, err = run(SEQUENCE + ["--input", "ids:4,12:50"], capsys)
    assert code == 0 and "PASS" in out, err
    masked = ["--torch", f"{__name__}:TorchMasked", "--flax", f"{__name__}:LinenMasked", "--flax-layout", "same"]
    code, out, err = run(masked + ["--input", "x=randn:2,4,6", "--input", "mask=ones:2,4"], capsys)
    assert code == 0 and "PASS" in out, err
    code, out, err = run(masked + ["--inputs", f"{__name__}:masked_inputs"], capsys)
    assert code == 0 and "PASS" in out, err


def test_inputs_from_files(tmp_path, capsys):
    from safetensors.numpy import save_file

    ids = np.random.default_rng(0).integers(0, 50, (4, 12))
    np.save(tmp_path / "ids.npy", ids)
    np.savez(tmp_path / "batch.npz", tokens=ids, other=ids)
    save_file({"tokens": ids}, str(tmp_path / "batch.safetensors"))
    for spec in (f"file:{tmp_path / 'ids.npy'}", f"file:{tmp_path / 'batch.npz'}:tokens",
                 f"file:{tmp_path / 'batch.safetensors'}:tokens"):
        code, out, err = run(SEQUENCE + ["--input", spec], capsys)
        assert code == 0 and "PASS" in out, (spec, err)
    code, _, err = run(SEQUENCE + ["--input", f"file:{tmp_path / 'batch.npz'}"], capsys)
    assert code == 2 and "holds 2 arrays" in err


def test_own_converted_flax_weights_are_checked_as_they_are(tmp_path, capsys):
    """--flax-weights: the Flax model's own variables (direction none): right ones pass; with a square
    kernel left untransposed, the layer and the cause are named."""
    from flax import serialization
    from safetensors.numpy import save_file

    from parity_check import examples as ex
    from parity_check.compare import prepare
    from parity_check.flax_side import flat

    variables = prepare(ex.torch_mlp_block(), ex.linen_mlp_block(), np.zeros(ex.MLP_INPUT, np.float32)).flax.variables
    (tmp_path / "right.msgpack").write_bytes(serialization.msgpack_serialize(variables))
    code, out, err = run(MLP + ["--flax", f"{EX}:linen_mlp_block", "--flax-weights", str(tmp_path / "right.msgpack")],
                         capsys)
    assert code == 0 and "weights none" in out, err
    wrong = {k: np.ascontiguousarray(v) for k, v in flat(variables).items()}
    wrong["params/proj/kernel"] = ex.torch_mlp_block().proj.weight.detach().numpy()
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    code, out, err = run(MLP + ["--flax", f"{EX}:linen_mlp_block", "--flax-weights", str(tmp_path / "wrong.safetensors")],
                         capsys)
    assert code == 1 and "at proj / proj" in out and "cause: missing_transpose" in out, out


def broken_constructor():
    raise ValueError("the config has no such option")


def test_exit_codes_bad_inputs_and_internal_errors(monkeypatch, capsys):
    code, _, err = run(RESNET + ["--flax", f"{__name__}:broken_constructor"], capsys)
    assert code == 2 and "building the model raised ValueError: the config has no such option" in err
    code, _, err = run(["--torch", f"{EX}:torch_resnet", "--flax", f"{EX}:nnx_resnet", "--input-shape",
                        "100000,3,224,224"], capsys)
    assert code == 2 and "free memory" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["--torch", f"{EX}:torch_resnet", "--flax", f"{EX}:nnx_resnet", "--input", "ids:4,5"], capsys)
    assert code == 2 and "vocabulary size" in err
    from parity_check import check

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the checker")
    monkeypatch.setattr(check, "check_pair", broken)
    code, _, err = run(RESNET + ["--flax", f"{EX}:nnx_resnet"], capsys)
    assert code == 3 and "internal error RuntimeError: a bug in the checker" in err


def test_arguments_are_checked_before_either_framework_is_imported(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from parity_check.__main__ import main; "
            "rc = main(['--torch', 'a.b:C', '--flax', 'a.b:D', '--input', 'file:/no/such.npy']); "
            "print(rc, sorted(m for m in ('torch', 'jax', 'flax') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.split("\n")[0] == "2 []", result.stdout + result.stderr
    assert "no such file" in result.stderr


def test_a_sequence_input_moved_channels_last_suggests_the_layout(capsys):
    ports = "parity_tests.ports.sequence_ports"
    code, _, err = run(["--torch", f"{ports}:torch_encoder", "--flax", f"{ports}:linen_encoder", "--input-shape",
                        "2,10,32"], capsys)
    assert code == 2 and "--flax-layout same" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(["--torch", f"{ports}:torch_encoder", "--flax", f"{ports}:linen_encoder", "--input-shape",
                          "2,10,32", "--flax-layout", "same"], capsys)
    assert code == 0, err


def test_the_json_holds_settings_versions_and_what_was_not_transferred(tmp_path, capsys):
    code, _, err = run(RESNET + ["--flax", f"{EX}:nnx_resnet", "--seed", "3", "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    s = report["settings"]
    assert s["seed"] == 3 and s["inputs"] == {"0": {"shape": [4, 3, 32, 32], "dtype": "float32"}}
    assert s["floor_multiple"] == 10.0 and s["torch"].endswith(":torch_resnet") and s["input_specs"] == ["4,3,32,32"]
    assert {"jax", "flax", "torch", "numpy"} <= set(report["versions"])
    assert report["not_transferred"]["torch"] == [] == report["not_transferred"]["flax"]
    assert "bn1.num_batches_tracked" in report["not_transferred"]["torch_counters"]
    code, _, _ = run(MLP + ["--flax", f"{__name__}:MLPBlockWithExtraLayer", "--json", str(tmp_path / "refused.json")],
                     capsys)
    refused = json.loads((tmp_path / "refused.json").read_text())
    assert code == 2 and refused["passed"] is None and refused["not_transferred"]["flax"] == ["extra/bias", "extra/kernel"]


def test_train_mode_training_with_dropout_says_it_is_not_comparable(capsys):
    code, out, err = run(MLP + ["--flax", f"{EX}:nnx_mlp_block", "--train", "--train-steps", "2", "--torch-optimizer",
                                "sgd:lr=0.1", "--optax", "sgd:learning_rate=0.1"], capsys)
    assert code == 0 and "not comparable step by step" in out and "training:" not in out, err
