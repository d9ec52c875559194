"""The few collective steps a capture needs under torchrun/accelerate, and nothing when alone.

One process: rank 0 of 1, barriers do nothing. Several (torch.distributed already initialised, or
WORLD_SIZE > 1 in the environment, in which case the process group is created here and destroyed at
the end): gloo on CPU, NCCL when CUDA is available.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @classmethod
    def start(cls) -> Processes:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
            return cls(dist.get_rank(), dist.get_world_size(), owns_group=True)
        return cls()

    def device(self, name: str, resolve: Callable[[str], torch.device]) -> torch.device:
        """The device for this process: cuda:LOCAL_RANK when several processes share CUDA and `name` is auto."""
        if self.world > 1 and name == "auto" and torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return resolve(name)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum_across(self, values: list[int]) -> list[int]:
        """Element-wise sum over processes."""
        if self.world == 1:
            return values
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        t = torch.tensor(values, dtype=torch.int64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
