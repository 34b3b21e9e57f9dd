"""Your own experiment (docs/your-own-experiment.md), walked end to end as a new user walks it: a small
ResNet pair of the user's own on scikit-learn's digits (examples/own_experiment): checked, trained
paired in both frameworks with AdamW and a cosine schedule, compared with a verdict, evaluated across
frameworks, reproduced over seeds and put through a short equivalence study; and what a user gets
wrong in such a recipe, one line and exit 2 each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .test_bad_input import assert_usage_error
from .test_cli import REPO

pytestmark = pytest.mark.slow  # trains the pair through the CLIs

EXAMPLE = REPO / "examples" / "own_experiment"


def command(folder: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the pair's module imports from the folder run in
    return subprocess.run([sys.executable, "-m", module, *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=1200)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("own")
    for name in ("digits_resnet.py", "digits_resnet.toml", "make_digits_npz.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    made = subprocess.run([sys.executable, "make_digits_npz.py", "digits.npz"], cwd=folder, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    return folder


def test_a_pair_of_your_own_trains_paired_compares_and_evaluates_across_frameworks(experiment):
    checked = command(experiment, "parity_check", "--torch", "digits_resnet:TorchResNet", "--flax",
                      "digits_resnet:LinenResNet", "--input-shape", "4,1,8,8")
    assert checked.returncode == 0 and "PASS" in checked.stdout, checked.stdout + checked.stderr
    # The recipe's AdamW at 1e-2 amplifies float32 rounding: in float64 the pair trains alike.
    trained = command(experiment, "parity_check", "--torch", "digits_resnet:TorchResNet", "--flax",
                      "digits_resnet:LinenResNet", "--input-shape", "64,1,8,8", "--grads", "--train-steps", "20",
                      "--torch-optimizer", "adamw:lr=1e-2,weight_decay=1e-4",
                      "--optax", "adamw:learning_rate=1e-2,weight_decay=1e-4")
    assert trained.returncode == 0 and "PASS" in trained.stdout, trained.stdout + trained.stderr
    for framework, module in (("flax", "flax_impl.train"), ("torch", "torch_ref.train")):
        trained = command(experiment, module, "--config", "digits_resnet.toml", "--paired", "--epochs", "2",
                          "--log-every", "5", "--workdir", f"runs/{framework}")
        assert trained.returncode == 0, trained.stderr[-2000:]
        assert "checking the pair digits_resnet:TorchResNet / digits_resnet:LinenResNet" in trained.stderr
    compared = command(experiment, "cnn_parity.compare", "runs/flax", "runs/torch", "--json")
    result = json.loads(compared.stdout)
    assert result["verdict"]["within_bounds"] and [row["epoch"] for row in result["epochs"]] == [1, 2]
    assert abs(result["epochs"][0]["train_loss"][2]) < 1e-4  # the same start and batches: float rounding apart
    steps = [json.loads(line) for line in (experiment / "runs/flax/steps.jsonl").read_text().splitlines()]
    assert len({round(s["learning_rate"], 12) for s in steps}) > 1  # the cosine schedule, logged
    evaluated = {}
    for framework in ("flax", "torch"):
        for trained_with in ("flax", "torch"):
            out = command(experiment, f"{'flax_impl' if framework == 'flax' else 'torch_ref'}.evaluate",
                          "--checkpoint", f"runs/{trained_with}", "--json")
            assert out.returncode == 0, out.stderr[-2000:]
            evaluated[framework, trained_with] = json.loads(out.stdout)["test_accuracy"]
    for trained_with in ("flax", "torch"):  # either framework evaluates either's weights alike
        assert evaluated["flax", trained_with] == pytest.approx(evaluated["torch", trained_with], abs=1 / 360)


def test_the_studies_take_a_recipe_of_your_own(experiment):
    reproduced = command(experiment, "parity_studies.reproduce", "--config", "digits_resnet.toml", "--seeds", "0",
                         "1", "--epochs", "1", "--out", "reproduce")
    assert reproduced.returncode == 0, reproduced.stderr[-2000:]
    report = json.loads((experiment / "reproduce/report.json").read_text())
    assert report["models"]["digits_resnet"]["deviation"].endswith("shortened to 1 epochs (--epochs)")
    studied = command(experiment, "parity_studies.equivalence", "--config", "digits_resnet.toml", "--seeds", "0", "1",
                      "2", "--margin", "1.2", "--epochs", "1", "--jobs", "2", "--out", "equivalence")
    assert studied.returncode == 0, studied.stderr[-2000:]
    report = json.loads((experiment / "equivalence/report.json").read_text())
    assert report["status"] == "exploratory" and "not pre-registered" in report["status_reason"]
    assert report["models"]["digits_resnet"]["independent"]["endpoints"]["test_error"]["margin"] == pytest.approx(
        np.log(1.2))


def _recipe(experiment: Path, name: str, replace: tuple[str, str]) -> str:
    text = (experiment / "digits_resnet.toml").read_text()
    assert replace[0] in text
    (experiment / name).write_text(text.replace(*replace))
    return name


@pytest.mark.parametrize("change, fragment", [
    (('torch = "digits_resnet:TorchResNet"', 'torch = "no_such_module:Net"'),
     "[pair] torch no_such_module:Net: no module no_such_module"),
    (("[schedule]", "[schedule]\nwarmup_epochs = 3"), "unknown recipe key schedule.warmup_epochs"),
    (('data_file = "digits.npz"', 'data_file = "shapes.npz"'), "shapes.npz: x_train must be (N, H, W) or (N, H, W, C)"),
    (('data_file = "digits.npz"', 'data_file = "strings.npz"'), "strings.npz: x_train must be uint8 pixels or finite floats"),
    (('data_file = "digits.npz"', 'data_file = "labels.npz"'), "labels go up to 12, but the model has 10 outputs"),
], ids=["model-does-not-import", "schedule-key", "data-shape", "data-dtype", "labels-out-of-range"])
def test_what_a_user_gets_wrong_in_a_recipe_of_their_own_is_one_line(experiment, change, fragment):
    with np.load(experiment / "digits.npz") as digits:
        arrays = dict(digits)
    np.savez(experiment / "shapes.npz", **{**arrays, "x_train": arrays["x_train"].reshape(len(arrays["x_train"]), -1)})
    np.savez(experiment / "strings.npz", **{**arrays, "x_train": arrays["x_train"].astype(np.int32)})
    np.savez(experiment / "labels.npz", **{**arrays, "y_train": np.where(arrays["y_train"] == 9, 12, arrays["y_train"])})
    recipe = _recipe(experiment, "broken.toml", change)
    for module in ("flax_impl.train", "torch_ref.train"):
        result = command(experiment, module, "--config", recipe, "--max-steps", "2", "--workdir", f"broken-{module}")
        assert_usage_error(result, fragment)


def _prepare_tfds_digits(npz: Path, tfds_dir: Path) -> None:
    """The digits of `npz` as a TFDS data set of one's own, own_digits 1.0.0, prepared as its builder
    prepares it (array_record files), with Pillow encoding the images (no TensorFlow)."""
    import PIL.Image
    import tensorflow_datasets as tfds

    with np.load(npz) as digits:
        arrays = dict(digits)

    class OwnDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(arrays[f"x_{split}"], arrays[f"y_{split}"]) for split in ("train", "test")}

        def _generate_examples(self, images, labels):
            for index, (image, label) in enumerate(zip(images, labels)):
                yield index, {"image": PIL.Image.fromarray(image), "label": int(label)}

    OwnDigits(data_dir=str(tfds_dir)).download_and_prepare(file_format="array_record")


def test_a_tfds_data_set_of_your_own_trains_as_its_npz_twin_does(experiment):
    """A data set prepared in a TFDS data dir is read as prepared (TFDS's record order), holding the same
    examples as the .npz it was made from, and trains; one missing is one line."""
    pytest.importorskip("tensorflow_datasets")
    from cnn_parity.recipe_data import recipe_split
    from cnn_parity.recipes import load_recipe

    _prepare_tfds_digits(experiment / "digits.npz", experiment / "tfds")
    recipe_file = _recipe(experiment, "digits_tfds.toml",
                          ('dataset = "npz"\ndata_file = "digits.npz"', 'dataset = "tfds"\ntfds_name = "own_digits"\ntfds_dir = "tfds"'))
    from_tfds, from_npz = load_recipe(config=experiment / recipe_file), load_recipe(config=experiment / "digits_resnet.toml")
    for split in ("train", "test"):
        tfds_split, npz_split = recipe_split(from_tfds, split), recipe_split(from_npz, split)
        assert tfds_split.images.shape == (*npz_split.images.shape, 1) and tfds_split.images.dtype == np.uint8
        as_set = [sorted(zip(s.labels.tolist(), (image.tobytes() for image in s.images))) for s in (tfds_split, npz_split)]
        assert as_set[0] == as_set[1]
    trained = command(experiment, "flax_impl.train", "--config", recipe_file, "--max-steps", "5", "--workdir", "runs/tfds")
    assert trained.returncode == 0, trained.stderr[-2000:]
    (experiment / "missing_tfds.toml").write_text((experiment / recipe_file).read_text().replace("own_digits", "other_digits"))
    assert_usage_error(command(experiment, "torch_ref.train", "--config", "missing_tfds.toml", "--max-steps", "2",
                               "--workdir", "runs/missing"), "cannot read the TFDS data set other_digits/")
