"""Where a result came from: the installed versions (and whether they are constraints.txt's verified
set), the project's own version and commit, the machine, when each process of a run trained it, and
the command as typed."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_VERSIONED = ("numpy", "jax", "jaxlib", "flax", "optax", "torch", "torchvision", "pydantic", "tensorflow-datasets",
              "tensorboardX")
SOURCE_ROOT = Path(__file__).resolve().parent.parent
# The verified set of exact versions (docs/install.md: Versions): the repository's constraints.txt, which
# the package holds (a link in a checkout, a copy in a wheel).
CONSTRAINTS = Path(__file__).parent / "constraints.txt"


def versions(packages=_VERSIONED) -> dict[str, str]:
    """Python's and the installed packages' versions (read from metadata: imports nothing), and under
    `constraints` whether the installed packages are constraints.txt's verified set."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if (constraints := constraints_match()) is not None:
        found["constraints"] = constraints
    return found


def constraints_match(path: Path = CONSTRAINTS) -> str | None:
    """"constraints.txt" where every installed package it pins has its pinned version; else "none" and
    the packages that differ; None without the file (an install from a wheel, not a checkout)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    differing = []
    for line in lines:
        name, pinned = (part.strip() for part in line.split("#")[0].partition("==")[::2])
        if not (name and pinned):
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:  # not needed here (e.g. another platform's CUDA wheels)
            continue
        if installed != pinned:
            differing.append(f"{name} {installed} (pinned {pinned})")
    if not differing:
        return path.name
    return f"none: {len(differing)} installed package(s) differ from {path.name}: {', '.join(differing[:3])}" + \
        (", ..." if len(differing) > 3 else "")


def machine_info(with_versions: bool = True) -> dict:
    """The machine a result came from: CPU model and count, memory, GPUs (nvidia-smi), versions (unless
    the record states them already)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        pass
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
        if gpus.returncode == 0 and gpus.stdout.strip():
            info["gpus"] = gpus.stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        pass
    if with_versions:
        info["versions"] = versions()
    return info


def command_line() -> str:
    """The command as typed (`python -m flax_impl.train ...`), for rerunning a recorded run."""
    return shlex.join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]])


@functools.lru_cache(maxsize=1)
def source() -> dict[str, str | bool]:
    """The project's version, and where it runs from a git checkout, its commit and whether tracked
    files differ from it (`dirty`): what a reviewer needs to rerun a record with the same code."""
    found: dict[str, str | bool] = {}
    try:
        found["version"] = metadata.version("cnn-parity")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        pass
    if (SOURCE_ROOT / ".git").exists():
        git = ["git", "-C", str(SOURCE_ROOT)]
        try:
            head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
            changes = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return found
        if head.returncode == 0 and changes.returncode == 0:
            found.update(commit=head.stdout.strip(), dirty=bool(changes.stdout.strip()))
    return found


def now() -> str:
    """The current time, UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def session(from_step: int) -> dict:
    """This process's part of a run, as a run records it: the step it starts from, when, on which CPU,
    with which code (`to_step` and `ended_at` are filled in as it checkpoints)."""
    return {"from_step": from_step, "started_at": now(), "to_step": from_step, "ended_at": None,
            "cpu_model": machine_info(with_versions=False).get("cpu_model"), **source()}
