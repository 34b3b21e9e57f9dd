"""Check your own model (parity_check): clean example pairs pass with every layer mapped and no
finding; weights converted elsewhere are checked as they are; gradients and training compare; the
data flow settles same-shaped branches; nothing the user passes is modified. (Every planted porting
mistake: test_check_ports.py.)"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_check import check_pair, prepare
from parity_check import examples as ex

RESNET_X = ex.example_input(ex.RESNET_INPUT)
MLP_X = ex.example_input(ex.MLP_INPUT)


@pytest.mark.parametrize("torch_model, flax_model, x", [
    (ex.torch_resnet, ex.linen_resnet, RESNET_X), (ex.torch_resnet, ex.nnx_resnet, RESNET_X),
    (ex.torch_mlp_block, ex.linen_mlp_block, MLP_X), (ex.torch_mlp_block, ex.nnx_mlp_block, MLP_X),
], ids=["resnet-linen", "resnet-nnx", "mlp-linen", "mlp-nnx"])
def test_clean_pairs_pass(torch_model, flax_model, x):
    report = check_pair(torch_model(), flax_model(), x)
    assert report.passed, report.summary()
    assert len(report.layers) == len(report.mapping.layers) == {RESNET_X.shape: 13, MLP_X.shape: 7}[x.shape]
    assert not [f for f in report.findings if f["severity"] == "error"], report.findings


def _converted_elsewhere(flax_model, plant):
    """Flax variables as a user's own converter made them: the correct ones, then `plant` applied."""
    variables = prepare(ex.torch_mlp_block(), flax_model, MLP_X).flax.variables
    plant(variables["params"], {k: v.detach().numpy() for k, v in ex.torch_mlp_block().state_dict().items()})
    return variables


def test_missing_transpose_of_a_square_linear_is_caught_though_shapes_fit():
    """The user's converter copies proj's (32, 32) weight without transposing it: every shape fits."""
    variables = _converted_elsewhere(ex.linen_mlp_block(), lambda p, sd: p["proj"].update(kernel=sd["proj.weight"]))
    report = check_pair(ex.torch_mlp_block(), ex.linen_mlp_block(), MLP_X, variables=variables, direction="none")
    d = report.first_divergence
    assert (d["torch_name"], d["status"], d["cause"]) == ("proj", "introduced", "missing_transpose"), report.summary()


def test_weights_converted_elsewhere_and_right_pass():
    variables = _converted_elsewhere(ex.linen_mlp_block(), lambda p, sd: None)
    assert check_pair(ex.torch_mlp_block(), ex.linen_mlp_block(), MLP_X, variables=variables, direction="none").passed


def test_gradients_of_layer_outputs_and_parameters_agree_in_backward_order():
    report = check_pair(ex.torch_resnet(), ex.linen_resnet(), RESNET_X, grads=True)
    assert report.passed, report.summary()
    order = [(g["torch_name"], g["kind"]) for g in report.gradients]
    assert order[:2] == [("fc", "activation"), ("fc.bias", "parameter")] and order[-1] == ("conv1.weight", "parameter")
    assert len(order) == sum(1 for _ in ex.torch_resnet().parameters()) + len(report.mapping.layers)


def test_a_gradient_cut_on_one_side_is_localised_in_backward_order():
    """Flax stops the gradient through the residual path: the forward agrees, and the first gradient
    over its bound, going backwards, is the one w.r.t. the output of embed, where the path starts."""
    report = check_pair(ex.torch_mlp_block(), ex.linen_mlp_block_detached_residual(), MLP_X, grads=True)
    d = report.first_divergence
    assert (d["kind"], d["torch_name"]) == ("gradient", "embed"), report.summary()
    assert all(r.max_abs_diff <= r.bound for r in report.layers)


OPTIMIZERS = {  # case: (torch optimiser, optax optimiser, cause or None when they match)
    "adam": ("adam:lr=1e-3", "adam:learning_rate=1e-3", None),
    "adam eps inside the square root": ("adam:lr=1e-3", "adam:learning_rate=1e-3,eps=0.0,eps_root=1e-8", "adam_eps_root"),
    "adamw defaults": ("adamw:lr=1e-3", "adamw:learning_rate=1e-3", "weight_decay"),
    "torch Adam's weight decay missing in optax": ("adam:lr=1e-3,weight_decay=0.1", "adam:learning_rate=1e-3",
                                                    "weight_decay"),
    "coupled against decoupled weight decay": ("adam:lr=1e-3,weight_decay=0.1",
                                               "adamw:learning_rate=1e-3,weight_decay=0.1", "weight_decay_coupling"),
}


