"""DistributedDataParallel, launched by torchrun: `torchrun --nproc_per_node N -m torch_ref.train ...`.

One process per device (gloo on CPU, nccl on GPU). The global batch stays the recipe's: each rank
trains on batch_size / N examples of it and DDP averages the gradients, which equals the gradient of
the global batch's mean loss. Logged losses and accuracies are all-reduced over ranks, evaluation is
split over ranks without padding (no example counted twice or dropped), and only rank 0 writes the
workdir (docs/multi-device.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cnn_parity.errors import UsageError


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


def initialize() -> World | None:
    """Join the process group torchrun describes in the environment; None outside torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"rank {local_rank} has no GPU: --nproc_per_node exceeds {torch.cuda.device_count()} GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return World(dist.get_rank(), dist.get_world_size(), device)


def local_batch_size(batch_size: int, world: World) -> int:
    if batch_size % world.size:
        raise UsageError(f"batch size {batch_size} does not split evenly over {world.size} processes")
    return batch_size // world.size


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (float64, so sums of per-rank sums are exact enough to compare)."""
    values = values.to(torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's `tensor` (equal shapes), stacked in rank order, on the CPU."""
    local = tensor.to(world.device)
    gathered = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(gathered, local)
    return torch.stack(gathered).cpu()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on any rank (every rank calls this at the same point)."""
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
