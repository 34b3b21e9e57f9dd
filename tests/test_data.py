"""The neutral data core against real MNIST / Fashion-MNIST: reading, verifying, locating, downloading."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import shutil
import stat
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from cnn_parity import data
from cnn_parity.errors import DataError

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION_SYSTEM_DIR.is_dir(),
                                   reason="Fashion-MNIST needs the Debian package dataset-fashion-mnist")


def test_mnist_train_matches_published_facts(data_dir):
    images, labels = data.load_split("mnist", "train", data_dir)
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    pixels = images / 255.0
    assert pixels.mean() == pytest.approx(0.1307, abs=5e-5)
    assert pixels.std() == pytest.approx(0.3081, abs=5e-5)


def test_mnist_test_split(data_dir):
    images, labels = data.load_split("mnist", "test", data_dir)
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert set(np.unique(labels)) == set(range(10))


@needs_fashion
def test_fashion_mnist_from_debian_package(isolated_env):
    images, labels = data.load_split("fashion_mnist", "train")  # found in the system folder only
    assert np.bincount(labels).tolist() == [6000] * 10
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert (images / 255.0).mean() == pytest.approx(0.2860, abs=5e-5)
    assert (images / 255.0).std() == pytest.approx(0.3530, abs=5e-5)
    assert np.bincount(data.load_split("fashion_mnist", "test").labels).tolist() == [1000] * 10


def _raw_copy(data_dir: Path, dest: Path) -> Path:
    """Uncompressed copies of MNIST's four files in `dest/mnist`."""
    folder = dest / "mnist"
    folder.mkdir(parents=True)
    for gz in (data_dir / "mnist").glob("*.gz"):
        (folder / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    return folder


def test_raw_and_gzipped_files_give_identical_arrays(data_dir, isolated_env):
    _raw_copy(data_dir, isolated_env / "raw")
    raw = data.load_split("mnist", "test", isolated_env / "raw")
    gz = data.load_split("mnist", "test", data_dir)
    np.testing.assert_array_equal(raw.images, gz.images)
    np.testing.assert_array_equal(raw.labels, gz.labels)


def test_checksum_mismatch_is_rejected(data_dir, isolated_env):
    folder = _raw_copy(data_dir, isolated_env / "d")
    labels = bytearray((folder / "t10k-labels-idx1-ubyte").read_bytes())
    labels[100] = (labels[100] + 1) % 10  # still a well-formed IDX file, but not MNIST
    (folder / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    with pytest.raises(DataError, match="SHA-256"):
        data.load_split("mnist", "test", isolated_env / "d")


def test_truncated_file_is_rejected(data_dir, isolated_env):
    folder = _raw_copy(data_dir, isolated_env / "d")
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated"):
        data.load_split("mnist", "test", isolated_env / "d")


def test_wrong_magic_is_rejected(data_dir, isolated_env):
    folder = _raw_copy(data_dir, isolated_env / "d")
    path = folder / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x09\x01" + path.read_bytes()[4:])  # dtype code 0x09 (int8)
    with pytest.raises(DataError, match="magic number 00000901"):
        data.load_split("mnist", "test", isolated_env / "d")


@pytest.mark.parametrize("content, message", [
    (b"", "no header"),
    (b"\x00\x00\x08\x01\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x01\x02", "truncated"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x01\x02", "trailing bytes"),
    (b"\x00\x00\x08\x02" + struct.pack(">II", 1, 1) + b"\x01", "expected 1 dimension"),
])
def test_parse_idx_rejects_malformed_content(content, message):
    with pytest.raises(DataError, match=message):
        data.parse_idx(content, ndim=1)


def test_parse_idx_reads_what_it_is_given():
    content = b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + bytes(range(6))
    np.testing.assert_array_equal(data.parse_idx(content, ndim=2), [[0, 1, 2], [3, 4, 5]])


def test_gzip_garbage_is_a_data_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(DataError, match="cannot read"):
        data.read_file(path)


def test_lookup_order_data_dir_then_env_then_cache(data_dir, isolated_env, monkeypatch):
    cache_copy = data.cache_dir() / "mnist"
    shutil.copytree(data_dir / "mnist", cache_copy)
    assert data.locate("mnist") == cache_copy
    monkeypatch.setenv("CNN_PARITY_DATA_DIR", str(data_dir))
    assert data.locate("mnist") == data_dir / "mnist"
    explicit = _raw_copy(data_dir, isolated_env / "explicit")
    assert data.locate("mnist", isolated_env / "explicit") == explicit
    assert data.locate("mnist", explicit) == explicit  # a folder holding the files directly


def test_nothing_found_names_every_place_looked(isolated_env, monkeypatch):
    monkeypatch.setenv("CNN_PARITY_DATA_DIR", str(isolated_env / "env"))
    with pytest.raises(DataError) as err:
        data.locate("mnist", isolated_env / "given")
    message = str(err.value)
    assert "\n" not in message
    for place in ("given", "env/mnist", "cache/cnn_parity/mnist", "CNN_PARITY_OFFLINE=1", "--data-dir"):
        assert place in message


@pytest.fixture
def mirror(data_dir):
    """An HTTP server on 127.0.0.1 serving a copy of the real data folder; yields (base URL, served folder)."""
    served = Path(__import__("tempfile").mkdtemp())
    shutil.copytree(data_dir, served, dirs_exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    shutil.rmtree(served)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_from_mirror_verifies_into_cache(mirror, isolated_env, monkeypatch):
    base, _ = mirror
    monkeypatch.delenv("CNN_PARITY_OFFLINE")
    # The first mirror has nothing (404): the downloader must fall through to the second.
    monkeypatch.setenv("CNN_PARITY_MIRROR", f"{base}/missing/ {base}/{{dataset}}/")
    images, labels = data.load_split("mnist", "test")
    assert images.shape == (10_000, 28, 28)
    cached = sorted(p.name for p in (data.cache_dir() / "mnist").iterdir())
    assert cached == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                      "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_download_of_corrupt_file_keeps_nothing(mirror, isolated_env, monkeypatch):
    base, served = mirror
    path = served / "mnist" / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[50] ^= 1
    path.write_bytes(gzip.compress(bytes(content)))
    monkeypatch.delenv("CNN_PARITY_OFFLINE")
    monkeypatch.setenv("CNN_PARITY_MIRROR", f"{base}/{{dataset}}/")
    with pytest.raises(DataError, match="SHA-256"):
        data.locate("mnist")
    leftovers = [p.name for p in (data.cache_dir() / "mnist").iterdir()]
    assert "t10k-labels-idx1-ubyte.gz" not in leftovers and not [n for n in leftovers if n.startswith(".")]


def test_downloaded_and_copied_data_files_get_the_umasks_permissions(mirror, data_dir, isolated_env, monkeypatch):
    base, _ = mirror
    monkeypatch.delenv("CNN_PARITY_OFFLINE")
    monkeypatch.setenv("CNN_PARITY_MIRROR", f"{base}/{{dataset}}/")
    previous = os.umask(0o027)  # neither a private temporary file's 0600 nor the usual 0644
    try:
        data.locate("mnist")  # downloads into the cache
        data.copy_uncompressed("mnist", data_dir, isolated_env / "raw")
    finally:
        os.umask(previous)
    for folder in (data.cache_dir() / "mnist", isolated_env / "raw"):
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}
        assert len(modes) == 4 and set(modes.values()) == {0o640}, modes


def test_download_failure_is_reported(isolated_env, monkeypatch):
    monkeypatch.delenv("CNN_PARITY_OFFLINE")
    monkeypatch.setenv("CNN_PARITY_MIRROR", "http://127.0.0.1:9/")  # discard port: refused at once
    with pytest.raises(DataError, match="download failed.*127.0.0.1:9"):
        data.locate("mnist")


def test_torchvision_layout_is_uncompressed_and_verified(data_dir, isolated_env):
    dest = isolated_env / "tv" / "MNIST" / "raw"
    data.copy_uncompressed("mnist", data_dir, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(data.SHA256["mnist"])
    assert data._sha256_file(dest / "t10k-labels-idx1-ubyte") == data.SHA256["mnist"]["t10k-labels-idx1-ubyte"]
