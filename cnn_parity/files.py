"""Durable, atomic file writes: a reader (or a resumed run) sees the old file or the new one, never a
partial one, whenever the writer dies; a failed write raises OSError and leaves nothing behind. The
ownership check that comes before loading anything executable from a cache folder. And reading back a
JSON report, with a one-line error for a file that is missing or not JSON."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from cnn_parity.errors import UsageError


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path` through, in a `with` block. It is written beside `path` under a
    hidden temporary name (the file's `name`, to check the content before it counts); when the block
    ends without an error it is flushed to disk and renamed to `path`, and on an error or an
    interruption it is removed. Created with the umask's permissions, as any other file the user
    writes (tempfile.mkstemp would make it private, 0600)."""
    tmp = Path(path).with_name(f".{Path(path).name}.{secrets.token_hex(4)}.tmp")
    f = open(tmp, "xb")
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or removal inside `path` survive a crash of the machine."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unsafe_to_load(path: str | os.PathLike) -> str | None:
    """Why code or compiled programs under `path` (an existing file or folder) must not be loaded, or
    None. Judged by its real path (every link resolved): that must be owned by this user and writable
    by no one else, and no folder above it may let another user replace it (owned by a user other
    than this one or root, or writable by group or others without the sticky bit, as /tmp has). A
    one-line reason naming the culprit. Load from `os.path.realpath(path)`, what was checked, not
    through a link someone could point elsewhere in between."""
    path = Path(os.path.realpath(path))
    uid = os.getuid()
    st = os.stat(path)
    if st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return next(filter(None, (_replaceable_below(parent, path) for parent in path.parents)), None)


def _replaceable_below(folder: Path, path: Path) -> str | None:
    """Why another user could replace what `folder` (a real path above `path`) holds, or None."""
    st = os.stat(folder)
    if st.st_uid not in (os.getuid(), 0):
        return f"{folder} (above {path}) is owned by uid {st.st_uid}, neither this user nor root"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return f"{folder} (above {path}) is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def make_private_folder(path: str | os.PathLike) -> tuple[Path, str | None]:
    """Make the folder `path` (mode 0700, parents as needed) for code or compiled programs, unless it
    would be unsafe to load from: the folders above it are judged first, by their real paths, so that
    nothing is made where another user could swap it, then the folder itself (`unsafe_to_load`).
    Returns (its real path, why it is unsafe or None); OSError if it cannot be made."""
    existing = Path(os.path.abspath(path))
    while not existing.exists():
        existing = existing.parent
    if existing != Path(os.path.abspath(path)):  # to be made: judge where first
        real = Path(os.path.realpath(existing))
        why = next(filter(None, (_replaceable_below(folder, Path(path)) for folder in (real, *real.parents))), None)
        if why is not None:
            return Path(path), why
        os.makedirs(path, mode=0o700, exist_ok=True)
    real = Path(os.path.realpath(path))
    return real, unsafe_to_load(real)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that a reader never sees a half-written file, even if this process dies."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """The content of a JSON file a command was given; a missing, unreadable or malformed one is a UsageError."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not JSON ({e})") from None


def strict_json(obj: Any, **dumps_options) -> str:
    """`obj` as strict JSON: a float that is not finite (NaN, ±inf, an overflowed difference) becomes
    null, which every JSON parser reads, where Python would write the non-standard `Infinity`."""
    def finite(value):
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value
    return json.dumps(finite(obj), allow_nan=False, **dumps_options)
