"""MNIST and Fashion-MNIST as tensorflow-datasets data sets, prepared offline from the verified IDX files.

TFDS's own `mnist` / `fashion_mnist` builders download their archives and need TensorFlow to encode
the images. The builders here are subclasses of those (same names, versions and features, so
`tfds.data_source` reads what they write as the real thing) whose examples come from the IDX files
cnn_parity.data has verified, encoded as PNG by Pillow: TensorFlow is never imported. They write
array_record files, the format `tfds.data_source` reads without TensorFlow.

tensorflow-datasets is an optional extra (`pip install -e '.[tfds]'`), imported only when used.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from cnn_parity import data
from cnn_parity.errors import DataError, UsageError

FILE_FORMAT = "array_record"


def default_dir() -> Path:
    """The TFDS data dir the tfds pipeline uses when no --data-dir is given (in the per-user cache)."""
    return data.cache_dir() / "tfds"


def _tfds():
    try:
        import tensorflow_datasets as tfds
        from absl import logging as absl_logging
    except ImportError:
        raise UsageError("TFDS data sets need tensorflow-datasets: pip install -e '.[tfds]'") from None
    absl_logging.set_verbosity(absl_logging.ERROR)  # tfds warns about missing metadata and OpenCV on every read
    tfds.disable_progress_bar()
    return tfds


def _builder_class(dataset: str):
    """A subclass of TFDS's builder for `dataset` whose examples are given (verified splits), not downloaded."""
    import PIL.Image
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    stock = {"mnist": tfds_mnist.MNIST, "fashion_mnist": tfds_mnist.FashionMNIST}[dataset]

    class VerifiedSplitsBuilder(stock, skip_registration=True):  # the stock builder stays the registered one
        name = stock.name

        def __init__(self, *, splits: dict[str, data.Split], **kwargs):
            self.splits = splits
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            return {name: self._generate_examples(split) for name, split in self.splits.items()}

        def _generate_examples(self, split: data.Split):
            for index, (image, label) in enumerate(zip(split.images, split.labels)):
                # A PIL image (grey, from uint8): TFDS encodes it with Pillow; a numpy array would go
                # through TensorFlow.
                yield index, {"image": PIL.Image.fromarray(image), "label": int(label)}

    return VerifiedSplitsBuilder


def is_prepared(dataset: str, tfds_dir: str | os.PathLike) -> bool:
    """Whether `tfds_dir` holds a prepared copy (any TFDS version folder with its dataset_info.json)."""
    # Version folders only: a preparation that was killed leaves an "incomplete.*" folder behind.
    return any(Path(tfds_dir, dataset).glob("[0-9]*/dataset_info.json"))


def prepare(dataset: str, tfds_dir: str | os.PathLike, idx_data_dir: str | os.PathLike | None = None) -> Path:
    """Write `dataset` into the TFDS data dir `tfds_dir` from the verified IDX files (found as
    cnn_parity.data finds them, `idx_data_dir` first); return the prepared folder. TFDS assembles it in
    a temporary folder and renames it into place, so an interrupted preparation leaves nothing half-done."""
    tfds = _tfds()
    # Read and verified before TFDS starts: a missing or corrupt file is the data module's one-line error.
    splits = {split: data.load_split(dataset, split, idx_data_dir) for split in data.SPLITS}
    print(f"preparing the TFDS data set {dataset} in {tfds_dir} from the verified IDX files (once)",
          file=sys.stderr, flush=True)
    try:
        Path(tfds_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="cnn_parity-tfds-") as scratch, \
                contextlib.redirect_stdout(io.StringIO()):  # tfds prints its own banners
            builder = _builder_class(dataset)(splits=splits, data_dir=os.fspath(tfds_dir))
            builder.download_and_prepare(
                download_dir=scratch, file_format=FILE_FORMAT,
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except OSError as e:
        raise UsageError(f"cannot prepare the TFDS data set {dataset} in {tfds_dir}: {e.strerror or e}") from None
    return Path(builder.data_dir)


def load_split(dataset: str, split: str, tfds_dir: str | os.PathLike) -> data.Split:
    """One split read through `tfds.data_source` as uint8 arrays (the data set's record order, which
    is TFDS's, not the IDX files')."""
    tfds = _tfds()
    try:
        source = tfds.data_source(dataset, split=split, data_dir=os.fspath(tfds_dir), download=False)
        records = source.__getitems__(list(range(len(source))))
        images = np.stack([np.asarray(r["image"], np.uint8).reshape(data.IMAGE_SHAPE) for r in records])
        labels = np.asarray([r["label"] for r in records], np.uint8)
    except Exception as e:  # tfds and array_record raise many unrelated types for a damaged data set
        reason = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0].rstrip(":. ")
        raise DataError(f"cannot read the TFDS data set {dataset}/{split} in {tfds_dir} ({reason}); if it is "
                        f"damaged, delete {Path(tfds_dir, dataset)} to have it prepared again") from None
    expected = data.NUM_EXAMPLES[split]
    if images.shape != (expected, *data.IMAGE_SHAPE):
        raise DataError(f"the TFDS data set {dataset}/{split} in {tfds_dir} holds {len(images):,} examples, "
                        f"not {dataset}'s {expected:,}; delete {Path(tfds_dir, dataset)} to have it prepared again")
    return data.Split(images, labels)


