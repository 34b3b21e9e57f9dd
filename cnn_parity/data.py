"""The data sets, framework-neutral: MNIST and Fashion-MNIST (find, download, verify and read the IDX
files), and a user's own arrays from a .npz file (`load_npz`).

Every split is returned as numpy arrays: images (N, 28, 28) uint8 for the IDX data sets, (N, H, W) or
(N, H, W, C) uint8 or float32 for a .npz file, and labels (N,). IDX files may be gzipped or raw; what
is verified is the SHA-256 of the *uncompressed* content, so a re-compressed archive of the right data
is accepted and a corrupted one is not.

Where a data set is looked for, in order (the first folder holding all four files wins):
  1. the `data_dir` argument (the CLIs' `--data-dir`): `<dir>/<dataset>/` or `<dir>/` itself;
  2. `$CNN_PARITY_DATA_DIR/<dataset>/`;
  3. the per-user cache, `$XDG_CACHE_HOME/cnn_parity/<dataset>/` (default `~/.cache/...`);
  4. the Debian package folder (`dataset-fashion-mnist` → /usr/share/datasets/fashion-mnist);
  5. a download from the public mirrors torchvision uses, verified, into the cache.
`CNN_PARITY_OFFLINE=1` skips step 5; `CNN_PARITY_MIRROR` replaces the mirror list (space-separated
base URLs; `{dataset}` in one is replaced by the data set's name).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cnn_parity.errors import DataError
from cnn_parity.files import atomic_file, write_bytes_atomic

IDX_DATASETS = ("mnist", "fashion_mnist")
DATASETS = (*IDX_DATASETS, "npz", "tfds")
SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Examples per split, the same in both data sets (fixed by the checksums below).
NUM_EXAMPLES = {"train": 60_000, "test": 10_000}
NUM_EXAMPLES_OF = {dataset: NUM_EXAMPLES for dataset in IDX_DATASETS}

# SHA-256 of the uncompressed IDX files (the originals, as LeCun's and Zalando's archives hold them).
SHA256 = {
    "mnist": {
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    },
    "fashion_mnist": {
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    },
}

# The mirrors torchvision's MNIST / FashionMNIST classes download from.
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
_SYSTEM_DIRS = {"mnist": (), "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),)}

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
# Largest legitimate file is train images: a 16-byte header and 60,000 images of 28 x 28 bytes.
# Anything that inflates past this bound is not MNIST, and reading no further protects against gzip bombs.
_MAX_IDX_BYTES = 16 + NUM_EXAMPLES["train"] * math.prod(IMAGE_SHAPE)
_DOWNLOAD_TIMEOUT_S = 30


class Split(NamedTuple):
    images: np.ndarray  # uint8 (N, H, W) or (N, H, W, C), raw pixels; or float32 (N, H, W, C), normalised
    labels: np.ndarray  # integers (N,)


def normalization_table(mean, std) -> np.ndarray:
    """float32 value of each pixel byte after torchvision's ToTensor then Normalize(mean, std): (256,),
    or (C, 256) for a mean and std per channel.

    Computed as torchvision does, in float32: (x / 255 - mean) / std. Both frameworks normalise by
    looking pixels up in this table, so their inputs are bitwise identical (XLA would otherwise
    rewrite x / 255 as x * (1/255), which differs in the last bit for about half the values).
    """
    pixels = np.arange(256, dtype=np.float32) / np.float32(255)
    per_channel = np.ndim(mean) or np.ndim(std)
    mean, std = (np.asarray(v, np.float32).reshape(-1, 1) if per_channel else np.float32(v) for v in (mean, std))
    return (pixels - mean) / std


def channels_last_inputs(images, table, xp=np):
    """Images as float32 (N, H, W, C) model inputs: uint8 pixels through `table` (`normalization_table`,
    as an array of the array module `xp`: numpy, jax.numpy or torch); float ones (normalised when
    loaded) as they are. Both frameworks' pipelines normalise through this one function."""
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != xp.uint8:
        return images
    if table.ndim == 1:
        return table[images.long() if xp.__name__ == "torch" else images]
    if images.shape[-1] != table.shape[0]:
        raise DataError(f"the normalisation has {table.shape[0]} channels, the images {images.shape[-1]}")
    channel = xp.arange(table.shape[0])
    return table[channel, images.long() if xp.__name__ == "torch" else images]


