"""The PyTorch side on its own: initialisation, its two pipelines, and that it learns."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cnn_parity import data as neutral_data, shared_rng
from cnn_parity.recipes import MODELS, load_recipe
from torch_ref import data
from torch_ref.convert import state_dict_to_canonical
from torch_ref.models import create_model, num_params
from torch_ref.train import TorchTrainer

from .helpers import LEARNING_STEPS, MIN_TEST_ACCURACY, check_init_statistics, short_run, source_num_params


@pytest.mark.parametrize("scheme", ["torch", "flax"])
@pytest.mark.parametrize("model", MODELS)
def test_initialisation_schemes(model, scheme):
    torch.manual_seed(0)
    module = create_model(model, scheme)
    assert num_params(module) == source_num_params(model)
    check_init_statistics(model, scheme, state_dict_to_canonical(model, module))


def test_normalize_is_totensor_then_normalize():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    expected = (images.astype(np.float32)[:, None] / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081)
    normalized = data.normalize(torch.from_numpy(images), 0.1307, 0.3081)
    np.testing.assert_array_equal(normalized.numpy(), expected)
    # Strides as well as values: channels_last strides would choose other convolution kernels.
    assert normalized.stride() == torch.empty(expected.shape).stride()


@pytest.mark.parametrize("model", ["lenet", "fashion_cnn"])
def test_torchvision_pipeline_yields_the_same_tensors_as_the_tensor_pipeline(model, data_dir, tmp_path, monkeypatch):
    """torchvision's own ToTensor/Normalize/DataLoader path and the in-memory path agree bitwise."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the torchvision layout is prepared afresh
    recipe = load_recipe(model)
    device = torch.device("cpu")
    _, torchvision_test = data.make_loaders(recipe, "torchvision", data_dir, device, torch.Generator().manual_seed(0))
    _, tensor_test = data.make_loaders(recipe, "tensor", data_dir, device, torch.Generator().manual_seed(0))
    for (torchvision_images, torchvision_labels), (images, labels) in zip(torchvision_test, tensor_test):
        assert torch.equal(torchvision_images, images) and torch.equal(torchvision_labels, labels)
        assert torchvision_images.stride() == images.stride()
    assert len(torchvision_test) == len(tensor_test) == 10


def test_tensor_pipeline_shuffles_each_epoch_and_covers_the_split(data_dir):
    recipe = load_recipe("lenet")
    train, _ = data.make_loaders(recipe, "tensor", data_dir, torch.device("cpu"), torch.Generator().manual_seed(0))
    first, second = ([labels for _, labels in train] for _ in range(2))
    assert len(first) == 469 and len(first[-1]) == 60_000 - 468 * 128  # the last batch is partial
    assert not torch.equal(first[0], second[0])
    assert torch.cat(first).bincount().tolist() == torch.cat(second).bincount().tolist()


def test_shared_shuffle_gives_both_pipelines_the_neutral_order(data_dir, tmp_path, monkeypatch):
    """shuffle_rng = "shared": the DataLoader path and the in-memory path visit epoch 2 in the order
    cnn_parity.shared_rng draws, batch for batch."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    recipe = load_recipe("lenet", overrides={"shuffle_rng": "shared", "seed": 3})
    order = shared_rng.epoch_permutation(3, 2, 60_000)
    expected = torch.from_numpy(neutral_data.load_split("mnist", "train", data_dir).labels[order[:3 * 128]]).long()
    for pipeline in data.PIPELINES:
        train, _ = data.make_loaders(recipe, pipeline, data_dir, torch.device("cpu"), torch.Generator().manual_seed(0))
        data.set_epoch(train, 2)
        labels = torch.cat([labels for _, labels in itertools.islice(train, 3)])
        assert torch.equal(labels, expected), pipeline


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_learns_far_above_chance_on_real_data(model, data_dir, tmp_path):
    summary = short_run(TorchTrainer, model, seed=0, workdir=tmp_path / "run", data_dir=data_dir)
    assert summary["steps"] == LEARNING_STEPS[model]
    assert summary["test_accuracy"] >= MIN_TEST_ACCURACY[model]
