"""A fair share of the CPU cores for every run (and every torchrun rank) that trains on them.

PyTorch gives each process one intra-op thread per core. Two such processes on one box have
twice as many threads as cores, and OpenMP threads spin while they wait for each other at every
parallel region: a thread that spins on a core its partner needs makes both wait. On a 2-core
box two cpu-tiny runs went from 25 ms/iter alone to ~2,450 ms/iter together. With cores / runs
threads each, they share the box instead of fighting over it.

The runs that train on the CPU register in a folder every process of this user can see (one
file per pid, removed on exit; a dead pid's file is ignored and cleaned up), whatever their
GPT2_COCKPIT_HOME. Each run looks again every few seconds and changes its thread count when the
number of runs changes. No torch at import time.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from .runs import pid_alive

RECHECK_SECONDS = 5.0


def registry() -> Path:
    return Path(tempfile.gettempdir()) / f"gpt2-cockpit-cpu-runs-{os.getuid()}"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class CpuShare:
    """Registers this process as a CPU run; `apply()` sets torch's threads to its fair share."""

    def __init__(self, say: Callable[[str], None] = lambda message: None, folder: Path | None = None):
        self.folder = folder or registry()
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.entry = self.folder / str(os.getpid())
        self.entry.touch()
        self.say = say
        self.threads: int | None = None  # what we set; None: torch's own default, untouched
        self._checked = 0.0

    def runs(self) -> int:
        """CPU runs on this box now, this one included."""
        count = 0
        for entry in self.folder.iterdir():
            if not entry.name.isdigit():
                continue
            if pid_alive(int(entry.name)):
                count += 1
            else:
                entry.unlink(missing_ok=True)  # a run that died without cleaning up
        return max(count, 1)

    def fair_threads(self) -> tuple[int, int, int]:
        runs, n = self.runs(), cores()
        return max(1, n // runs), runs, n

    def apply(self) -> None:
        """Look again (at most every RECHECK_SECONDS) and set torch's thread count if it changed.

        A run alone on the box keeps torch's default untouched: setting even the same count
        explicitly made the CPU baby GPT ~10% slower per step (measured on 2 cores)."""
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        threads, runs, n = self.fair_threads()
        if threads == self.threads or (self.threads is None and runs == 1):
            return
        import torch

        torch.set_num_threads(threads)
        self.threads = threads
        self.say(f"CPU: {threads} of {n} cores ({runs} run{'s' if runs > 1 else ''} training on the CPU of this machine)")

    def close(self) -> None:
        self.entry.unlink(missing_ok=True)