@pytest.mark.parametrize("case", list(OPTIMIZERS))
def test_training_and_optimizer_only_checks(case):
    torch_opt, optax_opt, cause = OPTIMIZERS[case]
    report = check_pair(ex.torch_mlp_block(), ex.nnx_mlp_block(), MLP_X, train_steps=3, torch_optimizer=torch_opt,
                        optax_optimizer=optax_opt)
    assert report.training["steps"] == 3
    if cause is None:
        assert report.passed, report.summary()
    else:
        d = report.first_divergence
        assert (d["kind"], d["cause"]) == ("training", cause), report.summary()
        assert report.training["optimizer_only_max_abs_diff"] > report.training["optimizer_only_bound"]


def test_adamw_at_a_high_rate_on_a_correct_pair_is_no_divergence():
    """AdamW at 1e-2 for 20 steps: in float32 it turned the rounding of gradients near zero into steps
    of up to the learning rate, and a correct pair failed; training is compared in float64."""
    specs = {"torch_optimizer": "adamw:lr=1e-2,weight_decay=1e-4", "optax_optimizer": "adamw:learning_rate=1e-2,weight_decay=1e-4"}
    report = check_pair(ex.torch_mlp_block(), ex.nnx_mlp_block(), MLP_X, train_steps=20, **specs)
    assert report.passed, report.summary()
    assert report.training["dtype"] == "float64"


def test_coverage_pair_tokens_embedding_grouped_dilated_conv1d_groupnorm_avg_pool():
    """Token inputs, Embedding, a dilated grouped Conv1d (channels-last in Flax), GroupNorm, SiLU,
    avg-pooling, tanh and a flatten into a Linear, forward, gradients and 3 SGD steps."""
    report = check_pair(ex.torch_sequence_net(), ex.LinenSequenceNet(), ex.sequence_input(), grads=True, train_steps=3,
                        torch_optimizer="sgd:lr=0.1,momentum=0.9", optax_optimizer="sgd:learning_rate=0.1,momentum=0.9")
    assert report.passed, report.summary()
    assert [m.kind for m in report.mapping.layers] == ["embedding", "conv", "groupnorm", "dense"]
    assert report.mapping.by_torch("fc").flatten is not None


def test_a_float64_torch_model_against_jax_without_x64_is_named():
    """The comparison runs in float32 on both sides; the lint says Flax would not compute in float64."""
    report = check_pair(ex.torch_mlp_block().double(), ex.linen_mlp_block(), MLP_X)
    assert "x64_off" in {f["cause"] for f in report.findings}


def test_train_mode_compares_batch_statistics_and_stops_at_dropout():
    """Train mode: BatchNorm normalises by batch statistics on both sides (compared); the two
    frameworks draw different dropout masks, so the layers after a dropout are not compared."""
    assert check_pair(ex.torch_resnet(), ex.linen_resnet(), RESNET_X, train=True).passed
    report = check_pair(ex.torch_mlp_block(), ex.linen_mlp_block(), MLP_X, train=True)
    assert report.passed, report.summary()
    assert [r.torch_name for r in report.layers if not r.compared] == ["fc2", "norm2", "proj", "head"]


def test_weight_transfer_is_lossless_both_ways():
    """torch → Flax → torch gives back torch's tensors bit for bit (permutations and transposes only)."""
    from parity_check.compare import transfer

    pair = prepare(ex.torch_sequence_net(), ex.LinenSequenceNet(), ex.sequence_input())
    before = {k: v.clone() for k, v in pair.torch.model.state_dict().items()}
    for p in pair.torch.model.parameters():
        torch.nn.init.zeros_(p)
    transfer(pair.mapping, pair.torch, pair.flax, "flax_to_torch")
    assert all(torch.equal(before[k], v) for k, v in pair.torch.model.state_dict().items())


@pytest.mark.parametrize("torch_opt, optax_opt, causes", [
    ("sgd:lr=0.1,momentum=0.9", "sgd:learning_rate=0.1,momentum=0.9", []),
    ("adam:lr=1e-3,betas=(0.9,0.99)", "adam:learning_rate=1e-3", ["optimizer_hyperparameters"]),
    ("adam:lr=1e-3", "adam:learning_rate=1e-3,eps=1e-6", ["optimizer_hyperparameters"]),
    ("adamw:lr=1e-3", "adamw:learning_rate=1e-3,weight_decay=0.01", []),
    ("sgd:lr=0.1", "sgd:learning_rate=0.01", ["optimizer_hyperparameters"]),
])
def test_optimizer_lint(torch_opt, optax_opt, causes):
    from parity_check.training import lint_optimizers

    assert [f["cause"] for f in lint_optimizers(torch_opt, optax_opt)] == causes


