"""conv_impl="onednn" (flax_impl/onednn_conv.py), the opt-in: oneDNN's forward, input gradient and weight
gradient against XLA's convolution on every conv layer of the five models, a whole training step
against "gemm", both Flax APIs' layers, concurrent calls and buffers of the wrong shape. Those need the
built extension: skipped, with the reason, where it is not built (CI builds it and requires them,
parity_tests/onednn.py). The loader's refusals (not built, a failed build, a truncated or replaced
library, a folder others can write) need no compiler and run everywhere."""

from __future__ import annotations

import _json
import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_parity.errors import UsageError
from cnn_parity.recipes import load_recipe
from cnn_parity.weights import CONV_GEOMETRY, LAYERS
from flax_impl import kernels, models, models_nnx, onednn_conv
from flax_impl.train import create_train_state, resolve_conv_impl, train_step
from parity_tests.onednn import skip_unless_built


@pytest.fixture
def built():
    skip_unless_built()

# max |Δ| / max |reference| against lax.conv_general_dilated at "highest" precision, float32, batch
# CONV_BATCH of Gaussian inputs, kernels scaled 0.1. Measured, worst layer: forward 1.05e-6
# (cnn_base.conv3), input gradient 1.64e-6 (cnn_base.conv3), weight gradient 3.04e-6 (cnn_2layer.conv1,
# a sum over ~25,000 terms). Each bound is about 4x its measurement: float32 rounding of differently
# ordered sums; a wrong index or layout would be O(1).
FORWARD_REL = 5e-6
INPUT_GRAD_REL = 7e-6
WEIGHT_GRAD_REL = 1.2e-5
CONV_BATCH = 32

CONV_LAYERS = [(model, name, cin, cout, kernel) for model, layers in LAYERS.items()
               for name, cin, cout, kernel in layers if kernel]


def reference_conv(x, kernel, padding):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")


def layer_inputs(model, name, cin, cout, kernel, seed=0):
    side, padding, _ = CONV_GEOMETRY[model][name]
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((CONV_BATCH, side, side, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout), np.float32) * 0.1)
    return x, w, padding


def relative_diffs(x, w, padding):
    """(forward, input gradient, weight gradient) max |Δ| / max |reference|, oneDNN vs XLA."""
    y, pullback = jax.vjp(lambda a, b: onednn_conv.conv(a, b, padding), x, w)
    y_ref, pullback_ref = jax.vjp(lambda a, b: reference_conv(a, b, padding), x, w)
    dy = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape, np.float32))
    pairs = [(y, y_ref), *zip(pullback(dy), pullback_ref(dy))]
    return tuple(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in pairs)


@pytest.mark.parametrize("model,name,cin,cout,kernel", CONV_LAYERS, ids=[f"{m}.{n}" for m, n, *_ in CONV_LAYERS])
def test_forward_and_gradients_match_xla(model, name, cin, cout, kernel, built):
    forward, input_grad, weight_grad = relative_diffs(*layer_inputs(model, name, cin, cout, kernel))
    assert forward <= FORWARD_REL and input_grad <= INPUT_GRAD_REL and weight_grad <= WEIGHT_GRAD_REL, \
        (forward, input_grad, weight_grad)


# One jitted train_step from the same state on the same batch, "onednn" against "gemm": loss and
# parameters afterwards. Measured (loss, parameters): cnn_base 2.4e-7, 1.7e-6; cnn_2layer 0, 1.5e-5.
# The parameters' differences are Adam's: its first update lr·g/(|g| + eps) turns a gradient rounding
# difference near g = 0 into ~lr (parity_tests/bounds.py, UPDATE_ABS); "xla" against "gemm" differs
# as much (1.7e-6, 1.1e-5). Bounds about 4x.
STEP_LOSS_ABS = 1e-6
STEP_PARAM_ABS = {"cnn_base": 7e-6, "cnn_2layer": 6e-5}


