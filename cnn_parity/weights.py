"""The canonical, framework-neutral form of a model's weights, and its safetensors file format.

Canonical naming and layout are PyTorch's `state_dict` ones, as numpy float32 arrays:
  `<layer>.weight`: Conv (out, in, kh, kw) [OIHW]; Linear (out, in);
  `<layer>.bias`:   (out,).
A Linear that follows a flatten of feature maps (e.g. lenet's fc1) takes its inputs in
channel-major (C, H, W) order, as PyTorch flattens NCHW. Each framework converts only to and from
this form (flax_impl/convert.py, torch_ref/convert.py); files exported by either are identical in
format and can be loaded by both.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from cnn_parity.data import IMAGE_SHAPE
from cnn_parity.recipes import MODELS
from cnn_parity.errors import UsageError
from cnn_parity.files import write_bytes_atomic
from cnn_parity.specs import spec

# Per model, in forward order: (name, in_features / in_channels, out, kernel size or None for Linear);
# each model's [architecture] table (cnn_parity/specs.py).
LAYERS: dict[str, list[tuple[str, int, int, int | None]]] = {
    model: [(layer.name, layer.inputs, layer.outputs, layer.kernel) for layer in spec(model).layers] for model in MODELS}

# Per convolution, in forward order: its zero padding, and whether a 2x2 max-pool follows it. All are
# square, stride 1 and undilated, and the first one sees the whole image.
_CONVOLUTIONS: dict[str, dict[str, tuple[int, bool]]] = {
    model: {layer.name: (layer.padding, layer.pooled) for layer in spec(model).layers if layer.kernel}
    for model in MODELS}

# The weights a model's source initialised explicitly, and with what, under either init scheme (the
# recipe's `init` decides every other weight and every bias). Each framework implements each
# initialiser named here: flax_impl/models.py, torch_ref/models.py, cnn_parity/shared_rng.py.
EXPLICIT_WEIGHT_INITS: dict[str, dict[str, str]] = {
    model: spec(model).explicit_init for model in MODELS if spec(model).explicit_init}


def _convolved(side: int, padding: int, kernel: int) -> int:
    """Output height = width of a square, stride-1, undilated convolution."""
    return side + 2 * padding - kernel + 1


def _feature_maps(model: str) -> tuple[dict[str, tuple[int, int, bool]], tuple[int, int, int]]:
    """Each convolution's (input side, padding, pooled), and the (C, H, W) of the last feature map
    (mlp: the image)."""
    channels, side, geometry = 1, IMAGE_SHAPE[0], {}
    for name, _, out, kernel in LAYERS[model]:
        if kernel is not None:
            padding, pooled = _CONVOLUTIONS[model][name]
            geometry[name] = (side, padding, pooled)
            side = _convolved(side, padding, kernel) // (2 if pooled else 1)
            channels = out
    return geometry, (channels, side, side)


# Per convolution: input height = width, zero padding, and whether a 2x2 max-pool follows it.
CONV_GEOMETRY: dict[str, dict[str, tuple[int, int, bool]]] = {model: _feature_maps(model)[0] for model in LAYERS}

# The Linear layer that consumes flattened feature maps, with the (C, H, W) shape it flattens.
FLATTENED_INPUT: dict[str, tuple[str, tuple[int, int, int]]] = {
    model: (next(name for name, _, _, kernel in LAYERS[model] if kernel is None), _feature_maps(model)[1])
    for model in LAYERS}


def conv_output_side(model: str, layer: str) -> int:
    """Output height = width of a convolution of `model` (before its pooling)."""
    side, padding, _ = CONV_GEOMETRY[model][layer]
    kernel = {name: k for name, _, _, k in LAYERS[model]}[layer]
    return _convolved(side, padding, kernel)


def canonical_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Name → shape of every canonical tensor of `model`, in forward order."""
    if model not in LAYERS:
        raise UsageError(f"unknown model {model!r}; choose one of: {', '.join(LAYERS)}")
    shapes = {}
    for name, fan_in, out, kernel in LAYERS[model]:
        shapes[f"{name}.weight"] = (out, fan_in, kernel, kernel) if kernel else (out, fan_in)
        shapes[f"{name}.bias"] = (out,)
    return shapes


def check_canonical(model: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Raise UsageError unless `arrays` has exactly the canonical names and shapes of `model`."""
    expected = canonical_shapes(model)
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise UsageError(f"weights are not a {model}: missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != shape:
            raise UsageError(f"{model} weight {name} has shape {tuple(arrays[name].shape)}, expected {shape}")


def save_safetensors(path: str | os.PathLike, model: str, arrays: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write canonical weights atomically; the file's metadata names the model (and anything in
    `metadata`). A failed write raises OSError and leaves nothing behind."""
    from safetensors.numpy import save

    if model in LAYERS:  # a pair of the user's own: its geometry is the pair's, checked where it is loaded
        check_canonical(model, arrays)
    names = canonical_shapes(model) if model in LAYERS else arrays
    tensors = {name: np.ascontiguousarray(arrays[name], dtype=np.float32) for name in names}
    # Serialised in memory and written by us: safetensors' own writer reports a full disk as its own
    # exception type, not as the OSError every other write raises.
    write_bytes_atomic(path, save(tensors, metadata={"format": "cnn_parity", "model": model, **(metadata or {})}))


def load_safetensors(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """(model, canonical arrays, metadata) from a file written by `save_safetensors`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except OSError as e:
        raise UsageError(f"cannot read weights {path}: {e.strerror or e}") from None
    except (SafetensorError, ValueError) as e:  # truncated, empty or not a safetensors file at all
        raise UsageError(f"{path} is not a readable .safetensors file ({e})") from None
    model = metadata.get("model")
    if metadata.get("format") != "cnn_parity" or not model:
        raise UsageError(f"{path} holds no cnn_parity model (its metadata names {model!r})")
    if model in LAYERS:
        check_canonical(model, arrays)
    for name, array in arrays.items():
        if array.dtype != np.float32:
            raise UsageError(f"{path}: {name} is {array.dtype}, expected float32")
    return model, arrays, metadata


def read_canonical(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of any safetensors file of canonical weights (the model checker's, for one)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(os.fspath(path))
    except OSError as e:
        raise UsageError(f"cannot read weights {path}: {e.strerror or e}") from None
    except (SafetensorError, ValueError) as e:
        raise UsageError(f"{path} is not a readable .safetensors file ({e})") from None