def test_nothing_passed_in_is_modified():
    torch_model, flax_model = ex.torch_resnet(), ex.nnx_resnet()
    before_torch = {k: v.clone() for k, v in torch_model.state_dict().items()}
    before_flax = np.asarray(flax_model.conv1.kernel[...]).copy()
    assert check_pair(torch_model, flax_model, RESNET_X, direction="flax_to_torch").passed
    assert all(torch.equal(before_torch[k], v) for k, v in torch_model.state_dict().items())
    assert np.array_equal(before_flax, np.asarray(flax_model.conv1.kernel[...]))
    assert torch_model.training and not isinstance(RESNET_X, torch.Tensor)


def test_the_training_comparison_runs_the_products_pytorch_step(monkeypatch):
    """A fault planted in torch_ref.train's optimiser step (it skips every update) shows in the
    checker's training comparison: the checker trains through that step, not a copy of it."""
    from torch_ref import train as torch_train

    def step_without_update(model, optimizer, inputs, targets, loss_fn):
        return torch_train.loss_and_gradients(model, inputs, targets, loss_fn)

    specs = dict(torch_optimizer="sgd:lr=0.1", optax_optimizer="sgd:learning_rate=0.1")
    assert check_pair(ex.torch_mlp_block(), ex.nnx_mlp_block(), MLP_X, train_steps=2, **specs).passed
    monkeypatch.setattr(torch_train, "optimizer_step", step_without_update)
    report = check_pair(ex.torch_mlp_block(), ex.nnx_mlp_block(), MLP_X, train_steps=2, **specs)
    assert not report.passed and report.first_divergence["kind"] == "training", report.summary()


def test_same_shaped_branches_computed_in_the_other_order_map_to_their_counterparts():
    """Two 3x3 convolutions read the same input; the Flax ports compute torch's second branch first.
    Mapped in execution order they would swap, and both branches would still agree alone: the
    assignment under which the outputs agree is kept, and said."""
    from parity_tests.ports import structure_ports as st

    for api, want in (("linen", "Conv_1"), ("nnx", "left")):
        arguments = st.swapped_branches(api)
        report = check_pair(arguments.pop("torch"), arguments.pop("flax"), arguments.pop("inputs"))
        assert report.passed, report.summary()
        assert report.mapping.by_torch("branch_a").flax_path == want
        assert any("read the same inputs" in note for note in report.notes), report.notes


def test_a_skeleton_holds_only_pairs_found_by_name_or_data_flow():
    """A torch ResNet-18 whose last BatchNorm was replaced by an Identity, against a complete port:
    one Flax BatchNorm is left, and the skeleton written holds no guessed pair: every pair it fills in
    is the one the complete pair maps."""
    from parity_check.mapping import MappingError
    from parity_tests.ports import torchvision_ports as tv

    image = ex.example_input(tv.RESNET_INPUT)
    pairs = check_pair(tv.torch_resnet18(), tv.linen_resnet18(), image).mapping.layers
    complete = {m.torch_name: m.flax_path for m in pairs}
    torch_model = tv.torch_resnet18()
    torch_model.layer4[1].bn2 = torch.nn.Identity()
    with pytest.raises(MappingError) as raised:
        check_pair(torch_model, tv.linen_resnet18(), image)
    filled = dict(line.split("  #")[0].replace('"', "").split(" = ") for line in raised.value.skeleton.splitlines()
                  if line.startswith('"'))
    assert all(complete[t] == f for t, f in filled.items() if f), filled
    assert raised.value.not_transferred["flax"] and "layer4/1" not in str(filled)


class TorchPositions(torch.nn.Module):
    """Position embeddings computed once for the batch: (1, T, D)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tokens, self.positions, self.head = torch.nn.Embedding(20, 8), torch.nn.Embedding(6, 8), torch.nn.Linear(8, 2)

    def forward(self, ids):
        return self.head(self.tokens(ids) + self.positions(torch.arange(ids.shape[1])[None]))


class LinenPositions(nn.Module):
    """The same, per example: (B, T, D)."""

    @nn.compact
    def __call__(self, ids):
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        return nn.Dense(2, name="head")(nn.Embed(20, 8, name="tokens")(ids) + nn.Embed(6, 8, name="positions")(positions))


def test_outputs_that_differ_only_by_a_broadcast_axis_are_equal():
    ids = np.random.default_rng(0).integers(0, 20, (3, 6))
    report = check_pair(TorchPositions(), LinenPositions(), ids)
    assert report.passed, report.summary()
    assert [r.torch_name for r in report.layers if r.broadcast] == ["positions"]
    assert "(broadcast)" in report.summary()