@pytest.mark.parametrize("model", ["cnn_base", "cnn_2layer"])
def test_train_step_matches_gemm(model, built):
    recipe = load_recipe(model)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.standard_normal((recipe.batch_size, 28, 28, 1), np.float32)),
             "label": jnp.asarray(rng.integers(0, 10, recipe.batch_size), jnp.int32)}
    step = jax.jit(train_step)
    results = {}
    for conv_impl in ("gemm", "onednn"):
        state = create_train_state(recipe, jax.random.key(0), conv_impl=conv_impl)
        results[conv_impl] = step(state, batch, jax.random.key(1))
    compiled = step.lower(state, batch, jax.random.key(1)).compile().as_text()
    assert "onednn_conv_backward_weights" in compiled  # the step really runs oneDNN's convolutions
    (gemm_state, gemm_metrics), (onednn_state, onednn_metrics) = results["gemm"], results["onednn"]
    assert abs(float(gemm_metrics["loss"]) - float(onednn_metrics["loss"])) <= STEP_LOSS_ABS
    param_diff = max(float(jnp.max(jnp.abs(a - b)))
                     for a, b in zip(jax.tree.leaves(gemm_state.params), jax.tree.leaves(onednn_state.params)))
    assert param_diff <= STEP_PARAM_ABS[model], param_diff


def test_both_apis_convolve_through_onednn_and_pool_as_gemm():
    linen = models.create_model("lenet", kernels=kernels.ONEDNN)
    nnx_model = models_nnx.create_model("lenet", kernels=kernels.ONEDNN, rngs=nnx.Rngs(params=0))
    assert linen.kernels.conv_keywords()["conv_general_dilated"] is kernels.ONEDNN.conv_general_dilated
    assert nnx_model.conv1.conv_general_dilated is kernels.ONEDNN.conv_general_dilated
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3), np.float32))
    np.testing.assert_array_equal(kernels.ONEDNN.pool(x), kernels.max_pool_2x2(x))


@pytest.mark.parametrize("target,operand_shapes,result_shape", [
    ("onednn_conv_forward", [(2, 8, 8, 3), (3, 3, 3, 4)], (2, 6, 6, 5)),  # y's channels != the kernel's O
    ("onednn_conv_forward", [(2, 8, 8, 3), (3, 3, 3, 4)], (2, 7, 6, 4)),  # y's height != H - KH + 1
    ("onednn_conv_backward_data", [(2, 6, 6, 4), (3, 3, 3, 4)], (1, 8, 8, 3)),  # dx's batch != dy's
    ("onednn_conv_backward_weights", [(2, 8, 8, 3), (2, 5, 6, 4)], (3, 3, 3, 4)),  # dy != the geometry
    ("onednn_conv_forward", [(2, 8, 8, 3), (3, 3, 2, 4)], (2, 6, 6, 4)),  # channels disagree
])
def test_buffers_that_disagree_with_the_geometry_are_refused(target, operand_shapes, result_shape, built):
    """The handlers check every buffer against the geometry before oneDNN writes: an error, not a
    write past a buffer."""
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(result_shape, jnp.float32))
    operands = [jnp.ones(shape, jnp.float32) for shape in operand_shapes]
    with pytest.raises(Exception, match="onednn_conv: (output|input channels)"):
        jax.block_until_ready(call(*operands, padding=np.int64(0)))


