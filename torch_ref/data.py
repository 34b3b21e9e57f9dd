"""PyTorch input pipelines.

`tensor` (default): each split held as one tensor on the device; a fresh `torch.randperm` per epoch
from a seeded generator; batches are index gathers. The mirror of flax_impl/data.py.
`torchvision`: what the sources ran: torchvision's `datasets.MNIST` / `FashionMNIST` with `ToTensor` and
`Normalize`, through a shuffling `DataLoader`. torchvision reads its own raw layout, which is prepared
from the verified files (never from the network) under the per-user cache.

Under DDP (a `World`), each rank gets batch_size / N examples of every global batch: `tensor` takes
its contiguous share of the single-process batch (so the global batches and their order are exactly
one process's), `torchvision` uses a `DistributedSampler` (seeded with the recipe's seed, as PyTorch users
launch it). Test splits are divided between ranks without padding.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import torch

from cnn_parity import data, shared_rng
from cnn_parity.recipe_data import recipe_split
from cnn_parity.errors import UsageError
from cnn_parity.recipes import Recipe
from torch_ref.distributed import World, local_batch_size

PIPELINES = ("tensor", "torchvision")
_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, H, W[, C]) → float32 NCHW, bitwise as torchvision's ToTensor then Normalize(mean, std)
    (tests/test_torch_ref.py checks it against torchvision's own transforms; a float per channel, or
    one); float images, normalised when loaded, as they are. NCHW strides, as ToTensor gives: the
    permuted view has channels_last strides, which choose other convolution kernels, and .contiguous()
    keeps them for one channel (a size-1 dimension's stride does not count)."""
    nhwc = data.channels_last_inputs(images, _table(mean, std, images.device), torch)
    return nhwc.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


@functools.lru_cache(maxsize=8)
def _table(mean: float, std: float, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(data.normalization_table(mean, std)).to(device)  # built once, not per batch


class TensorBatches:
    """An in-memory split as an iterable of (images, labels) batches, like a DataLoader."""

    def __init__(self, split: data.Split, batch_size: int, mean: float, std: float, device: torch.device,
                 shuffle: bool = False, drop_last: bool = False, generator: torch.Generator | None = None,
                 shared_order_seed: int | None = None, world: World | None = None):
        """Shuffled orders come from `generator`, or with `shared_order_seed` from the neutral
        cnn_parity.shared_rng (a function of seed and epoch: call `set_epoch` before iterating).
        `world`: yield only this rank's contiguous share of each batch (every batch must split evenly)."""
        self.images = torch.from_numpy(split.images).to(device)
        self.labels = torch.from_numpy(split.labels).long().to(device)
        self.batch_size, self.mean, self.std = batch_size, mean, std
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator
        self.shared_order_seed, self.epoch = shared_order_seed, 1
        self.world = world
        if world is not None:
            local_batch_size(batch_size, world)
            if not drop_last and len(self.labels) % batch_size:
                local_batch_size(len(self.labels) % batch_size, world)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor | None:
        n = len(self.labels)
        if not self.shuffle:
            return None
        if self.shared_order_seed is not None:
            order = torch.from_numpy(shared_rng.epoch_permutation(self.shared_order_seed, self.epoch, n))
        else:
            order = torch.randperm(n, generator=self.generator)
        return order.to(self.images.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = self._order()
        for i in range(len(self)):
            index = slice(i * self.batch_size, (i + 1) * self.batch_size)
            if order is not None:
                index = order[index]
            if self.world is not None:
                if isinstance(index, slice):
                    index = torch.arange(n, device=self.labels.device)[index]
                share = len(index) // self.world.size
                index = index[self.world.rank * share:(self.world.rank + 1) * share]
            yield normalize(self.images[index], self.mean, self.std), self.labels[index]


def make_loaders(recipe: Recipe, pipeline: str, data_dir: str | None, device: torch.device,
                 generator: torch.Generator, world: World | None = None):
    """(train, test) iterables of (images, labels) batches for `recipe` (this rank's, under DDP)."""
    if pipeline == "torchvision":
        return _torchvision_loaders(recipe, data_dir, generator, world)
    mean, std = recipe.normalization
    train = TensorBatches(recipe_split(recipe, "train", data_dir), recipe.batch_size, mean, std,
                          device, shuffle=True, drop_last=recipe.drop_last, generator=generator,
                          shared_order_seed=recipe.seed if recipe.shuffle_rng == "shared" else None, world=world)
    test_split = recipe_split(recipe, "test", data_dir)
    if world is not None:
        test_split = data.Split(test_split.images[world.rank::world.size], test_split.labels[world.rank::world.size])
    test = TensorBatches(test_split, recipe.eval_batch_size, mean, std, device)
    return train, test


def set_epoch(loader, epoch: int) -> None:
    """Orders drawn from (seed, epoch) (shared ones, DistributedSampler's): tell the epoch before iterating."""
    for target in (loader, getattr(loader, "sampler", None)):
        if hasattr(target, "set_epoch"):
            target.set_epoch(epoch)


class SharedOrderSampler(torch.utils.data.Sampler[int]):
    """A DataLoader's shuffling order taken from cnn_parity.shared_rng: a function of (seed, epoch)."""

    def __init__(self, seed: int, num_examples: int):
        self.seed, self.num_examples, self.epoch = seed, num_examples, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self) -> Iterator[int]:
        return iter(shared_rng.epoch_permutation(self.seed, self.epoch, self.num_examples).tolist())


def _torchvision_loaders(recipe: Recipe, data_dir: str | None, generator: torch.Generator, world: World | None):
    from torch.utils.data import DataLoader, DistributedSampler, Subset
    from torchvision import datasets, transforms

    class_name = _TORCHVISION_CLASSES[recipe.dataset]
    root = data.cache_dir() / "torchvision"
    data.copy_uncompressed(recipe.dataset, data_dir, root / class_name / "raw")
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((recipe.normalize_mean,), (recipe.normalize_std,))])
    dataset_class = getattr(datasets, class_name)
    train_set = dataset_class(root, train=True, transform=transform, download=False)
    test_set = dataset_class(root, train=False, transform=transform, download=False)
    shared_order = recipe.shuffle_rng == "shared"
    if world is None:
        order = {"sampler": SharedOrderSampler(recipe.seed, len(train_set))} if shared_order else {
            "shuffle": True, "generator": generator}
        train = DataLoader(train_set, batch_size=recipe.batch_size, drop_last=recipe.drop_last, **order)
        return train, DataLoader(test_set, batch_size=recipe.eval_batch_size)
    if shared_order:
        raise UsageError("shuffle_rng = \"shared\" under torchrun needs --pipeline tensor "
                         "(the torchvision pipeline shards with DistributedSampler's own order)")
    sampler = DistributedSampler(train_set, world.size, world.rank, shuffle=True, seed=recipe.seed,
                                 drop_last=recipe.drop_last)
    train = DataLoader(train_set, batch_size=local_batch_size(recipe.batch_size, world), sampler=sampler,
                       drop_last=recipe.drop_last)
    test = DataLoader(Subset(test_set, range(world.rank, len(test_set), world.size)), batch_size=recipe.eval_batch_size)
    return train, test
