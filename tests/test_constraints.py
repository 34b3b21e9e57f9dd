"""constraints.txt, the verified set of exact versions: it pins what docs/install.md says it pins, every pin
lies within pyproject.toml's ranges, and runs' versions blocks say whether the installed set is it."""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cnn_parity.provenance import CONSTRAINTS, constraints_match, versions

from .test_cli import REPO


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = version.strip()
    return found


def test_pins_the_verified_stack_and_not_the_project():
    pinned = pins()
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "torchvision", "numpy",
                 "tensorflow-datasets", "tensorboard", "pytest"):
        assert name in pinned, name
    assert "cnn-parity" not in pinned and not any(line.startswith("-e") for line in CONSTRAINTS.read_text().splitlines())


def test_every_pin_satisfies_the_projects_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    pinned = pins()
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in pinned and (requirement.marker is None or requirement.marker.evaluate()):
            assert requirement.specifier.contains(pinned[name], prereleases=True), (text, pinned[name])


def test_versions_block_says_whether_the_installed_set_is_pinned(tmp_path):
    installed = {name: metadata.version(name) for name in ("numpy", "tqdm")}
    matching = tmp_path / "constraints.txt"
    matching.write_text("# a comment\n" + "".join(f"{n}=={v}\n" for n, v in installed.items()) + "not-installed==1.0\n")
    assert constraints_match(matching) == "constraints.txt"
    differing = tmp_path / "other.txt"
    differing.write_text(f"numpy==0.0.1\ntqdm=={installed['tqdm']}\n")
    assert constraints_match(differing) == f"none: 1 installed package(s) differ from other.txt: numpy {installed['numpy']} (pinned 0.0.1)"
    assert constraints_match(tmp_path / "missing.txt") is None
    assert versions()["constraints"] == constraints_match()

