"""Fuzzing the IDX reader: any byte string either decodes to exactly what its header promises, or is
refused with a one-line DataError — never another exception, a hang, or a wrong array."""

from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnn_parity import data
from cnn_parity.errors import DataError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(content: bytes, ndim: int):
    try:
        return data.parse_idx(content, ndim)
    except DataError as e:
        assert "\n" not in str(e)
        return None


@FUZZ
@given(st.binary(max_size=64), st.integers(1, 3))
def test_arbitrary_bytes(content, ndim):
    array = _decode(content, ndim)
    if array is not None:  # accepted: then it must be exactly what the header says
        assert content[:4] == bytes([0, 0, 8, ndim])
        shape = struct.unpack(f">{ndim}I", content[4:4 + 4 * ndim])
        assert array.shape == shape and array.tobytes() == content[4 + 4 * ndim:]


@FUZZ
@given(st.lists(st.integers(0, 6), min_size=1, max_size=3), st.integers(-5, 5), st.integers(1, 3))
def test_well_formed_headers_with_wrong_sizes(shape, size_error, claimed_ndim):
    size = int(np.prod(shape))
    body = bytes(max(size + size_error, 0))
    content = bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + body
    array = _decode(content, claimed_ndim)
    assert (array is not None) == (len(body) == size and claimed_ndim == len(shape))
    if array is not None:
        assert array.shape == tuple(shape)


@FUZZ
@given(st.binary(max_size=200))
def test_gzip_garbage(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("gz") / "file.gz"
    path.write_bytes(b"\x1f\x8b" + payload)
    try:
        content = data.read_file(path)
    except DataError as e:
        assert "\n" not in str(e)
        return
    _decode(content, 3)


def test_image_and_label_counts_that_disagree_are_refused(tmp_path, monkeypatch):
    """Well-formed files whose counts disagree (and whose checksums were 'published') are still refused."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    files = {
        "t10k-images-idx3-ubyte": bytes([0, 0, 8, 3]) + struct.pack(">3I", 10_000, 28, 28) + bytes(10_000 * 784),
        "t10k-labels-idx1-ubyte": bytes([0, 0, 8, 1]) + struct.pack(">I", 9_999) + bytes(9_999),
        "train-images-idx3-ubyte": b"", "train-labels-idx1-ubyte": b"",
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
        monkeypatch.setitem(data.SHA256["mnist"], name, hashlib.sha256(content).hexdigest())
    try:
        data.load_split("mnist", "test", tmp_path)
    except DataError as e:
        assert "disagree" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("a 10,000-image / 9,999-label split was accepted")


def test_gzip_bomb_is_cut_off(tmp_path):
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(bytes(data._MAX_IDX_BYTES + 1000)))
    content = data.read_file(path)
    assert len(content) == data._MAX_IDX_BYTES + 1  # read stops; parse_idx then refuses it
    assert _decode(content, 3) is None
