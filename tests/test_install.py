"""The project installed from a wheel (not an editable checkout) into a fresh environment works from any
folder: the recipes ship inside the package, every installed package's command runs, and no generic
top-level name is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from cnn_parity.frameworks import FRAMEWORKS, command_module
from cnn_parity.recipes import MODELS

pytestmark = pytest.mark.slow  # builds a wheel, makes an environment and trains through both CLIs

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"cnn_parity", "flax_impl", "torch_ref", "parity_check", "parity_studies", "parity_tests"}


def commands(wheel: Path) -> list[str]:
    """The modules `python -m` runs among a wheel's files: a package's __main__, or a module with a main guard."""
    out = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith("/__main__.py"):
                out.append(name.removesuffix("/__main__.py").replace("/", "."))
            elif name.endswith(".py") and b'if __name__ == "__main__":' in archive.read(name):
                out.append(name.removesuffix(".py").replace("/", "."))
    return sorted(out)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", ".ci-venv", "runs", "build", "reports",
                                                                 "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(root / "dist")], check=True, capture_output=True, text=True)
    return next((root / "dist").glob("cnn_parity-*.whl"))


def test_the_wheel_holds_the_recipes_and_no_generic_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == TOP_LEVEL
    assert {f"cnn_parity/configs/{model}.toml" for model in MODELS} <= set(names)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(python, env, folder): a fresh environment with only the wheel installed, and a folder outside the checkout."""
    tmp_path = tmp_path_factory.mktemp("installed")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies come from this environment; the project itself only from the wheel (a path added by a
    # .pth file runs none of the .pth files inside it, such as an editable install's).
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "dependencies.pth").write_text("".join(f"{path}\n" for path in paths))
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # pip must not see a checkout as installed
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, text=True, env=clean)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return venv, python, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, elsewhere


def test_every_installed_packages_command_runs_from_another_folder(wheel, installed):
    _, python, env, elsewhere = installed
    found = commands(wheel)
    assert {"parity_check", "parity_tests.report", "parity_tests.docs", "flax_impl.train", "torch_ref.train",
            "cnn_parity.compare"} <= set(found)
    for module in found:
        result = subprocess.run([str(python), "-m", module, "--help"], cwd=elsewhere, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0 and "usage:" in result.stdout, f"{module}: {result.stderr[-2000:]}"
    examples = "parity_check.examples"
    checked = subprocess.run([str(python), "-m", "parity_check", "--torch", f"{examples}:torch_mlp_block", "--flax",
                              f"{examples}:nnx_mlp_block", "--input-shape", "8,24"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and "PASS" in checked.stdout, checked.stderr[-2000:]


def test_a_wheel_install_trains_from_another_folder(installed, data_dir):
    venv, python, env, elsewhere = installed
    env = env | {"CNN_PARITY_DATA_DIR": str(data_dir)}
    for module in (command_module(framework, "train") for framework in FRAMEWORKS):
        result = subprocess.run([str(python), "-m", module, "--model", "lenet", "--max-steps", "2", "--workdir",
                                 f"run-{module}"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "test accuracy" in result.stdout
        # The verified set ships in the wheel: a run from it says whether its packages are that set.
        summary = json.loads((elsewhere / f"run-{module}" / "summary.json").read_text())
        assert summary["versions"]["constraints"] == "constraints.txt", summary["versions"]
        assert summary["provenance"]["sessions"][0]["version"] == "0.1.0"
    imported = subprocess.run([str(python), "-c", "import cnn_parity, benchmarks"], cwd=elsewhere, env=env,
                              capture_output=True, text=True)
    assert "No module named 'benchmarks'" in imported.stderr
    located = subprocess.run([str(python), "-c", "import cnn_parity; print(cnn_parity.__file__)"], cwd=elsewhere,
                             env=env, capture_output=True, text=True)
    assert located.stdout.startswith(str(venv))
