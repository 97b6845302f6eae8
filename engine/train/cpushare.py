"""A fair share of the CPU cores for every run (and every torchrun rank) that trains on them.

PyTorch gives each process one intra-op thread per core, and OpenMP threads spin while they wait
for each other at every parallel region: a thread that spins on a core another process needs
makes both wait, and a thread that waits for a core another process holds makes every other
thread of the run wait with it. On a 2-core box two cpu-tiny runs went from 25 ms/iter alone to
~2,450 ms/iter together, and one run beside one unrelated CPU-bound program from 35 to ~1,500
ms/iter (its first eval from 0.4 s to 12 s). With as many threads as there are cores left to it,
a run shares the box instead of fighting over it (tests/benchmarks/shared_cpu.py, busy_cpu.py).

So a run counts two things. The CPU runs on this box register in a folder every process of this
user can see, whatever their GPT2_COCKPIT_HOME: one file per pid, written when the run process
starts and saying whether it trains (from its first step or eval on; not while it is paused or
waits for data), removed on exit; a dead pid's file is ignored and cleaned up. And the cores
other processes keep busy: the CPU time the kernel counted on this process's cores (/proc/stat)
since the last look, less the time of this run and of the runs that train (/proc/PID/stat, with
the children they have waited for), a core counting from BUSY_FROM of it. The cores those
processes leave are shared equally between the runs that train, at least one thread each. The
first look comes before the run's first eval (its window opens when the run process starts,
before torch loads); then the run looks again every RECHECK_SECONDS, changes its thread count
when its share changed and says why. A run started with OMP_NUM_THREADS set takes that many
threads and keeps them (`pinned()`): the user's count, and a thread count that never changes keeps
a run's losses bit-for-bit the same whatever else the box does. OMP_WAIT_POLICY=PASSIVE (threads that sleep at once instead
of spinning) was measured and left out: ~30% slower per step on an idle 2-core box. No torch at
import time.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..runs.rundir import pid_alive

RECHECK_SECONDS = 5.0
FIRST_LOOK_SECONDS = 0.25  # the first look measures the other processes over at least this long
# other processes' load (in cores) that counts as one core kept busy: a core they hold half the
# time already costs a run that spreads over it far more than leaving it to them
BUSY_FROM = 0.4
TRAINING, IDLE = "training", "idle"  # what a run's entry in the registry says


def registry() -> Path:
    return Path(tempfile.gettempdir()) / f"gpt2-cockpit-cpu-runs-{os.getuid()}"


def pinned() -> int | None:
    """The thread count OMP_NUM_THREADS sets for this process (a positive whole number), if any."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ProcStat:
    """What the kernel says about CPU time, in clock ticks (Linux /proc); tests pass a fake."""

    def __init__(self, root: str = "/proc"):
        self.root = root

    def cpus(self) -> set[int]:
        """The CPUs this process may run on (the others' load there is not ours to share)."""
        try:
            return set(os.sched_getaffinity(0))
        except AttributeError:
            return set(range(os.cpu_count() or 1))

    def cpu_ticks(self, cpus: set[int]) -> tuple[int, int] | None:
        """(busy, all) ticks the kernel counted on `cpus` since boot; None where there is no /proc."""
        busy = total = 0
        try:
            with open(f"{self.root}/stat") as f:
                for line in f:
                    name, _, rest = line.partition(" ")
                    if not name.startswith("cpu"):
                        break
                    if name == "cpu" or int(name[3:]) not in cpus:
                        continue
                    # user nice system idle iowait irq softirq steal (guest time is within user)
                    ticks = [int(x) for x in rest.split()[:8]]
                    total += sum(ticks)
                    busy += sum(ticks) - ticks[3] - ticks[4]
        except (OSError, ValueError, IndexError):
            return None
        return (busy, total) if total else None

    def process_ticks(self, pid: int) -> int | None:
        """User + system ticks of a process (all its threads) and of the children it has waited
        for (a run's data preparation workers) since it started; None if it is gone."""
        try:
            with open(f"{self.root}/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return sum(int(x) for x in fields[11:15])  # utime stime cutime cstime (fields 14-17 of stat)
        except (OSError, ValueError, IndexError):
            return None


@dataclass
class Reading:
    time: float
    busy: int  # ticks on our CPUs since boot
    total: int
    runs: dict[int, int]  # ticks of each CPU run's process (this one included)


@dataclass
class Share:
    """What a look found: this run's threads, why, and the figures behind it."""

    threads: int
    cores: int
    runs: int  # runs training on the CPU, this one included
    busy: int  # cores other processes keep busy
    load: float  # their load, in cores

    def describe(self) -> str:
        why = f"{self.runs} run{'s' if self.runs > 1 else ''} training on the CPU of this machine"
        if self.busy:
            why += f"; other processes keep {self.busy} of {self.cores} cores busy"
        return f"CPU: {self.threads} of {self.cores} cores ({why})"


class CpuShare:
    """This process as a CPU run: `apply()` sets torch's threads to its fair share.

    Made when the run process starts: it registers then as a run that does not train yet (the
    other runs follow its CPU time from then on), and its first reading starts the first look's
    window. It trains, and takes its share, from its first `apply()`, before the first eval."""

    def __init__(self, say: Callable[[str], None] = lambda message: None, folder: Path | None = None,
                 proc: ProcStat | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, pinned: int | None = None):
        self.pinned = pinned  # a thread count the user fixed (OMP_NUM_THREADS): taken, never changed
        self.folder = folder or registry()
        self.pid = os.getpid()
        self.entry = self.folder / str(self.pid)
        self.training = False  # taking its share (not before the first apply, nor while paused)
        self.say = say
        self.proc = proc or ProcStat()
        self.clock, self.sleep = clock, sleep
        self.default: int | None = None  # torch's thread count before we set any (restored on close)
        self.threads: int | None = None  # what we set; None: torch's default, untouched
        self.share: Share | None = None  # the last look's finding
        self._checked: float | None = None  # when we last looked (None: not since a pause, or ever)
        self._register(IDLE)
        self._last = self._read(self.proc.cpus(), self.runs())

    def _register(self, state: str) -> None:
        """This run's entry, whole or not at all (written aside, then renamed)."""
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            aside = self.folder / f".{self.pid}"
            aside.write_text(state)
            os.replace(aside, self.entry)
        except OSError:
            pass  # no registry: the other runs count this one as any other program

    # ---------------------------------------------------------------- what the box is doing

    def runs(self) -> dict[int, bool]:
        """The CPU runs on this box now (pid -> whether it trains), this one included."""
        runs = {}
        for entry in self.folder.iterdir() if self.folder.is_dir() else ():
            if not entry.name.isdigit() or int(entry.name) == self.pid:
                continue
            pid = int(entry.name)
            if not pid_alive(pid):
                entry.unlink(missing_ok=True)  # a run that died without cleaning up
                continue
            try:
                runs[pid] = entry.read_text() != IDLE  # (an empty entry: a run of an older version, training)
            except OSError:
                pass  # gone meanwhile
        runs[self.pid] = self.training
        return runs

    def _read(self, cpus: set[int], runs: dict[int, bool]) -> Reading | None:
        ticks = self.proc.cpu_ticks(cpus)
        if ticks is None:
            return None
        times = {pid: t for pid in runs if (t := self.proc.process_ticks(pid)) is not None}
        return Reading(self.clock(), ticks[0], ticks[1], times)

    def look(self) -> Share:
        """Measure since the last look: the runs that train, and the cores other processes keep busy
        (a run that starts, is paused or waits for data counts as any other process)."""
        cpus, runs = self.proc.cpus(), self.runs()
        n = len(cpus) or cores()
        now = self._read(cpus, runs)
        last, self._last = self._last, now
        training = [pid for pid, trains in runs.items() if trains]
        load = 0.0
        if now is not None and last is not None and now.total > last.total:
            # the training runs' own time, and this one's (a run not seen at the last look counts
            # as another process until the next one)
            ours = sum(now.runs[pid] - last.runs[pid] for pid in {*training, self.pid}
                       if pid in now.runs and pid in last.runs)
            load = max(0.0, (now.busy - last.busy - ours) / (now.total - last.total) * n)
        busy = min(n, int(load + 1.0 - BUSY_FROM))
        count = max(1, len(training))
        threads = max(1, (n - busy) // count)
        return Share(min(threads, self.default or threads), n, count, busy, load)

    # ---------------------------------------------------------------- acting on it

    def apply(self) -> None:
        """Look again (at most every RECHECK_SECONDS) and set torch's thread count if this run's
        share changed. The first look measures the other processes over FIRST_LOOK_SECONDS at
        least, counted from this object's making. Back from a pause, the run trains on the share
        it had, and the next look measures from then on (not what others did while it rested, such
        as the commands that paused, sampled from and resumed it).

        Never more threads than torch's own default (the physical cores, or OMP_NUM_THREADS). A
        run that may have all of those keeps the default untouched: setting even the same count
        explicitly made the CPU baby GPT ~10% slower per step (measured on 2 cores)."""
        if self.pinned is not None:
            self._take_pinned()
            return
        now = self.clock()
        if not self.training:  # the first look, or back from a pause: count this run in at once
            self.training = True
            self._register(TRAINING)
            if self._checked is not None:  # back from a pause: the share it had, measured afresh from now
                self._last = self._read(self.proc.cpus(), self.runs())
                self._checked = now
                return
        if self._checked is None:
            waited = now - self._last.time if self._last is not None else FIRST_LOOK_SECONDS
            if waited < FIRST_LOOK_SECONDS:
                self.sleep(FIRST_LOOK_SECONDS - waited)
                now = self.clock()
        elif now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        import torch

        if self.default is None:
            self.default = torch.get_num_threads()
        share = self.share = self.look()
        if share.threads == self.threads or (self.threads is None and share.threads == self.default):
            return
        torch.set_num_threads(share.threads)
        self.threads = share.threads
        self.say(share.describe())

    def _take_pinned(self) -> None:
        if not self.training:
            self.training = True
            self._register(TRAINING)
        if self.threads is not None:
            return
        import torch

        self.default = torch.get_num_threads()
        self.threads = self.pinned
        if self.pinned != self.default:  # (in a fresh process torch already took OMP_NUM_THREADS)
            torch.set_num_threads(self.pinned)
        # nothing to say: the count is the user's own

    def idle(self) -> None:
        """The run is paused (or waits for data): it takes no share, and the other runs count it
        out at their next look. Its next `apply()` counts it in again at once."""
        if self.training:
            self.training = False
            self._register(IDLE)

    def close(self) -> None:
        """Out of the registry, and torch's thread count as it was (for a run inside another program,
        such as a test or a notebook)."""
        self.training = False
        self.entry.unlink(missing_ok=True)
        if self.threads is not None and self.default is not None and self.threads != self.default:
            import torch

            torch.set_num_threads(self.default)
            self.threads = None
