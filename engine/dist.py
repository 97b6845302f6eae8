"""This process's place in a torchrun group, and the two collectives the loop needs.

Without torchrun (or with one process) every method is a no-op on a group of one, so the
training loop reads the same whatever the world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "Dist":
        """torchrun's RANK / LOCAL_RANK / WORLD_SIZE; a group of one without them."""
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))

    def init(self, cuda: bool) -> None:
        """Join the process group (NCCL between GPUs, gloo on CPUs)."""
        if self.enabled:
            import torch.distributed as tdist

            tdist.init_process_group(backend="nccl" if cuda else "gloo")

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's object on every rank (commands reach all ranks at the same step)."""
        if not self.enabled:
            return obj
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]
