"""The convolution tiers' formulations (flax_impl/convolutions.py, kernels.py): every implementation of
each part against XLA's convolution on every conv layer of the five models; that inside the trainer's
compiled loop every convolution the pure-JAX and jaxlib-oneDNN tiers leave to XLA is a canonical one
on its convolution kernel; jaxlib's oneDNN self-test and what happens when it fails; the XLA options.
(The tiers against PyTorch: the parity suite, parity_tests/test_conv_impls.py.)"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_parity.recipes import load_recipe
from cnn_parity.weights import CONV_GEOMETRY, LAYERS
from flax_impl import jaxlib_onednn, kernels
from flax_impl.convolutions import FORWARD, INPUT_GRADIENT, WEIGHT_GRADIENT, Formulation, formulation
from flax_impl.train import FlaxTrainer

# max |Δ| / max |reference| against lax.conv_general_dilated at "highest" precision, float32, batch
# CONV_BATCH of Gaussian inputs, kernels scaled 0.1. Measured, worst layer (jaxlib 0.10.2): forward
# 1.05e-6 (onednn, cnn_base.conv3), input gradient 1.07e-6 (onednn, cnn_2layer.conv2), weight gradient
# 3.49e-6 (onednn, cnn_2layer.conv1: a sum over ~25,000 terms); "xla" is XLA's own convolution, equal to
# the reference. Each bound is about 4x its measurement: float32 rounding of differently ordered sums;
# a wrong index, flip or layout would be O(1).
FORWARD_REL = 5e-6
INPUT_GRAD_REL = 5e-6
WEIGHT_GRAD_REL = 1.5e-5
CONV_BATCH = 32

CONV_LAYERS = [(model, name) for model, layers in LAYERS.items() for name, _, _, kernel in layers if kernel]


def reference_conv(x, kernel, padding):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")


def relative(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("model,name", CONV_LAYERS, ids=[f"{m}.{n}" for m, n in CONV_LAYERS])
def test_every_formulation_matches_xla_on_every_layer(model, name):
    cin, cout, size, padding, side = kernels.geometry(model, name)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((CONV_BATCH, side, side, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((size, size, cin, cout), np.float32) * 0.1)
    y_ref, pullback_ref = jax.vjp(lambda a, b: reference_conv(a, b, padding), x, w)
    dy = jnp.asarray(np.random.default_rng(1).standard_normal(y_ref.shape, np.float32))
    dx_ref, dw_ref = pullback_ref(dy)
    forwards = [f for f in FORWARD if f != "direct" or cin == 1]
    # Each part varies on its own (the others "xla"): every implementation of every part is checked.
    for parts in ([Formulation(f, "xla", "xla") for f in forwards] + [Formulation("xla", d, "xla") for d in INPUT_GRADIENT]
                  + [Formulation("xla", "xla", w_) for w_ in WEIGHT_GRADIENT]):
        y, pullback = jax.vjp(lambda a, b: formulation(parts)(a, b, padding), x, w)
        dx, dw = pullback(dy)
        diffs = relative(y, y_ref), relative(dx, dx_ref), relative(dw, dw_ref)
        assert diffs[0] <= FORWARD_REL and diffs[1] <= INPUT_GRAD_REL and diffs[2] <= WEIGHT_GRAD_REL, (parts, diffs)


def test_formulations_take_any_float_dtype_through_xla_where_onednn_cannot():
    """oneDNN computes float32 only: in float64 (the parity suite's trajectory) its parts run as XLA's."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)))
        w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 3, 4)))
        y = formulation(Formulation("onednn", "onednn", "onednn"))(x, w, 1)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, reference_conv(x, w, 1), rtol=1e-12, atol=1e-12)


def test_no_such_formulation_is_an_error():
    with pytest.raises(ValueError, match="no such formulation"):
        formulation(Formulation("direct", "gemm", "xla"))
    with pytest.raises(ValueError, match="one input channel"):
        FORWARD["direct"](jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 1)), 0)


def test_the_tables_name_real_layers_and_real_formulations():
    for default, layers in ((kernels.CANONICAL_DEFAULT, kernels.CANONICAL_LAYERS),
                            (kernels.JAXLIB_ONEDNN_DEFAULT, kernels.JAXLIB_ONEDNN_LAYERS)):
        for (model, layer), parts in [(("lenet", "conv1"), default), *layers.items()]:
            assert layer in CONV_GEOMETRY[model]
            formulation(parts)  # raises for a name that is no implementation
    assert kernels.JAXLIB_ONEDNN.convolve.parts(kernels.geometry("lenet", "conv2")).weight_gradient == "onednn"
    assert kernels.JAXLIB_ONEDNN.convolve.parts(kernels.geometry("cnn_base", "conv2")) == kernels.JAXLIB_ONEDNN_DEFAULT


def _compiled_chunk(model: str, conv_impl: str) -> str:
    trainer = FlaxTrainer(load_recipe(model), conv_impl=conv_impl)
    lowered = trainer.steps.train_chunk.lower(trainer.state, trainer.train_data, trainer.epoch_order(1), 0, 50,
                                              trainer.dropout_key, **trainer.step_options)
    return lowered.compile().as_text()


