"""torchrun / DistributedDataParallel plumbing, kept out of the training loop.

`python -m torch.distributed.run --nproc_per_node=N -m tinyimagenet.train ...` sets RANK,
WORLD_SIZE and LOCAL_RANK; `setup()` turns them into a process group (NCCL on CUDA, gloo on CPU).
Without those variables everything here is a no-op, so single-process code needs no branches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0          # this process's index among all processes
    world_size: int = 1    # number of processes
    local_rank: int = 0    # index on this machine (picks the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device | str) -> Dist:
    """Join the process group torchrun describes in the environment (if any).

    `device` is the run's device, already decided (`runtime.pick_device`: under torchrun a CUDA
    run gets cuda:$LOCAL_RANK); NCCL is bound to it, gloo serves CPU runs.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    info = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            if device.index is None:
                raise ValueError(f"distributed.setup: a CUDA device needs its index, got {device} "
                                 "(runtime.pick_device gives one)")
            torch.cuda.set_device(device)
            # device_id binds the communicator to this GPU now, so collectives (barrier included)
            # never have to guess which GPU a rank uses.
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place); identity when not distributed."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