def parse_idx(content: bytes, ndim: int, name: str = "IDX data") -> np.ndarray:
    """Decode uncompressed IDX bytes holding unsigned bytes with `ndim` dimensions."""
    if len(content) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(content)} bytes, no header)")
    zero, dtype_code, found_ndim = struct.unpack(">HBB", content[:4])
    if zero != 0 or dtype_code != _IDX_UBYTE:
        raise DataError(f"{name}: not an unsigned-byte IDX file (magic number {content[:4].hex()})")
    if found_ndim != ndim:
        raise DataError(f"{name}: expected {ndim} dimension(s), the header says {found_ndim}")
    header_len = 4 + 4 * ndim
    if len(content) < header_len:
        raise DataError(f"{name}: truncated IDX header ({len(content)} bytes)")
    shape = struct.unpack(f">{ndim}I", content[4:header_len])
    expected = header_len + int(np.prod(shape, dtype=np.int64))
    if len(content) != expected:
        kind = "truncated" if len(content) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {kind}: header promises shape {shape} ({expected} bytes), file has {len(content)}"
        )
    # Copy out of the immutable buffer: callers get an ordinary, writable array.
    return np.frombuffer(content, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def read_file(path: Path) -> bytes:
    """The uncompressed content of an IDX file, gzipped or raw (decided by content, not name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head != _GZIP_MAGIC:
                return f.read(_MAX_IDX_BYTES + 1)
            with gzip.GzipFile(fileobj=f) as gz:
                return gz.read(_MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _candidate_dirs(dataset: str, data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """(description, folder) for every place a data set is looked for, in order."""
    candidates = []
    if data_dir is not None:
        candidates += [("--data-dir", Path(data_dir) / dataset), ("--data-dir", Path(data_dir))]
    if env_dir := os.environ.get("CNN_PARITY_DATA_DIR"):
        candidates.append(("$CNN_PARITY_DATA_DIR", Path(env_dir) / dataset))
    candidates.append(("cache", cache_dir() / dataset))
    candidates += [("system", d) for d in _SYSTEM_DIRS[dataset]]
    return candidates


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnn_parity"


def mirrors(dataset: str) -> list[str]:
    if override := os.environ.get("CNN_PARITY_MIRROR"):
        return [m.replace("{dataset}", dataset) for m in override.split()]
    return list(MIRRORS[dataset])


def _check_dataset(dataset: str) -> None:
    if dataset not in IDX_DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(IDX_DATASETS)}")


def locate(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding all four files of `dataset`, downloading them if no folder has them."""
    _check_dataset(dataset)
    stems = [stem for split in SPLITS for stem in _FILES[split]]
    looked = []
    for description, folder in _candidate_dirs(dataset, data_dir):
        if all(_find_file(folder, stem) for stem in stems):
            return folder
        looked.append(f"{folder} ({description})")
    if os.environ.get("CNN_PARITY_OFFLINE") == "1":
        download_note = "download skipped (CNN_PARITY_OFFLINE=1)"
    else:
        try:
            return download(dataset, cache_dir() / dataset)
        except DataError as e:
            download_note = str(e)
    raise DataError(
        f"{dataset} not found: looked in {'; '.join(looked)}; {download_note}. "
        f"Put the four IDX files (.gz or raw) in one of those folders, or pass --data-dir / set "
        f"CNN_PARITY_DATA_DIR to a folder holding {dataset}/"
    )


def download(dataset: str, dest: Path) -> Path:
    """Fetch the four files of `dataset` into `dest`, verifying each before it is kept."""
    _check_dataset(dataset)
    dest.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for stem, ndim in zip(_FILES[split], (3, 1)):
            if _find_file(dest, stem):
                continue
            failures = []
            for base in mirrors(dataset):
                url = base.rstrip("/") + "/" + stem + ".gz"
                try:
                    _fetch_verified(url, dest / (stem + ".gz"), dataset, stem, ndim)
                    break
                except (OSError, urllib.error.URLError, DataError) as e:
                    failures.append(f"{url}: {getattr(e, 'reason', e)}")
            else:
                raise DataError(f"download failed ({'; '.join(failures)})")
    return dest


def _fetch_verified(url: str, target: Path, dataset: str, stem: str, ndim: int) -> None:
    from tqdm import tqdm

    # Downloaded next to the target, which it becomes only once verified: never a half-written file.
    with atomic_file(target) as out:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"{dataset}/{stem}",
                      file=sys.stderr, leave=False) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        out.flush()
        _verify(Path(out.name), dataset, stem, ndim, name=url)


