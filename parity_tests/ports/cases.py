"""Every pair the checker is tested on, with what it must say: correct ports (exit 0), planted porting
mistakes (exit 1, the layer where the difference starts and its cause), and pairs it must refuse
(exit 2, with the reason). test_check_ports.py runs them; `python -m parity_tests.docs check-cases`
runs them all and writes the table of what the checker said (docs/check-cases.md).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cnn_parity.errors import CnnParityError

GROUPS = ("correct", "mistake", "refused")


@dataclass
class Case:
    name: str
    group: str  # correct, mistake, refused
    build: Callable[[], dict]  # the check_pair arguments: torch, flax, inputs and any keywords
    exit: int  # 0 agree, 1 diverge, 2 refused (bad input)
    layer: str | None = None  # the first diverging torch layer ('(output)', 'step 1', ...)
    cause: str | None = None
    kind: str = "forward"  # forward, parameters, gradient, training
    refusal: str | None = None  # a phrase the refusal's message holds
    api: str = ""  # linen, nnx, hugging face


@dataclass
class Outcome:
    exit: int
    layer: str | None = None
    cause: str | None = None
    kind: str | None = None
    message: str = ""
    seconds: float = 0.0

    def meets(self, case: Case) -> bool:
        if case.exit != self.exit:
            return False
        if case.exit == 1:
            return (self.layer, self.cause, self.kind) == (case.layer, case.cause, case.kind)
        if case.exit == 2:
            return case.refusal is None or case.refusal in self.message
        return True


def run(case: Case) -> Outcome:
    """The checker's verdict on a case, with the exit status its command would give."""
    from parity_check.check import check_pair  # noqa: PLC0415

    start = time.perf_counter()
    try:
        arguments = case.build()
        report = check_pair(arguments.pop("torch"), arguments.pop("flax"), arguments.pop("inputs"), **arguments)
    except CnnParityError as e:
        return Outcome(e.exit_code, message=str(e), seconds=time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 (an error in the checker: the command's exit 3)
        return Outcome(3, message=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - start)
    d = report.first_divergence or {}
    return Outcome(0 if report.passed else 1, d.get("torch_name"), d.get("cause"), d.get("kind"), report.summary(),
                   time.perf_counter() - start)


# --- the pairs --------------------------------------------------------------------------------------------

def _pair(torch_model, flax_model, inputs, **kwargs) -> dict:
    return {"torch": torch_model, "flax": flax_model, "inputs": inputs, **kwargs}


def gaussian(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _converted(torch_model, flax_model, inputs, plant: Callable[[dict, dict], None], **kwargs) -> dict:
    """Flax variables as a user's own converter made them: the correct ones (the checker's transfer),
    then `plant(variables, torch_state)`; checked as they are (direction none)."""
    from parity_check.compare import prepare  # noqa: PLC0415

    variables = prepare(torch_model, flax_model, inputs, **kwargs).flax.variables
    plant(variables, {k: v.detach().numpy() for k, v in torch_model.state_dict().items()})
    return _pair(torch_model, flax_model, inputs, variables=variables, direction="none", **kwargs)


def _params(variables: dict) -> dict:
    """The parameters of a Linen variables dict (NNX: the pure dict itself)."""
    return variables.get("params", variables)


def cases() -> list[Case]:
    from parity_check import examples as ex  # noqa: PLC0415
    from parity_tests.ports import sequence_ports as sp  # noqa: PLC0415
    from parity_tests.ports import structure_ports as st  # noqa: PLC0415
    from parity_tests.ports import torchvision_ports as tv  # noqa: PLC0415

    out: list[Case] = []

    def add(name, group, build, exit_code, layer=None, cause=None, kind="forward", refusal=None, api=""):
        out.append(Case(name, group, build, exit_code, layer, cause, kind, refusal, api))

    # correct pairs: the checker's own examples, the project's five models, torchvision, sequence layers, structure
    resnet_x, mlp_x = gaussian(ex.RESNET_INPUT), gaussian(ex.MLP_INPUT)
    add("example ResNet", "correct", lambda: _pair(ex.torch_resnet(), ex.linen_resnet(), resnet_x), 0, api="linen")
    add("example ResNet", "correct", lambda: _pair(ex.torch_resnet(), ex.nnx_resnet(), resnet_x), 0, api="nnx")
    add("example MLP block", "correct", lambda: _pair(ex.torch_mlp_block(), ex.linen_mlp_block(), mlp_x), 0, api="linen")
    add("example MLP block", "correct", lambda: _pair(ex.torch_mlp_block(), ex.nnx_mlp_block(), mlp_x), 0, api="nnx")
    add("token ids, Embedding, grouped dilated Conv1d, GroupNorm", "correct",
        lambda: _pair(ex.torch_sequence_net(), ex.LinenSequenceNet(), ex.sequence_input()), 0, api="linen")
    for model in ("mlp", "lenet", "cnn_base", "cnn_2layer", "fashion_cnn"):
        for api in ("linen", "nnx"):
            add(f"the project's {model}", "correct", functools.partial(_project_pair, model, api), 0, api=api)
    image = gaussian(tv.RESNET_INPUT)
    add("torchvision ResNet-18", "correct", lambda: _pair(tv.torch_resnet18(), tv.linen_resnet18(), image), 0, api="linen")
    add("torchvision ResNet-18", "correct", lambda: _pair(tv.torch_resnet18(), tv.nnx_resnet18(), image), 0, api="nnx")
    add("torchvision ResNet-18, shortcut computed before the main path", "correct",
        lambda: _pair(tv.torch_resnet18(), tv.linen_resnet18_shortcut_first(), image), 0, api="linen")
    small = gaussian(tv.SQUEEZENET_INPUT)
    add("torchvision SqueezeNet 1.1 (concatenated branches, ceil_mode)", "correct",
        lambda: _pair(tv.torch_squeezenet(), tv.linen_squeezenet(), small), 0, api="linen")
    add("torchvision SqueezeNet 1.1 (concatenated branches, ceil_mode)", "correct",
        lambda: _pair(tv.torch_squeezenet(), tv.nnx_squeezenet(), small), 0, api="nnx")
    seq, rec = gaussian(sp.SEQUENCE_INPUT), gaussian(sp.RECURRENT_INPUT)
    same = {"flax_layout": "same"}
    add("nn.TransformerEncoderLayer", "correct", lambda: _pair(sp.torch_encoder(), sp.linen_encoder(), seq, **same), 0,
        api="linen")
    add("nn.TransformerEncoderLayer", "correct", lambda: _pair(sp.torch_encoder(), sp.nnx_encoder(), seq, **same), 0,
        api="nnx")
    add("nn.TransformerEncoderLayer, batch_first=False", "correct",
        lambda: _pair(sp.torch_encoder_time_major(), sp.linen_encoder(), seq, **same), 0, api="linen")
    for label, flax in (("LSTMCell", sp.linen_lstm), ("OptimizedLSTMCell", sp.linen_optimized_lstm)):
        add(f"nn.LSTM ↔ nn.RNN({label})", "correct", lambda flax=flax: _pair(sp.torch_lstm(), flax(), rec, **same), 0,
            api="linen")
    for label, flax in (("LSTMCell", sp.nnx_lstm), ("OptimizedLSTMCell", sp.nnx_optimized_lstm)):
        add(f"nn.LSTM ↔ nnx.RNN({label})", "correct", lambda flax=flax: _pair(sp.torch_lstm(), flax(), rec, **same), 0,
            api="nnx")
    add("nn.GRU ↔ nn.RNN(GRUCell)", "correct", lambda: _pair(sp.torch_gru(), sp.linen_gru(), rec, **same), 0, api="linen")
    for api in ("linen", "nnx"):
        add("two same-shaped branches computed in the other order", "correct",
            functools.partial(st.swapped_branches, api), 0, api=api)
        add("a wrapper's name prefix (model.)", "correct", functools.partial(st.prefixed, api), 0, api=api)
        add("transposed, 3-D, depthwise and 1-D convolutions, GroupNorm", "correct",
            functools.partial(st.convolutions, api), 0, api=api)
        add("bare parameters (class token, position embeddings)", "correct", functools.partial(st.bare_parameters, api),
            0, api=api)
        add("reflect-padded convolution (padded before a VALID conv)", "correct",
            functools.partial(_padding, api, "reflect", None), 0, api=api)
        add("max-pool ceil_mode=True (emulated with -inf padding)", "correct",
            functools.partial(_pool, api, "ceil_emulated"), 0, api=api)
    add("circular-padded convolution (padding='CIRCULAR')", "correct", functools.partial(_padding, "nnx", "circular", None),
        0, api="nnx")
    for name in ("bert", "gpt2", "gpt2_lm_head", "distilbert", "albert", "vit", "clip_vision", "resnet"):
        add(f"Hugging Face {name}", "correct", functools.partial(_hugging_face, name), 0, api="hugging face")

    # planted mistakes, Linen and NNX
    for api in ("linen", "nnx"):
        for mistake, layer in (("pool_padding", "conv2"), ("pool_stride", "conv2"), ("count_include_pad", "fc")):
            add(f"pooling: {mistake}", "mistake", functools.partial(_pool, api, mistake), 1, layer, mistake, api=api)
        add("pooling: torch ceil_mode=True, not emulated", "mistake", functools.partial(_pool, api, "pool_ceil_mode"), 1,
            "conv2", "pool_ceil_mode", api=api)
        for torch_act, flax_act in (("relu", "gelu"), ("gelu", "relu"), ("silu", "relu"), ("tanh_gelu_by_hand", "gelu")):
            add(f"activation: torch {torch_act}, Flax {flax_act}", "mistake",
                functools.partial(_activation, api, torch_act, flax_act), 1, "fc2", "activation", api=api)
        add("residual added after the activation", "mistake", functools.partial(_residual, api, "residual_order"), 1, "fc",
            "residual_order", api=api)
        add("BatchNorm on batch statistics in eval mode", "mistake",
            functools.partial(_residual, api, "batch_stats_in_eval"), 1, "bn1", "batch_stats_in_eval", api=api)
        add("log_softmax over the batch axis", "mistake", functools.partial(_head, api, True), 1, "(output)",
            "softmax_axis", api=api)
        add("softmax over the batch axis", "mistake", functools.partial(_head, api, False), 1, "(output)", "softmax_axis",
            api=api)
        for mistake in ("attention_scale", "attention_heads", "softmax_axis"):
            add(f"hand-written attention: {mistake}", "mistake", functools.partial(_attention, api, mistake), 1, "out",
                mistake, api=api)
        add("LayerNorm over time and features", "mistake", functools.partial(_norm, api), 1, "norm", "norm_axis", api=api)
        add("zero padding where torch reflects", "mistake", functools.partial(_padding, api, "reflect", "padding_mode"),
            1, "conv1", "padding_mode", api=api)
        add("Linear bias dropped", "mistake", functools.partial(_bias, api, True, False), 1, "fc1", "missing_bias", api=api)
        add("Linear bias added where torch has none", "mistake", functools.partial(_bias, api, False, True), 1, "fc1",
            "extra_bias", kind="parameters", api=api)
        add("conv kernel reshaped, not transposed", "mistake", functools.partial(_kernel_reshaped, api), 1, "conv1",
            "kernel_reshaped", api=api)
        add("conv kernel's spatial axes swapped", "mistake", functools.partial(_kernel_swapped, api), 1, "conv1",
            "kernel_layout", api=api)
        add("square Linear kernel not transposed", "mistake", functools.partial(_square_untransposed, api), 1, "query",
            "missing_transpose", api=api)
        add("BatchNorm variance converted as a standard deviation", "mistake", functools.partial(_variance_as_std, api), 1,
            "bn1", "bn_var_as_std", api=api)
        add("LSTM gates in another order", "mistake", functools.partial(_gates_reordered, api), 1, "rnn", "gate_order",
            api=api)
        add("TransformerEncoderLayer ported with 2 heads, not 4", "mistake",
            (lambda: _pair(sp.torch_encoder(), sp.linen_encoder_heads(), seq, **same)) if api == "linen" else
            (lambda: _pair(sp.torch_encoder(), sp.nnx_encoder_heads(), seq, **same)), 1, "layer.self_attn",
            "attention_heads", api=api)
    add("'SAME' padding at stride 2", "mistake", lambda: _pair(ex.torch_resnet(), ex.linen_resnet_same_padding(), resnet_x),
        1, "layer2.0.conv1", "same_padding", api="linen")
    add("pooling stride left at Flax's default", "mistake",
        lambda: _pair(ex.torch_resnet(), ex.linen_resnet_pool_stride(), resnet_x), 1, "layer1.0.conv1", "pool_stride",
        api="linen")
    add("BatchNorm momentum copied from torch", "mistake",
        lambda: _pair(ex.torch_resnet(), ex.linen_resnet_bn_momentum(), resnet_x), 1, "bn1", "bn_momentum", "training",
        api="linen")
    add("BatchNorm eps", "mistake", lambda: _pair(ex.torch_resnet(), ex.nnx_resnet_bn_eps(), resnet_x), 1, "bn1",
        "norm_eps", api="nnx")
    add("LayerNorm eps left at Flax's default", "mistake",
        lambda: _pair(ex.torch_mlp_block(), ex.linen_mlp_block_ln_eps(), mlp_x), 1, "norm1", "norm_eps", api="linen")
    add("GELU: Flax's tanh default against torch's exact", "mistake",
        lambda: _pair(ex.torch_mlp_block(), ex.linen_mlp_block_gelu_tanh(), mlp_x), 1, "fc2", "gelu_approximation",
        api="linen")
    add("dropout left on in eval mode", "mistake",
        lambda: _pair(ex.torch_mlp_block_dropout_on(), ex.linen_mlp_block(), mlp_x), 1, "fc2", "dropout_on", api="linen")
    add("torchvision ResNet-18 port with 'SAME' padding", "mistake",
        lambda: _pair(tv.torch_resnet18(), tv.LinenResNet18Same(), image), 1, "layer2.0.conv1", "same_padding",
        api="linen")
    add("SqueezeNet port without ceil_mode", "mistake",
        lambda: _pair(tv.torch_squeezenet(), tv.LinenSqueezeNetFloor(), small), 1, "features.3.squeeze", "pool_ceil_mode",
        api="linen")
    add("Hugging Face BERT, Flax LayerNorm eps", "mistake", functools.partial(_hugging_face, "bert", layer_norm_eps=1e-6),
        1, "embeddings.LayerNorm", "norm_eps", api="hugging face")
    add("Hugging Face GPT-2, Flax LayerNorm eps", "mistake",
        functools.partial(_hugging_face, "gpt2", layer_norm_epsilon=1e-3), 1, "h.0.ln_1", "norm_eps", api="hugging face")
    add("Hugging Face DistilBERT, Flax activation relu", "mistake",
        functools.partial(_hugging_face, "distilbert", activation="relu"), 1, "transformer.layer.0.ffn.lin2",
        "activation", api="hugging face")
    add("Hugging Face ViT, Flax tanh GELU", "mistake", functools.partial(_hugging_face, "vit", hidden_act="gelu_new"), 1,
        "encoder.layer.0.output.dense", "gelu_approximation", api="hugging face")
    add("Hugging Face RegNet (as published: its Flax Y-layers keep their BatchNorms on running statistics in train "
        "mode)", "mistake", functools.partial(_hugging_face, "regnet"), 1, "encoder.stages.0.layers.0.layer.0.normalization",
        "bn_frozen_in_train", "training", api="hugging face")

    # pairs the checker must refuse, with the reason
    add("nn.GRU ↔ nnx.RNN(GRUCell): nnx.GRUCell has no place for torch's b_hn", "refused",
        lambda: _pair(sp.torch_gru(), sp.nnx_gru(), rec, **same), 2, refusal="nnx.GRUCell has no bias on its hidden",
        api="nnx")
    add("a Flax port that lost layers", "refused", lambda: _pair(ex.torch_mlp_block(), st.two_dense(), mlp_x), 2,
        refusal="weights not transferred", api="linen")
    add("a model without weights", "refused", lambda: _pair(st.torch_weightless(), st.LinenWeightless(), mlp_x), 2,
        refusal="neither model holds any weights", api="linen")
    add("a (N, T, D) sequence moved channels-last", "refused", lambda: _pair(sp.torch_encoder(), sp.linen_encoder(), seq),
        2, refusal="--flax-layout same", api="linen")
    return out


def _project_pair(model: str, api: str) -> dict:
    from flax import nnx  # noqa: PLC0415

    from flax_impl import models as flax_models  # noqa: PLC0415
    from flax_impl import models_nnx  # noqa: PLC0415
    from torch_ref import models as torch_models  # noqa: PLC0415

    flax_model = flax_models.MODULES[model]() if api == "linen" else models_nnx.MODULES[model](rngs=nnx.Rngs(0))
    return _pair(torch_models.create_model(model), flax_model, gaussian((8, 1, 28, 28)))


def _family(api: str, linen, nnx_cls, *args, **kwargs):
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    return linen(*args, **kwargs) if api == "linen" else pl.nnx_model(nnx_cls, *args, **kwargs)


def _pool(api: str, mistake: str | None) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    ceil = mistake in ("pool_ceil_mode", "ceil_emulated")
    return _pair(pl.torch_model(pl.TorchPool, ceil), _family(api, pl.LinenPool, pl.NNXPool, mistake), gaussian(pl.IMAGE))


def _activation(api: str, torch_act: str, flax_act: str) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    return _pair(pl.torch_model(pl.TorchActivation, torch_act),
                 _family(api, pl.LinenActivation, pl.NNXActivation, flax_act), gaussian(pl.VECTOR))


def _residual(api: str, mistake: str | None) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    if api == "linen":
        flax = pl.LinenResidual(train_statistics=True) if mistake == "batch_stats_in_eval" else pl.LinenResidual(mistake)
    else:
        flax = pl.nnx_model(pl.NNXResidual, mistake)
    return _pair(pl.torch_model(pl.TorchResidual), flax, gaussian(pl.IMAGE))


def _head(api: str, log: bool) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    return _pair(pl.torch_model(pl.TorchHead, log), _family(api, pl.LinenHead, pl.NNXHead, log, 0), gaussian(pl.VECTOR))


def _attention(api: str, mistake: str | None) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    return _pair(pl.torch_model(pl.TorchAttention), _family(api, pl.LinenAttention, pl.NNXAttention, mistake),
                 gaussian(pl.SEQUENCE), flax_layout="same")


def _norm(api: str) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    return _pair(pl.torch_model(pl.TorchNorm), _family(api, pl.LinenNorm, pl.NNXNorm, (-2, -1)), gaussian(pl.SEQUENCE),
                 flax_layout="same")


def _padding(api: str, mode: str, mistake: str | None) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    return _pair(pl.torch_model(pl.TorchPadding, mode), _family(api, pl.LinenPadding, pl.NNXPadding, mode, mistake),
                 gaussian(pl.IMAGE))


def _bias(api: str, torch_bias: bool, flax_bias: bool) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    return _pair(pl.torch_model(pl.TorchBias, torch_bias), _family(api, pl.LinenBias, pl.NNXBias, flax_bias),
                 gaussian(pl.VECTOR))


def _kernel_reshaped(api: str) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    def plant(variables, state):
        conv = _params(variables)["conv1" if api == "nnx" else "Conv_0"]
        conv["kernel"] = state["conv1.weight"].reshape(conv["kernel"].shape)
    return _converted(pl.torch_model(pl.TorchPool), _family(api, pl.LinenPool, pl.NNXPool), gaussian(pl.IMAGE), plant)


def _kernel_swapped(api: str) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    def plant(variables, state):
        _params(variables)["conv1" if api == "nnx" else "Conv_0"]["kernel"] = state["conv1.weight"].transpose(3, 2, 1, 0)
    return _converted(pl.torch_model(pl.TorchPool), _family(api, pl.LinenPool, pl.NNXPool), gaussian(pl.IMAGE), plant)


def _square_untransposed(api: str) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    def plant(variables, state):
        _params(variables)["query"]["kernel"] = state["query.weight"].copy()
    return _converted(pl.torch_model(pl.TorchAttention), _family(api, pl.LinenAttention, pl.NNXAttention),
                      gaussian(pl.SEQUENCE), plant, flax_layout="same")


def _variance_as_std(api: str) -> dict:
    from parity_tests.ports import planted as pl  # noqa: PLC0415

    def plant(variables, state):
        stats = variables["batch_stats"]["BatchNorm_0"] if api == "linen" else variables["bn1"]
        stats["var"] = np.sqrt(state["bn1.running_var"])
    return _converted(pl.torch_model(pl.TorchResidual), _family(api, pl.LinenResidual, pl.NNXResidual),
                      gaussian(pl.IMAGE), plant)


def _gates_reordered(api: str) -> dict:
    from parity_tests.ports import sequence_ports as sp  # noqa: PLC0415

    def plant(variables, state):
        cell = _params(variables)["rnn"]["cell"] if api == "nnx" else _params(variables)["OptimizedLSTMCell_0"]
        if api == "nnx":  # stacked i, f, g, o: f and g swapped
            for key in ("dense_i/kernel", "dense_h/kernel", "dense_h/bias"):
                node, leaf = cell[key.split("/")[0]], key.split("/")[1]
                i, f, g, o = np.split(node[leaf], 4, axis=-1)
                node[leaf] = np.concatenate([i, g, f, o], axis=-1)
        else:
            cell["if"], cell["ig"] = cell["ig"], cell["if"]
            cell["hf"], cell["hg"] = cell["hg"], cell["hf"]
    flax = sp.linen_optimized_lstm() if api == "linen" else sp.nnx_optimized_lstm()
    return _converted(sp.torch_lstm(), flax, gaussian(sp.RECURRENT_INPUT), plant, flax_layout="same")


def _hugging_face(name: str, **overrides) -> dict:
    from parity_tests.ports import hugging_face  # noqa: PLC0415

    torch_model, flax_model, inputs = hugging_face.twins(name, **overrides)
    return _pair(torch_model, flax_model, inputs, flax_layout="same")


# --- the table ----------------------------------------------------------------------------------------------

def table(results: list[tuple[Case, Outcome]]) -> str:
    lines = ["| # | pair | Flax | expected | exit | layer named | cause named (refusals: the message) | as expected | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, (case, outcome) in enumerate(results, 1):
        expected = {0: "pass", 1: f"{case.layer}: {case.cause}", 2: f"refused: {case.refusal}"}[case.exit]
        message = outcome.message.replace("; complete the skeleton mapping and pass it with --mapping", "")
        said = outcome.cause or (message[:400].replace("|", "/") if outcome.exit >= 2 else "")
        lines.append(f"| {i} | {case.name} | {case.api} | {expected} | {outcome.exit} | {outcome.layer or ''} | "
                     f"{said} | {'yes' if outcome.meets(case) else '**no**'} | {outcome.seconds:.1f} |")
    return "\n".join(lines)


def totals(results: list[tuple[Case, Outcome]]) -> dict[str, str]:
    correct = [o for c, o in results if c.group == "correct"]
    mistakes = [(c, o) for c, o in results if c.group == "mistake"]
    refused = [(c, o) for c, o in results if c.group == "refused"]
    return {
        "correct pairs passed": f"{sum(o.exit == 0 for o in correct)} of {len(correct)}",
        "mistakes localised (exit 1 at the planted layer)":
            f"{sum(o.exit == 1 and o.layer == c.layer for c, o in mistakes)} of {len(mistakes)}",
        "mistakes with their specific cause": f"{sum(o.meets(c) for c, o in mistakes)} of {len(mistakes)}",
        "refusals with their reason (exit 2)": f"{sum(o.meets(c) for c, o in refused)} of {len(refused)}",
        "crashes (exit 3)": str(sum(o.exit == 3 for _, o in results)),
    }
