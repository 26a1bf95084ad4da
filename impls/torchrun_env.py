"""Whether torchrun started this process, and as which replica: its environment, framework-free.

``torchrun`` (``torch.distributed.run``) starts one process per replica, on one machine
or several, and tells each its place in environment variables. The command line reads
them before any framework starts (``--replicas`` must match, and rank 0 alone prints and
writes); the PyTorch trainers then join torchrun's process group instead of starting
replicas of their own (:mod:`impls.torch_parallel`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# What torchrun sets for every process it starts (LOCAL_WORLD_SIZE too, read when present).
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")


@dataclass(frozen=True)
class LaunchedRank:
    """This process's place among the processes torchrun started."""

    rank: int  # among all of them, on every machine
    world_size: int  # how many there are
    local_rank: int  # among those on this machine: the GPU it takes
    local_world_size: int  # how many share this machine

    @property
    def is_first(self) -> bool:
        """Rank 0: the one that prints and writes the run's outputs."""
        return self.rank == 0


def launched_rank(environ: Mapping[str, str] = os.environ) -> LaunchedRank | None:
    """This process's rank when torchrun started it, else None."""
    if not all(name in environ for name in LAUNCH_VARIABLES):
        return None
    world_size = int(environ["WORLD_SIZE"])
    return LaunchedRank(
        rank=int(environ["RANK"]),
        world_size=world_size,
        local_rank=int(environ["LOCAL_RANK"]),
        local_world_size=int(environ.get("LOCAL_WORLD_SIZE", world_size)),
    )