def _verify(path: Path, dataset: str, stem: str, ndim: int, name: str) -> np.ndarray:
    content = read_file(path)
    array = parse_idx(content, ndim, name)
    digest = hashlib.sha256(content).hexdigest()
    if digest != SHA256[dataset][stem]:
        raise DataError(f"{name}: SHA-256 {digest[:12]}… does not match {dataset}'s {stem}")
    return array


# The arrays a .npz data file holds, per split.
NPZ_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


def load_npz(path: str | os.PathLike, split: str, mean=0.0, std=1.0) -> Split:
    """One split of a .npz data file: `x_train`, `y_train`, `x_test`, `y_test`; images (N, H, W) or
    (N, H, W, C), uint8 pixels or floats, labels integers from 0. Float images are normalised here, once,
    (x - mean) / std in float32 (uint8 ones by each framework, through `normalization_table`). DataError,
    one line, for anything else."""
    images_key, labels_key = NPZ_KEYS[split]
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in (images_key, labels_key) if k not in arrays.files]
            if missing:
                raise DataError(f"{path} holds no {missing[0]} (a data file has x_train, y_train, x_test, y_test)")
            images, labels = arrays[images_key], arrays[labels_key]
    except (OSError, ValueError, EOFError) as e:  # missing, truncated, not a .npz, or pickled objects
        raise DataError(f"cannot read {path} as a .npz data file ({e})") from None
    return checked_split(images, labels, str(path), (images_key, labels_key), mean, std)


def checked_split(images: np.ndarray, labels: np.ndarray, path: str, keys: tuple[str, str], mean=0.0,
                  std=1.0) -> Split:
    """A split of data of the user's own (`path`: where it came from; `keys`: its images' and labels'
    names there), checked: images (N, H, W[, C]) uint8 pixels or floats, normalised here if floats;
    labels integers from 0. DataError, one line, for anything else."""
    images_key, labels_key = keys
    if images.ndim not in (3, 4) or len(images) != len(labels) or labels.ndim != 1 or not len(labels):
        raise DataError(f"{path}: {images_key} must be (N, H, W) or (N, H, W, C) and {labels_key} (N,), got "
                        f"{images.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise DataError(f"{path}: {labels_key} must be integer class indices from 0, got {labels.dtype} "
                        f"from {labels.min()}")
    if images.dtype == np.uint8:
        return Split(images, labels.astype(np.int64))
    if not np.issubdtype(images.dtype, np.floating) or not np.all(np.isfinite(images)):
        raise DataError(f"{path}: {images_key} must be uint8 pixels or finite floats, got {images.dtype}")
    images = images.astype(np.float32)[..., None] if images.ndim == 3 else images.astype(np.float32)
    return Split((images - np.float32(mean)) / np.float32(std) if np.ndim(mean) == 0 else
                 (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32), labels.astype(np.int64))


def load_split(dataset: str, split: str, data_dir: str | os.PathLike | None = None) -> Split:
    """One split of an IDX data set as verified uint8 arrays."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    folder = locate(dataset, data_dir)
    image_stem, label_stem = _FILES[split]
    image_path, label_path = _find_file(folder, image_stem), _find_file(folder, label_stem)
    images = _verify(image_path, dataset, image_stem, 3, str(image_path))
    labels = _verify(label_path, dataset, label_stem, 1, str(label_path))
    if images.shape != (NUM_EXAMPLES[split], *IMAGE_SHAPE) or labels.shape != images.shape[:1]:
        raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} disagree")
    return Split(images, labels)


def copy_uncompressed(dataset: str, data_dir: str | os.PathLike | None, dest: Path) -> None:
    """Write the verified, uncompressed IDX files of both splits into `dest` (each file atomically)."""
    folder = locate(dataset, data_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for stem in (stem for split in SPLITS for stem in _FILES[split]):
            target = dest / stem
            if target.is_file() and _sha256_file(target) == SHA256[dataset][stem]:
                continue
            content = read_file(_find_file(folder, stem))
            if hashlib.sha256(content).hexdigest() != SHA256[dataset][stem]:
                raise DataError(f"{folder / stem}: SHA-256 does not match {dataset}'s {stem}")
            write_bytes_atomic(target, content)
    except OSError as e:
        raise DataError(f"cannot prepare {dest}: {e.strerror or e}") from None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_labels(split: Split, outputs: int, where: str) -> None:
    """DataError unless every label indexes one of a model's `outputs` class scores."""
    top = int(split.labels.max()) if len(split.labels) else -1
    if top >= outputs:
        raise DataError(f"{where}: labels go up to {top}, but the model has {outputs} outputs (classes 0 .. {outputs - 1})")
