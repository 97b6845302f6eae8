"""How often the run screen reads the log and repaints: at its normal pace, or lean while the
machine's CPU is saturated.

A viewer's CPU comes out of the run it watches when that run keeps every core busy (training on
the CPU, or a data pipeline that does): ten cockpits attached to one run must cost it under 2%
of its throughput (tests/benchmarks/viewers.py). So the run screen watches how many cores the
machine left idle (/proc/stat, once every few seconds) and, while fewer than LEAN_BELOW were,
reads the log less often, repaints the status less often and gives the loss plot a smaller CPU
budget. What a command of its own did still shows at once (the screen reads the log as soon as
the run answers), and state changes, evals, checkpoints and whatever else the log pane reports
repaint the status as soon as they are read. Where /proc/stat cannot be read the pace stays
normal.

Measured with tests/benchmarks/viewers.py on a 2-core CPU box (cpu-tiny at ~50 ms/iter with both
cores busy, ten cockpits at 120x40, alternating 20 s phases with and without them): the cockpit
as it was (a read every 0.4 s in a thread worker, the status repainted for every step event, the
plot up to three times a second, Textual's input thread waking ten times a second) cost the run
62-68% of its throughput, each viewer taking ~5% of a core with ~65 wakeups a second; at the lean
pace, +2.0% (each viewer phase against its neighbours: +1.7% ± 2.3 standard error), each viewer
~0.1-0.3% of a core with ~3 wakeups a second. On that box a viewer's slice of a core costs the
run several times its size (the two training threads wait for each other), so the lean pace is
what the goal needs there; at the normal pace a viewer takes ~1% of a core (a run logging two
steps a second), which a machine with an idle core does not miss.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Pace:
    poll: float  # seconds between reads of the log
    status: float  # seconds between repaints of the status for new steps (and of ages, the ETA)
    plot_share: float  # of one core: what loss plot redraws for new data may cost at most
    plot_max: float  # seconds: the longest a plot waits for a redraw with new data


# At the normal pace the plot redraws with the status (plot_max is the status's period): a plot
# costing 20-30 ms to draw, paced by its share alone (one redraw in 5-7 s), trailed the status of a
# fast CPU run by ~100 iterations; drawing it every 2 s costs ~1% of a core, which a machine with an
# idle core does not miss. At the lean pace the share holds it back.
NORMAL = Pace(poll=1.0, status=2.0, plot_share=0.004, plot_max=2.0)
LEAN = Pace(poll=4.0, status=4.0, plot_share=0.001, plot_max=30.0)

LEAN_BELOW = 0.5  # idle cores: fewer than this, lean...
NORMAL_ABOVE = 1.0  # ...until more than this (no flapping in between)
WINDOW = 5.0  # seconds over which idle cores are measured


class IdleCores:
    """The machine's idle cores over the last WINDOW seconds (idle and iowait time of all CPUs
    from /proc/stat, over wall time); `value` is None until measured or where it cannot be."""

    def __init__(self, path: str = "/proc/stat", window: float = WINDOW) -> None:
        self.path = path
        self.window = window
        self.value: float | None = None
        self._last = self._read()
        self._when = time.monotonic()

    def _read(self) -> tuple[int, int] | None:
        """(idle + iowait, all) jiffies summed over the CPUs, or None."""
        try:
            with open(self.path, "rb") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if len(fields) < 6 or fields[0] != b"cpu":
            return None
        try:
            ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
        except ValueError:
            return None
        return ticks[3] + ticks[4], sum(ticks)

    def update(self) -> float | None:
        """Measure again if a window has passed since the last measurement; the idle cores."""
        if self._last is None or time.monotonic() - self._when < self.window:
            return self.value
        now = self._read()
        if now is None:
            return self.value
        idle, total = now[0] - self._last[0], now[1] - self._last[1]
        if total > 0:
            self.value = (os.cpu_count() or 1) * idle / total
        self._last, self._when = now, time.monotonic()
        return self.value


def next_pace(current: Pace, idle_cores: float | None) -> Pace:
    """Lean while the machine has (nearly) no idle core, normal again once it has one."""
    if idle_cores is None:
        return current
    if current is LEAN:
        return NORMAL if idle_cores > NORMAL_ABOVE else LEAN
    return LEAN if idle_cores < LEAN_BELOW else current