def test_concurrent_calls_agree_with_a_single_call(built):
    """Two threads running the same shape at once (JAX releases the GIL while XLA runs) get what one
    call alone gets, bit for bit: no call writes into another's buffers."""
    x, w, padding = layer_inputs("cnn_base", "conv2", 16, 32, 5)

    @jax.jit
    def forward_and_gradients(x, w):
        y, pullback = jax.vjp(lambda a, b: onednn_conv.conv(a, b, padding), x, w)
        return (y, *pullback(jnp.sin(y)))

    expected = forward_and_gradients(x, w)
    results = [[] for _ in range(2)]

    def worker(out):
        for _ in range(10):
            out.append(jax.block_until_ready(forward_and_gradients(x, w)))

    threads = [threading.Thread(target=worker, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in (r for out in results for r in out):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """An empty per-user cache and a stand-in oneDNN version, the loader's per-process memory cleared
    (and cleared again afterwards, so later tests load the real build)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(onednn_conv, "onednn_version", lambda: "9.9.9")
    onednn_conv._load.cache_clear()
    yield onednn_conv.build_folder("9.9.9")
    onednn_conv._load.cache_clear()


def fake_build(folder, library_bytes: bytes):
    """A build folder as `build` leaves it, holding `library_bytes` as the library."""
    folder.mkdir(mode=0o700, parents=True)
    (folder / onednn_conv.LIBRARY_NAME).write_bytes(library_bytes)
    manifest = {"sha256": hashlib.sha256(library_bytes).hexdigest()}
    (folder / onednn_conv.MANIFEST_NAME).write_text(json.dumps(manifest))


def test_not_built_is_one_line_naming_the_build_command(fresh_loader):
    built, why = onednn_conv.status()
    assert not built and why.endswith(f"build it: `{onednn_conv.BUILD_COMMAND}`") and "\n" not in why
    with pytest.raises(UsageError, match=r"conv_impl onednn: not built for oneDNN 9\.9\.9"):
        resolve_conv_impl("onednn", "lenet")


def test_a_failed_build_is_remembered_and_reported_with_the_fix(fresh_loader, monkeypatch):
    error = "onednn_conv.cc:31:10: fatal error: oneapi/dnnl/dnnl.hpp: No such file or directory"
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1, "", error))
    with pytest.raises(onednn_conv.Unavailable, match="the build failed") as raised:
        onednn_conv.build(report=lambda line: None)
    assert error in str(raised.value) and "apt-get install libdnnl-dev g++" in str(raised.value)

    def no_compiler(command, **kw):
        raise AssertionError("a load must not compile")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    onednn_conv._load.cache_clear()  # as in a later process
    built, why = onednn_conv.status()
    assert not built and error in why and onednn_conv.BUILD_COMMAND in why


def test_concurrent_builds_run_one_at_a_time_and_the_waiter_keeps_the_first(fresh_loader, monkeypatch):
    """Two builds at once (threads here; flock excludes separate opens as it does processes): one
    compiles, the other waits on the lock and finds that build, intact, instead of compiling again."""
    compiling, compiled = [], []

    def slow_compiler(command, **kw):
        compiling.append(command)
        assert len(compiling) - len(compiled) == 1, "two compilations at once"
        time.sleep(0.3)
        Path(command[command.index("-o") + 1]).write_bytes(b"\x7fELF built")
        compiled.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", slow_compiler)
    reports = []
    threads = [threading.Thread(target=onednn_conv.build, kwargs={"report": reports.append}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(compiled) == 1 and sum(line.startswith("already built") for line in reports) == 1
    assert onednn_conv._recorded_build(fresh_loader) is not None


def test_a_truncated_library_is_refused_not_loaded(fresh_loader):
    fake_build(fresh_loader, b"\x7fELF" + bytes(8000))
    library = fresh_loader / onednn_conv.LIBRARY_NAME
    library.write_bytes(library.read_bytes()[:4096])
    built, why = onednn_conv.status()
    assert not built and "SHA-256 differs" in why and onednn_conv.BUILD_COMMAND in why


def test_another_library_in_its_place_is_one_line_not_an_attribute_error(fresh_loader):
    fake_build(fresh_loader, Path(_json.__file__).read_bytes())  # a valid shared library without the handlers
    built, why = onednn_conv.status()
    assert not built and why.startswith("cannot load") and onednn_conv.BUILD_COMMAND in why


def test_a_build_folder_others_can_write_is_refused(fresh_loader):
    fake_build(fresh_loader, b"planted")
    fresh_loader.chmod(0o777)
    built, why = onednn_conv.status()
    assert not built and why.startswith("refusing to build or load") and "writable by group or others" in why


def test_onednn_off_the_cpu_backend_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(UsageError, match="conv_impl onednn runs on the CPU only; JAX's backend here is gpu"):
        resolve_conv_impl("onednn", "lenet")


def test_the_library_loaded_is_the_bytes_that_were_hashed(fresh_loader, monkeypatch):
    """The loader hashes the file's bytes and loads those very bytes (an in-memory copy), so a library
    swapped in on disk after the check is never what runs."""
    library_bytes = Path(_json.__file__).read_bytes()
    fake_build(fresh_loader, library_bytes)
    opened = []

    def record(path, *args, **kwargs):
        opened.append((path, Path(path).read_bytes()))
        (fresh_loader / onednn_conv.LIBRARY_NAME).write_bytes(b"swapped in after the check")
        raise OSError("recorded")

    monkeypatch.setattr(onednn_conv.ctypes, "CDLL", record)
    built, why = onednn_conv.status()
    assert not built and "recorded" in why
    ((path, data),) = opened
    assert path.startswith("/proc/self/fd/") and data == library_bytes


def test_a_cache_folder_linked_into_another_users_folder_is_refused(fresh_loader, tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root, to give a folder to another user")
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 65534, 65534)
    (other / "cnn_parity").mkdir(mode=0o700)
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    (cache / "cnn_parity").symlink_to(other / "cnn_parity")
    onednn_conv._load.cache_clear()
    folder = onednn_conv.build_folder("9.9.9")
    fake_build(folder, b"planted")
    built, why = onednn_conv.status()
    assert not built and why.startswith("refusing to build or load") and "owned by uid 65534" in why
