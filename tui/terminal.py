"""Textual's terminal input thread, made to sleep while no key comes.

Textual's Linux driver reads the terminal in a thread that waits at most 0.1 s at a time, so that
a lone Escape can be told from the start of an escape sequence once a short timeout has passed:
ten wakeups a second whether or not anyone types. For a cockpit left attached to a run that is
most of what it costs while nothing changes (a minimal Textual app idles at ~0.17% of a core on a
slow CPU, ~0.02% with this), and on a box whose cores the run keeps busy, ten such viewers would
cost it about 1% of its throughput by existing (tests/benchmarks/viewers.py).

`quiet_input()` gives that thread a selector that, once no input has come for QUIET_AFTER
seconds, waits up to IDLE_WAIT seconds instead. After any input it waits 0.1 s again, so an
Escape still resolves in 0.1 s and `q` leaves at once; only leaving for a reason other than a key
may take up to IDLE_WAIT longer. It changes nothing where Textual's driver is not built that way.
"""

from __future__ import annotations

import selectors
import time
import types

IDLE_WAIT = 3.0  # seconds the input thread may sleep once the terminal is quiet
QUIET_AFTER = 2.0  # seconds without input before it does


class QuietSelector(selectors.SelectSelector):
    """A SelectSelector whose short timeouts grow to IDLE_WAIT while no input comes."""

    def __init__(self) -> None:
        super().__init__()
        self.last_input = time.monotonic()

    def select(self, timeout: float | None = None):
        if timeout is not None and 0 < timeout < IDLE_WAIT and time.monotonic() - self.last_input > QUIET_AFTER:
            timeout = IDLE_WAIT
        ready = super().select(timeout)
        if ready:
            self.last_input = time.monotonic()
        return ready


def quiet_input() -> bool:
    """Make Textual's Linux driver read the terminal with a QuietSelector; whether it did."""
    try:
        from textual.drivers import linux_driver
    except ImportError:  # not a Linux/macOS Textual
        return False
    used = getattr(linux_driver, "selectors", None)
    if getattr(used, "SelectSelector", None) is QuietSelector:
        return True
    if used is not selectors:  # the driver no longer waits this way: leave it alone
        return False
    shim = types.ModuleType("selectors")
    shim.__dict__.update(vars(selectors))
    shim.SelectSelector = QuietSelector
    linux_driver.selectors = shim
    return True
