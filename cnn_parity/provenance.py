"""Where a result came from: the installed versions (and whether they are constraints.txt's verified
set), the machine, and the command as typed."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_VERSIONED = ("numpy", "jax", "jaxlib", "flax", "optax", "torch", "torchvision", "tensorflow-datasets", "tensorboard")
# The verified set of exact versions, in a source checkout (docs/install.md: Versions).
CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"


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
