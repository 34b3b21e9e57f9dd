"""The two frameworks, and the package that implements each: its commands are `python -m <package>.train`
and `python -m <package>.evaluate`. Names only: nothing here imports either framework."""

from __future__ import annotations

PACKAGES = {"flax": "flax_impl", "torch": "torch_ref"}
FRAMEWORKS = tuple(PACKAGES)


def command_module(framework: str, command: str) -> str:
    """The module `python -m` runs for `framework`'s `command` ("train" or "evaluate"): "flax_impl.train"."""
    return f"{PACKAGES[framework]}.{command}"