def _convolutions(hlo: str) -> list[tuple[bool, str]]:
    """(inside a fused computation, dim_labels) of every convolution in a compiled program's HLO."""
    found = []
    for computation in hlo.split("\n\n"):
        fused = any(word in computation.strip().split("\n")[0] for word in ("fused", "ynn", "wrapped"))
        found += [(fused, label) for label in re.findall(r" convolution\(.*?dim_labels=([^,]+),", computation)]
    return found


# Convolutions XLA computes / oneDNN calls in one step of the chunked loop, by (tier, model).
EXPECTED = {("canonical", "lenet"): (3, 0), ("canonical", "cnn_base"): (7, 0), ("canonical", "cnn_2layer"): (4, 0),
            ("canonical", "fashion_cnn"): (3, 0), ("jaxlib-onednn", "lenet"): (1, 4),
            ("jaxlib-onednn", "cnn_base"): (2, 6), ("jaxlib-onednn", "cnn_2layer"): (1, 3),
            ("jaxlib-onednn", "fashion_cnn"): (2, 3)}


@pytest.mark.parametrize("conv_impl,model", list(EXPECTED))
def test_inside_the_chunked_loop_every_convolution_stays_on_a_convolution_kernel(conv_impl, model):
    """Autodiff's gradient convolutions carry other dimension labels and, inside a while loop, fall to
    XLA:CPU's generic loop nests; these tiers' gradients are canonical forward convolutions (NHWC ×
    HWIO → NHWC, b01f_01io->b01f), never fused into a loop or handed to YNNPACK, and the oneDNN tier's
    calls are all there."""
    if conv_impl == "jaxlib-onednn" and not jaxlib_onednn.status()[0]:
        pytest.skip(f"jaxlib-onednn: {jaxlib_onednn.status()[1]}")
    hlo = _compiled_chunk(model, conv_impl)
    convolutions = _convolutions(hlo)
    assert convolutions and all(c == (False, "b01f_01io->b01f") for c in convolutions), convolutions
    calls = hlo.count(f'custom_call_target="{jaxlib_onednn.TARGET}"')
    assert (len(convolutions), calls) == EXPECTED[conv_impl, model]


def test_stock_autodiff_leaves_non_canonical_convolutions_in_the_loop():
    """The control: the "xla" tier's gradients keep autodiff's dimension labels."""
    assert any(label != "b01f_01io->b01f" for _, label in _convolutions(_compiled_chunk("lenet", "xla")))


@pytest.fixture
def fresh_status(monkeypatch):
    """jaxlib_onednn.status decided afresh, with the child running what the test sets."""
    jaxlib_onednn.status.cache_clear()
    yield lambda code: monkeypatch.setattr(jaxlib_onednn, "SELF_TEST_CODE", code)
    jaxlib_onednn.status.cache_clear()


def test_the_self_test_passes_here(fresh_status):
    usable, why = jaxlib_onednn.status()
    assert usable, why
    assert re.fullmatch(r"self-test passed \(worst relative difference from lax\.conv \S+\)", why)


@pytest.mark.parametrize("code,why", [
    ("import os; os.abort()", r"its self-test failed \(exit status -6"),
    ("print('{}')", r"its self-test said nothing readable \(\{\}\)"),
    ("print('{\"worst_relative_difference\": 0.5}')", r"computing something else than lax\.conv \(relative difference 0\.5\)"),
    ("print('{\"worst_relative_difference\": NaN}')", r"computing something else than lax\.conv"),
])
def test_a_failed_self_test_says_why_and_the_default_falls_back(code, why, fresh_status, capsys):
    """A config XLA misreads makes oneDNN throw inside XLA, which aborts the process: the self-test runs
    in a child, and any way it can fail leaves the parent with a reason and the pure-JAX tier."""
    fresh_status(code)
    usable, reason = jaxlib_onednn.status()
    assert not usable and re.search(why, reason), reason
    from flax_impl.train import resolve_conv_impl
    assert resolve_conv_impl("auto", "lenet") == "canonical"
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_rejected_xla_option_is_dropped_with_one_line(capsys):
    options = (("xla_cpu_experimental_ynn_fusion_type", "NO_SUCH_FUSION"),)
    assert kernels.supported_options(options) == {}
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("XLA option xla_cpu_experimental_ynn_fusion_type=NO_SUCH_FUSION not used")
    assert kernels.supported_options(kernels.NO_YNN_CONVOLUTIONS) == dict(kernels.NO_YNN_CONVOLUTIONS)


def test_no_ynn_convolutions_keeps_xla_on_its_own_kernel():
    """Compiled with the tiers' options, a convolution is XLA's; by default, YNNPACK's."""
    x, k = jnp.ones((2, 12, 12, 16)), jnp.ones((5, 5, 16, 32))
    lowered = jax.jit(lambda x, k: reference_conv(x, k, 0)).lower(x, k)
    assert "__ynn_fusion" in lowered.compile().as_text()
    assert "__ynn_fusion" not in lowered.compile(compiler_options=kernels.supported_options(kernels.NO_YNN_CONVOLUTIONS)).as_text()
