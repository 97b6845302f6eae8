"""This process's place in a torchrun group, and the collectives the run needs.

Without torchrun (or with one process) every method is a no-op on a group of one, so the
training loop reads the same whatever the world size.

Rank 0 alone reads and writes the run directory: on a machine other than rank 0's it does not
exist. The other ranks receive what they need from it (the config, a checkpoint to resume from)
by broadcast right after the group is up, and every rank learns where its peers live (host and
pid), so rank 0 can name a rank that died.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

TIMEOUT_ENV = "GPT2_COCKPIT_DIST_TIMEOUT"
# A collective that waits longer than this gives up, so a rank that hangs stops the others in
# bounded time. Generous: every wait between two collectives of a healthy run (a checkpoint
# written by rank 0, an eval, a compile) is far shorter.
DEFAULT_TIMEOUT_SECONDS = 600.0
LOST_PEER_GRACE_SECONDS = 2.0  # after a broken collective, how long to look for the rank that died
GRAD_BUCKET_BYTES = 25 << 20  # gradients are all-reduced in flat buckets of about this size (as DDP's)


@dataclass
class Peer:
    """Where one rank of the group runs."""

    rank: int
    host: str
    pid: int

    def named(self) -> str:
        """'rank 1 (pid 4242)', with the host when it is another machine."""
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"rank {self.rank} (pid {self.pid}{where})"


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    peers: list[Peer] = field(default_factory=list)  # every rank, known after init()

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

    def init(self) -> None:
        """Join the process group and learn where the peers are.

        The backend is chosen before the config is known (a rank on another machine gets it from
        rank 0 through this very group): gloo for CPU tensors, and NCCL for CUDA tensors where
        there is a GPU (NCCL connects lazily, so a CPU run on a GPU box never starts it)."""
        if not self.enabled:
            return
        import torch
        import torch.distributed as tdist

        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds()))
        box: list[Any] = [None] * self.world_size
        tdist.all_gather_object(box, (socket.gethostname(), os.getpid()))
        self.peers = [Peer(rank, host, pid) for rank, (host, pid) in enumerate(box)]

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()

    def barrier(self) -> bool:
        """Wait until every rank gets here; False when the group broke meanwhile. A CPU tensor, so
        gloo carries it whatever the training device."""
        if not self.enabled:
            return True
        import torch
        import torch.distributed as tdist

        try:
            tdist.all_reduce(torch.zeros(1))
        except Exception as e:
            if not group_broke(e):
                raise
            return False
        return True

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's object on every rank (commands reach all ranks at the same step)."""
        if not self.enabled:
            return obj
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (the counts of an evaluation each rank did a share
        of). A CPU tensor, so gloo carries it whatever the training device; float64 keeps counts exact."""
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as tdist

        total = torch.tensor(values, dtype=torch.float64)
        tdist.all_reduce(total)
        return total.tolist()

    # ---------------------------------------------------------------- one optimizer step

    def agree(self, failed: bool, loss):
        """One small all-reduce per step: did any rank fail (run out of memory), and the mean loss.
        Returns (any rank failed, the loss averaged over the ranks as a 0-d tensor)."""
        import torch
        import torch.distributed as tdist

        both = torch.stack([torch.tensor(float(failed), device=loss.device), loss.detach().float()])
        tdist.all_reduce(both)  # a sum: gloo has no average
        return bool(both[0].item() > 0), both[1] / self.world_size

    def average_gradients(self, params) -> None:
        """Average the gradients of `params` over the ranks, in flat buckets: a few large
        all-reduces instead of one per tensor. A parameter without a gradient counts as zeros,
        so every rank sends the same layout."""
        import torch
        import torch.distributed as tdist

        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        for bucket in grad_buckets(grads, GRAD_BUCKET_BYTES):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            flat.div_(self.world_size)
            tdist.all_reduce(flat)
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
                g.copy_(part.view_as(g))

    def sync_module(self, module) -> None:
        """Rank 0's parameters and buffers on every rank (each rank initialised its own)."""
        if not self.enabled:
            return
        import torch.distributed as tdist

        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, src=0)

    # ---------------------------------------------------------------- when a rank is lost

    def lost_peer(self) -> Peer | None:
        """A rank on this machine whose process is gone (None when all are there, or the lost
        one runs on another machine, where its pid says nothing)."""
        from ..runs.rundir import pid_alive

        here = socket.gethostname()
        for peer in self.peers:
            if peer.rank != self.rank and peer.host == here and not pid_alive(peer.pid):
                return peer
        return None

    def describe_loss(self, error: BaseException | None = None) -> str | None:
        """What happened to the group, in words, when `error` (or nothing: a liveness check) says
        it broke; None when it did not."""
        if not self.enabled:
            return None
        broke = error is not None and group_broke(error)
        # a killed peer's connection may drop a moment before its process is gone: look a while
        deadline = time.monotonic() + (LOST_PEER_GRACE_SECONDS if broke else 0.0)
        while True:
            peer = self.lost_peer()
            if peer is not None:
                return f"{peer.named()} exited unexpectedly"
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not broke:
            return None
        text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().split("\n")[0])  # gloo's "[file.cc:78] "
        others = [peer for peer in self.peers if peer.rank != self.rank]
        who = others[0].named() if len(others) == 1 else "a rank"
        if "timed out" in text.lower() or "timeout" in text.lower():  # alive but stuck: a hang
            return f"{who} did not answer for {timeout_seconds():.0f} s"
        return f"{who} dropped out of the group ({text[:200] or error.__class__.__name__})"


def timeout_seconds() -> float:
    """How long a collective may wait: GPT2_COCKPIT_DIST_TIMEOUT seconds, else DEFAULT_TIMEOUT_SECONDS."""
    value = os.environ.get(TIMEOUT_ENV)
    return float(value) if value else DEFAULT_TIMEOUT_SECONDS


def group_broke(error: BaseException) -> bool:
    """Is this the error of a collective whose peers went away or timed out?"""
    import torch.distributed as tdist

    if isinstance(error, getattr(tdist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection reset", "connection closed", "timed out"))


def grad_buckets(tensors: list, limit: int) -> list[list]:
    """Consecutive tensors of one dtype and device, about `limit` bytes a group (at least one each)."""
    buckets: list[list] = []
    size = 0
    for t in tensors:
        fits = buckets and size + t.numel() * t.element_size() <= limit
        if not (fits and buckets[-1][0].dtype == t.dtype and buckets[-1][0].device == t.device):
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += t.numel() * t.element_size()
    return buckets
