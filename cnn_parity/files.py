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
    for parent in path.parents:
        st = os.stat(parent)
        if st.st_uid not in (uid, 0):
            return f"{parent} (above {path}) is owned by uid {st.st_uid}, neither this user nor root"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{parent} (above {path}) is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


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