def load_named(name: str, split: str, tfds_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one split of a TFDS data set of the user's own, as prepared in `tfds_dir`
    (None: TFDS's default data dir), read through `tfds.data_source` (array_record files) from its
    "image" and "label" features: never downloaded or prepared here. DataError, one line, naming
    what is missing."""
    tfds = _tfds()
    where = f"the TFDS data set {name}/{split} in {tfds_dir or 'the TFDS default data dir'}"
    try:
        source = tfds.data_source(name, split=split, data_dir=None if tfds_dir is None else os.fspath(tfds_dir),
                                  download=False)
        records = source.__getitems__(list(range(len(source))))
    except Exception as e:  # tfds and array_record raise many unrelated types for a missing or damaged data set
        reason = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0].rstrip(":. ")
        raise DataError(f"cannot read {where} ({reason}); prepare it there first (its builder's "
                        f"download_and_prepare, file format array_record)") from None
    missing = [key for key in ("image", "label") if records and key not in records[0]]
    if missing:
        raise DataError(f"{where} has no {missing[0]!r} feature (it has {', '.join(sorted(records[0]))}): an "
                        f"image classification data set has 'image' and 'label'")
    try:
        return np.stack([np.asarray(r["image"]) for r in records]), np.asarray([r["label"] for r in records])
    except ValueError as e:
        raise DataError(f"{where}: its images differ in shape ({e}); a recipe trains on images of one shape") from None


def load_or_prepare_split(dataset: str, split: str, tfds_dir: str | os.PathLike | None) -> data.Split:
    """The tfds pipeline's split: read from `tfds_dir` (default: the per-user cache's TFDS folder),
    prepared there from the verified IDX files first if it is not there yet."""
    tfds_dir = Path(tfds_dir) if tfds_dir is not None else default_dir()
    ensure_prepared(dataset, tfds_dir)
    return load_split(dataset, split, tfds_dir)


def ensure_prepared(dataset: str, tfds_dir: str | os.PathLike, idx_data_dir: str | os.PathLike | None = None) -> bool:
    """Prepare `dataset` in `tfds_dir` unless it is there; whether this call prepared it. Preparations
    of one data set take turns (a lock in `tfds_dir`): whoever comes second finds it prepared. A
    killed preparation's leftovers are removed; a damaged data set is named, not misread."""
    tfds_dir = Path(tfds_dir)
    if is_prepared(dataset, tfds_dir):
        return False
    with _preparation_lock(dataset, tfds_dir):
        _check_no_damaged_version(dataset, tfds_dir)
        if is_prepared(dataset, tfds_dir):
            return False
        for stale in Path(tfds_dir, dataset).glob("incomplete.*"):  # left by a killed preparation
            shutil.rmtree(stale, ignore_errors=True)
        prepare(dataset, tfds_dir, idx_data_dir)
    return True


@contextlib.contextmanager
def _preparation_lock(dataset: str, tfds_dir: Path):
    try:
        tfds_dir.mkdir(parents=True, exist_ok=True)
        lock = open(tfds_dir / f".{dataset}.lock", "a")
    except OSError as e:
        raise UsageError(f"cannot prepare the TFDS data set {dataset} in {tfds_dir}: {e.strerror or e}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process ends
        yield


def _check_no_damaged_version(dataset: str, tfds_dir: Path) -> None:
    """A version folder without its dataset_info.json is damaged (TFDS itself renames complete ones
    into place); TFDS would misread it, so name it."""
    for version in Path(tfds_dir, dataset).glob("[0-9]*"):
        if version.is_dir() and not (version / "dataset_info.json").is_file():
            raise DataError(f"{version} is not a complete TFDS data set (it has no dataset_info.json); delete it "
                            f"to have it prepared again")
